"""What the service keeps on disk for clients is bounded (exports, uploaded checkpoints), and so is
what one listing reads (jobs and events come in pages).

A real ``hwsearch serve`` keeping 25 MiB of exports, least recently used
pruned first (each tiny-mbv3 subnet below exports to 8-12 MB, so two fit and
a third prunes one), and 8 MiB of uploaded checkpoints (the demo's is 3.4 MiB).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from hwsearch.store import SQLiteStore
from tests._jobs import SUPERNET, fast_device
from tests._server import Server

LIMIT = 25 * 1024 * 1024
CHECKPOINTS_MB = 8
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "hwsearch" / "demo" / "demo_mbv3_mnist.pt"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("export-cache")
    srv = Server(root / "store.sqlite", extra=("--max-export-mb", str(LIMIT / 2**20),
                                               "--max-checkpoints-mb", str(CHECKPOINTS_MB))).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        assert c.post("/supernets", json=SUPERNET).status_code == 201
        yield c


def arch(ks: int, e: int) -> dict[str, Any]:
    return {"ks": [ks] * 20, "e": [e] * 20, "d": [2] * 5, "r": [32]}


def export(client: httpx.Client, native: dict[str, Any]) -> dict[str, Any]:
    made = client.post("/exports", json={"supernet": SUPERNET["name"], "arch": native})
    assert made.status_code == 201, made.text
    return made.json()


def download(client: httpx.Client, info: dict[str, Any]) -> httpx.Response:
    return client.get(httpx.URL(info["download_url"]).path)


def folder_bytes(server: Server) -> int:
    exports = Path(f"{server.store}.data") / "exports"
    return sum(path.stat().st_size for path in exports.iterdir())


def test_the_least_recently_used_export_goes_first_and_comes_back_when_asked(
        server: Server, client: httpx.Client) -> None:
    first, second = export(client, arch(3, 3)), export(client, arch(3, 4))
    assert first["bytes"] + second["bytes"] < LIMIT  # both fit
    assert download(client, first).status_code == 200  # a download is a use: now second is the oldest
    third = export(client, arch(3, 6))
    assert first["bytes"] + second["bytes"] + third["bytes"] > LIMIT  # so one had to go
    assert download(client, second).status_code == 404
    assert "POST /exports" in download(client, second).json()["detail"]
    for kept in (first, third):
        answer = download(client, kept)
        assert answer.status_code == 200 and len(answer.content) == kept["bytes"]
    assert folder_bytes(server) <= LIMIT

    again = export(client, arch(3, 4))  # a pruned export is made again on request
    assert again["id"] == second["id"] and again["bytes"] == second["bytes"]
    assert len(download(client, again).content) == again["bytes"]
    assert folder_bytes(server) <= LIMIT


def test_the_folder_stays_within_the_bound_and_keeps_the_export_just_made(
        server: Server, client: httpx.Client) -> None:
    for ks, e in ((5, 3), (5, 4), (7, 3), (3, 3)):
        export(client, arch(ks, e))
        assert folder_bytes(server) <= LIMIT
    largest = export(client, {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": [32]})
    assert largest["bytes"] <= LIMIT < largest["bytes"] * 2  # it fits, with little beside it
    assert len(download(client, largest).content) == largest["bytes"]
    assert folder_bytes(server) <= LIMIT


def test_a_download_under_way_arrives_whole_when_its_export_is_pruned(
        server: Server, client: httpx.Client) -> None:
    """The file is opened before the answer starts, so pruning it meanwhile cannot cut the body short.

    Before, the route handed Starlette a path that it opened later: an export
    pruned in between answered 500 (3 of 16,000 downloads while another
    client exported) or a 200 whose body never came (2).
    """
    wanted = export(client, arch(5, 6))
    whole = download(client, wanted).content
    with client.stream("GET", httpx.URL(wanted["download_url"]).path) as answer:
        assert answer.status_code == 200 and int(answer.headers["content-length"]) == wanted["bytes"]
        blocks = answer.iter_raw(64 * 1024)
        received = [next(blocks)]
        for ks, e in ((7, 4), (7, 6), (5, 3)):  # the others fill the bound: the download's export goes
            export(client, arch(ks, e))
        assert download(client, wanted).status_code == 404
        received.extend(blocks)
    assert b"".join(received) == whole


def test_a_download_resumes_from_a_range_and_a_range_past_the_end_gets_416(
        server: Server, client: httpx.Client) -> None:
    """Streaming from an open handle first lost FileResponse's ranges: every Range got the whole file."""
    wanted = export(client, arch(3, 3))
    path, size = httpx.URL(wanted["download_url"]).path, wanted["bytes"]
    whole = download(client, wanted).content
    for asked, first, last in (("bytes=100-199", 100, 199), (f"bytes={size - 10}-", size - 10, size - 1),
                               ("bytes=-50", size - 50, size - 1), (f"bytes=0-{size * 2}", 0, size - 1)):
        part = client.get(path, headers={"Range": asked})
        assert part.status_code == 206, (asked, part.status_code)
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert part.content == whole[first:last + 1]
    past = client.get(path, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    # Not read: the whole file, as RFC 9110 allows.
    for ignored in ("bytes=0-1,5-9", "lines=1-2", "bytes=abc", "bytes=" + "9" * 5000 + "-"):
        answer = client.get(path, headers={"Range": ignored})
        assert answer.status_code == 200 and answer.content == whole
    # Ignored as RFC 9110 requires (Y15: each got a 206 or a 416): an invalid range, an If-Range no validator of
    # this answer can match (it sends none), and two Range headers.
    for asked in ({"Range": "bytes=5-2"}, {"Range": "bytes=0-9", "If-Range": '"nope"'},
                  {"Range": "bytes=0-9", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"},
                  [("Range", "bytes=0-9"), ("Range", "bytes=10-19")]):
        answer = client.get(path, headers=asked)
        assert answer.status_code == 200 and answer.content == whole, (asked, answer.status_code)
    # HEAD: the GET's status and headers, no body (it was a 405).
    for asked, status, length in (({}, 200, size), ({"Range": "bytes=100-199"}, 206, 100)):
        head, got = client.head(path, headers=asked), client.get(path, headers=asked)
        assert (head.status_code, head.content, int(head.headers["content-length"])) == (status, b"", length)
        assert {k: v for k, v in head.headers.items() if k != "date"} == {
            k: v for k, v in got.headers.items() if k != "date"}
    assert client.head(path, headers={"Range": f"bytes={size}-"}).status_code == 416
    assert client.head(path.rsplit("/", 1)[0] + "/" + "0" * 32).status_code == 404


def test_a_download_the_client_abandons_closes_its_file_at_once(server: Server, client: httpx.Client) -> None:
    """Left to the collector, 60 abandoned downloads held 5 file handles for about 40 s."""
    wanted = export(client, arch(3, 4))
    assert server.process is not None
    fds = Path(f"/proc/{server.process.pid}/fd")

    def open_exports() -> int:
        count = 0
        for fd in fds.iterdir():
            try:
                count += os.readlink(fd).endswith(".onnx")
            except OSError:  # closed while listed
                pass
        return count

    for _ in range(10):
        with httpx.Client(base_url=server.url, headers=client.headers) as once, \
                once.stream("GET", httpx.URL(wanted["download_url"]).path) as answer:
            next(answer.iter_raw(64 * 1024))  # then hang up
    deadline = time.monotonic() + 5
    while open_exports() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_exports() == 0


def test_uploads_past_the_checkpoint_bound_get_413_and_replacing_one_still_works(
        server: Server, client: httpx.Client) -> None:
    weights = [scaled_demo_weights(scale) for scale in (1.0, 0.9, 0.8, 0.7)]  # four distinct files
    assert all(2 * len(w) < CHECKPOINTS_MB * 2**20 < 3 * len(w) for w in weights)

    def upload(name: str, checkpoint: bytes) -> httpx.Response:
        return client.post("/supernets/upload", data={"name": name, "registry": "demo_mbv3_mnist"},
                           files={"checkpoint": ("demo.pt", checkpoint)})

    first, second = upload("first", weights[0]), upload("second", weights[1])
    assert first.status_code == 201 and second.status_code == 201
    third = upload("third", weights[2])
    assert third.status_code == 413 and "at most" in third.json()["detail"], third.text
    # Under a registered name no job used, the old checkpoint is freed, so other weights fit.
    again = upload("first", weights[3])
    assert again.status_code == 201, again.text
    names = [s["name"] for s in client.get("/supernets").json()]
    assert "third" not in names and {"first", "second"} <= set(names)
    folder = Path(f"{server.store}.data") / "checkpoints"
    kept = sorted(p.name for p in folder.iterdir())  # no .part left, nor the replaced file
    assert kept == sorted(Path(r.json()["checkpoint"]).name for r in (again, second))


def scaled_demo_weights(scale: float) -> bytes:
    state = torch.load(DEMO_CHECKPOINT, weights_only=True, map_location="cpu")
    state = state.get("state_dict", state)
    buffer = io.BytesIO()
    torch.save({k: v * scale if v.is_floating_point() else v for k, v in state.items()}, buffer)
    return buffer.getvalue()


def test_jobs_and_events_are_listed_in_pages(server: Server, client: httpx.Client) -> None:
    """Jobs written straight into the service's store (running seven would take minutes)."""
    store = SQLiteStore(server.store)
    ids = [store.create_job({"kind": "search", "i": i}) for i in range(7)]
    for job_id in ids:
        store.update_job(job_id, state="succeeded", result={"fronts": {}, "n": 1})
    for step in range(5):
        store.update_job(ids[0], progress={"step": f"s{step}", "fraction": step / 5})

    seen, before, deleted = [], None, None
    while True:
        page = client.get("/jobs", params={"limit": 3, **({"before": before} if before else {})}).json()
        assert len(page["jobs"]) <= 3
        seen += [job["id"] for job in page["jobs"]]
        before = page["next_before"]
        if before is None:
            break
        if deleted is None:  # the page's last job goes before the next page is asked for (Y15: that was a 422)
            deleted = seen[-1]
            assert client.delete(f"/jobs/{deleted}").status_code == 204
    assert deleted in ids and [i for i in seen if i in ids] == ids[::-1]  # newest first, none twice, none missed
    assert len(seen) == len(set(seen))
    by_id = client.get("/jobs", params={"limit": 2, "before": ids[3]}).json()["jobs"]  # a job's id still pages
    assert [job["id"] for job in by_id] == [ids[2], ids[1]]

    events = client.get(f"/jobs/{ids[0]}/events", params={"limit": 2}).json()["events"]
    rest = client.get(f"/jobs/{ids[0]}/events", params={"after": events[-1]["seq"]}).json()["events"]
    assert [e["step"] for e in events + rest] == [f"s{step}" for step in range(5)]

    malformed_places = [{"before": f"{ids[1]}~{created}"} for created in ("nan", "soon", "")]
    for params, field in (({"before": "no-such-job"}, "before"), ({"before": "~1.5"}, "before"),
                          *((place, "before") for place in malformed_places), ({"limit": 0}, "limit"),
                          ({"limit": 1001}, "limit")):
        refused = client.get("/jobs", params=params)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", field]
    for limit in (0, 10_001):
        refused = client.get(f"/jobs/{ids[0]}/events", params={"limit": limit})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "limit"]


def test_jobs_past_the_bound_get_413_until_stopped_ones_are_deleted(tmp_path: Path) -> None:
    """Records are bounded: a client submitting and cancelling in a loop added 8,400 (54 MB) a minute.

    Before, nothing bounded them and nothing could remove one.  Two stopped
    jobs are written straight into the store (running them takes minutes).
    """
    from tests._jobs import random_dataset

    random_dataset(tmp_path / "val.npz")
    server = Server(tmp_path / "store.sqlite", extra=("--max-jobs", "2")).start()
    store = SQLiteStore(server.store)
    try:
        with server.client() as c:
            assert c.post("/supernets", json=SUPERNET).status_code == 201
            assert c.post("/devices", json={"profile": fast_device("cpu-1t")}).status_code == 201
            stopped = [store.create_job({"kind": "search"}) for _ in range(2)]
            for job_id in stopped:
                store.update_job(job_id, state="cancelled", progress={"step": "profile", "fraction": 0.1})
            job = {"supernet": SUPERNET["name"], "devices": ["cpu-1t"], "dataset": "val.npz", "n_profile": 4}
            full = c.post("/jobs", json=job)
            assert full.status_code == 413 and "keeps at most 2 jobs" in full.json()["detail"], full.text
            assert store.count_jobs() == 2  # the refused job was not stored
            assert c.get("/limits").json()["jobs"] == 2 and c.get("/limits").json()["max_jobs"] == 2

            waiting = store.create_job({"kind": "search"})  # queued: it must be cancelled first
            assert c.delete(f"/jobs/{waiting}").status_code == 409
            store.update_job(waiting, state="cancelled")
            assert c.delete(f"/jobs/{waiting}").status_code == 204
            assert c.delete(f"/jobs/{stopped[0]}").status_code == 204
            assert c.get(f"/jobs/{stopped[0]}").status_code == 404
            assert c.get(f"/jobs/{stopped[0]}/events").status_code == 404
            assert c.delete(f"/jobs/{stopped[0]}").status_code == 404

            accepted = c.post("/jobs", json=job)  # room again
            assert accepted.status_code == 202, accepted.text
            c.post(f"/jobs/{accepted.json()['id']}/cancel")
    finally:
        server.stop()


def test_registrations_past_the_bound_get_413_and_store_nothing(tmp_path: Path) -> None:
    """Two of each kind allowed; a third name is refused, a known name is replaced."""
    srv = Server(tmp_path / "store.sqlite", extra=("--max-registrations", "2")).start()
    try:
        with srv.client() as client:
            assert all(client.post("/devices", json={"profile": fast_device(name)}).status_code == 201
                       for name in ("d1", "d2"))
            third = client.post("/devices", json={"profile": fast_device("d3")})
            assert third.status_code == 413 and "at most 2 devices" in third.json()["detail"]
            assert client.post("/devices", json={"profile": fast_device("d1", threads=2)}).status_code == 201
            assert sorted(d["name"] for d in client.get("/devices").json()) == ["d1", "d2"]

            for name in ("s1", "s2"):
                assert client.post("/supernets", json={**SUPERNET, "name": name}).status_code == 201
            assert client.post("/supernets", json={**SUPERNET, "name": "s3"}).status_code == 413
            # Refused before it is built (Y17: seconds of CPU per refused call): a checkpoint that could not
            # load is not even read.
            (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
            unbuilt = client.post("/supernets", json={**SUPERNET, "name": "s3", "checkpoint": "garbage.pt"})
            assert unbuilt.status_code == 413 and unbuilt.json()["loc"] == ["body", "name"], unbuilt.text
            upload = client.post("/supernets/upload", data={"name": "s3", "registry": "demo_mbv3_mnist"},
                                 files={"checkpoint": ("demo.pt", DEMO_CHECKPOINT.read_bytes())})
            assert upload.status_code == 413 and "at most 2 supernets" in upload.json()["detail"]
            assert upload.json()["loc"] == ["body", "name"]  # a refusal other than 422 names its field too
            assert sorted(s["name"] for s in client.get("/supernets").json()) == ["s1", "s2"]
        assert list((Path(f"{srv.store}.data") / "checkpoints").iterdir()) == []
    finally:
        srv.stop()


def test_a_supernet_past_the_size_bound_gets_422_naming_its_options_and_stores_nothing(tmp_path: Path) -> None:
    """`n_classes: 100000` built a 958 MiB OFA ResNet-50 and an AutoFormer at 1024 px took the service to
    8.9 GB; each registered name kept its own copy in memory.  Here the bound is 2 MiB: the demo MobileNet
    holds 3.2 MiB, the demo ViT 0.9 MiB."""
    srv = Server(tmp_path / "store.sqlite", extra=("--max-supernet-mb", "2")).start()
    try:
        with srv.client() as client:
            vit = {"name": "vit", "registry": "demo_vit_mnist"}
            wide = client.post("/supernets", json={**vit, "options": {"n_classes": 100_000}})
            assert "above this service's limit of 2 MiB" in refused(wide, ["body", "options"])
            large = client.post("/supernets", json={"name": "demo", "registry": "demo_mbv3_mnist"})
            assert "3 MiB of weights" in refused(large, ["body", "registry"])
            upload = client.post("/supernets/upload", files={"checkpoint": ("demo.pt", DEMO_CHECKPOINT.read_bytes())},
                                 data={"name": "up", "registry": "demo_mbv3_mnist"})
            refused(upload, ["body", "registry"])
            assert client.post("/supernets", json=vit).status_code == 201
            assert [s["name"] for s in client.get("/supernets").json()] == ["vit"]
        assert list((Path(f"{srv.store}.data") / "checkpoints").iterdir()) == []
    finally:
        srv.stop()


def refused(answer: httpx.Response, loc: list[str]) -> str:
    """The message of a 422 that names ``loc``."""
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["detail"]
    assert problem["loc"] == loc, problem
    return problem["msg"]
