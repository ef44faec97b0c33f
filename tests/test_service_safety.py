"""A hostile but authenticated client against a real ``hwsearch serve`` on 127.0.0.1.

Each case is one a colleague, a CI bot or a leaked token could send: the
service must reach only what its operator allowed, answer 4xx naming the
field (never 500), store nothing it refused, and stay healthy afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests._listeners import Listener
from tests._jobs import SUPERNET, fast_device, random_dataset
from tests._server import Server

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "hwsearch" / "demo" / "demo_mbv3_mnist.pt"
INPUT_PIXELS = 64 * 32 * 32  # the shared server's export bound: batch 64 of tiny-mbv3's 32 px


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("safety")


@pytest.fixture(scope="module")
def data_root(root: Path) -> Path:
    folder = root / "allowed"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a checkpoint\n")
    random_dataset(folder / "val.npz")
    np.savez(folder / "broken.npz", x=np.zeros((4, 5), np.uint8), y=np.zeros(4, np.int64))
    return folder


@pytest.fixture(scope="module")
def server(root: Path, data_root: Path) -> Iterator[Server]:
    srv = Server(root / "store.sqlite",
                 extra=("--data-root", str(data_root), "--max-running-jobs", "1",
                        "--max-queued-jobs", "1", "--max-n-profile", "50", "--max-budget", "5",
                        "--max-upload-mb", "20", "--max-input-pixels", str(INPUT_PIXELS))).start()
    yield srv
    srv.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def refused(response: httpx.Response, loc: list[Any]) -> str:
    """Assert a 422 naming ``loc``; return its message."""
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][:len(loc)] == loc, error
    return str(error["msg"])


def test_profiles_cannot_make_the_server_send_files_or_secrets(server: Server,
                                                               client: httpx.Client) -> None:
    listener = Listener()
    try:
        attempts = [
            ({"where": {"kind": "agent", "url": listener.url, "token_env": "HWSEARCH_TOKEN"}},
             ["body", "profile", "where", "url"]),
            ({"where": {"kind": "agent", "name": "edge", "token_env": "HOME"}},
             ["body", "profile", "where", "token_env"]),
            ({"where": {"kind": "agent", "name": "edge", "cert_sha256": "ab" * 32}},  # whom the server trusts
             ["body", "profile", "where", "cert_sha256"]),
            ({"where": {"kind": "agent", "name": "not-declared"}},
             ["body", "profile", "where", "name"]),
            ({"reference_model": "/etc/passwd"}, ["body", "profile", "reference_model"]),
            ({"reference_model": "/dev/zero"}, ["body", "profile", "reference_model"]),
            ({"reference_model": "/no/such/dir/"}, ["body", "profile", "reference_model"]),
        ]
        rss_before = rss_kib(server.process.pid)
        for extra, loc in attempts:
            started = time.monotonic()
            response = client.post("/devices", json={"profile": {"name": "evil", **extra}})
            assert time.monotonic() - started < 5
            refused(response, loc)
            assert client.get("/devices").status_code == 200, "listing stays healthy"
        assert rss_kib(server.process.pid) < rss_before + 50_000, "nothing large was read"
        assert "evil" not in [d["name"] for d in client.get("/devices").json()]
        assert client.get("/agents").json() == {"agents": []}
        profile = client.post("/profiles", json={"supernet": "x", "on": "evil",
                                                 "arch": {"resolution": 32, "depths": [2] * 5}})
        assert profile.status_code == 422
        time.sleep(0.5)
    finally:
        listener.close()
    assert listener.received == [], "the server connected to a client-chosen URL"


def test_only_paths_inside_a_data_root_are_read_and_outside_looks_like_missing(
        client: httpx.Client, data_root: Path, root: Path) -> None:
    (root / "secret.pt").write_bytes(b"outside the root")
    outside = ["/", "/etc", "/etc/passwd", "/proc/self/environ", "/dev/zero", str(root / "secret.pt"),
               str(data_root / ".." / "secret.pt"), "../secret.pt", "x" * 100_001,
               str(data_root / "missing.pt")]
    messages = set()
    for path in outside:
        response = client.post("/supernets", json={**SUPERNET, "name": "probe", "checkpoint": path})
        if len(path) > 1024:
            refused(response, ["body", "checkpoint"])
            continue
        messages.add(refused(response, ["body", "checkpoint"]))
    assert len(messages) == 1, f"answers differ, so they tell which paths exist: {messages}"

    link = data_root / "escape"
    link.symlink_to("/etc")
    refused(client.post("/jobs", json={"supernet": "probe", "devices": ["x"],
                                       "dataset": "escape/passwd"}), ["body"])
    assert "probe" not in [s["name"] for s in client.get("/supernets").json()]


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_an_image_folder_dataset_reads_nothing_outside_the_data_roots(
        client: httpx.Client, data_root: Path, root: Path) -> None:
    """A class folder or an image linked out of a root is refused; only then were its files uncounted and read.

    The count walked the folder without following links while the scan
    followed them, so a class folder linked to any folder the server could
    read passed with its images uncounted, and a job read them.
    """
    for value in range(3):
        _png(root / "private" / "elsewhere" / f"{value}.png", value)
    assert client.post("/devices", json={"profile": fast_device("cpu-1t")}).status_code == 201
    assert client.post("/supernets", json=SUPERNET).status_code == 201
    jobs_before = client.get("/jobs").json()["jobs"]
    for name, plant in (("linked-class", lambda d: (d / "b").symlink_to(root / "private" / "elsewhere")),
                        ("linked-image", lambda d: (d / "a" / "z.png").symlink_to(root / "private" / "elsewhere"
                                                                                  / "0.png"))):
        dataset = data_root / name
        _png(dataset / "a" / "x.png", 7)
        plant(dataset)
        job = client.post("/jobs", json={"supernet": "tiny-mbv3", "devices": ["cpu-1t"], "dataset": name,
                                         "n_profile": 4})
        assert "leads outside the data roots" in refused(job, ["body", "dataset"])
    assert client.get("/jobs").json()["jobs"] == jobs_before, "nothing was queued"


def test_class_folders_no_labels_can_be_read_from_are_refused_before_a_job_is_queued(
        client: httpx.Client, data_root: Path) -> None:
    """Folders 0..11 beside 'extra', or 1 beside 01: the job was queued, and failed once it opened the data."""
    assert client.post("/devices", json={"profile": fast_device("cpu-1t")}).status_code == 201
    assert client.post("/supernets", json=SUPERNET).status_code == 201
    jobs_before = client.get("/jobs").json()["jobs"]
    for name, folders, says in (("mixed", [*map(str, range(12)), "extra"], "'0' and 'extra' mix class indices"),
                                ("doubled", ["01", "1"], "class folders '01' and '1' name one class index")):
        for value, folder in enumerate(folders):
            _png(data_root / name / folder / "x.png", value)
        job = client.post("/jobs", json={"supernet": "tiny-mbv3", "devices": ["cpu-1t"], "dataset": name,
                                         "n_profile": 4})
        message = refused(job, ["body", "dataset"])
        assert says in message and str(data_root) not in message, message
    assert client.get("/jobs").json()["jobs"] == jobs_before, "nothing was queued"


def test_an_image_folders_bound_counts_the_images_a_scan_reads(tmp_path: Path) -> None:
    """Images reached through a link inside the roots count as the scan reads them, to the bound."""
    from hwsearch.api.files import DataRoots, PathRefused
    from hwsearch.imagefolder import ImageFolder

    for value in range(5):
        _png(tmp_path / "shared" / f"{value}.png", value)
    _png(tmp_path / "ds" / "a" / "x.png", 9)
    (tmp_path / "ds" / "b").symlink_to(tmp_path / "shared")
    assert DataRoots([tmp_path], max_file_bytes=1 << 20, max_dataset_files=6).dataset("ds") == tmp_path / "ds"
    assert len(ImageFolder.scan(tmp_path / "ds")) == 6
    with pytest.raises(PathRefused, match="more than 5 images"):
        DataRoots([tmp_path], max_file_bytes=1 << 20, max_dataset_files=5).dataset("ds")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(PathRefused, match="no images"):
        DataRoots([tmp_path], max_file_bytes=1 << 20).dataset("empty")


def test_a_sub_folder_leading_outside_the_roots_is_refused_before_it_is_listed(tmp_path: Path) -> None:
    """A link inside a class folder to a large tree outside the roots was walked whole; only its images were
    refused.  Now the walk stops at the folder."""
    from hwsearch.api.files import DataRoots, PathRefused

    _png(tmp_path / "root" / "ds" / "a" / "x.png", 1)
    _png(tmp_path / "root" / "ds" / "b" / "y.png", 2)
    (tmp_path / "outside" / "deep").mkdir(parents=True)
    (tmp_path / "root" / "ds" / "b" / "more").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(PathRefused, match=r"^b/more leads outside the data roots$"):  # not b/more/deep: unlisted
        DataRoots([tmp_path / "root"], max_file_bytes=1 << 20).dataset("ds")


def test_bad_checkpoints_get_one_clear_422_and_leave_nothing_behind(client: httpx.Client,
                                                                     root: Path) -> None:
    text = refused(client.post("/supernets", json={**SUPERNET, "name": "notes",
                                                   "checkpoint": "notes.txt"}),
                   ["body", "checkpoint"])
    assert "weights_only=False" not in text and "Traceback" not in text and "/" not in text

    form = {"name": "garbage", "registry": SUPERNET["registry"],
            "options": '{"n_classes": 10, "resolutions": [32]}'}
    upload = client.post("/supernets/upload", data=form,
                         files={"checkpoint": ("x.pt", b"plain text, not a checkpoint\n")})
    refused(upload, ["body", "checkpoint"])
    checkpoints = root / "store.sqlite.data" / "checkpoints"
    assert list(checkpoints.iterdir()) == [], "no .part file or half registration is left"

    for options in ('{"n_classes": "10"}', "[", '{"resolutions": [1e999]}'):
        bad = client.post("/supernets/upload", data={**form, "options": options},
                          files={"checkpoint": ("x.pt", b"x")})
        refused(bad, ["body", "options"])
    assert client.get("/supernets").status_code == 200


def test_a_checkpoint_whose_keys_are_not_strings_gets_a_checkpoint_error(client: httpx.Client,
                                                                          root: Path) -> None:
    """The 422 said "AttributeError: 'int' object has no attribute 'replace'", an internal error's text."""
    import torch

    weights = io.BytesIO()
    torch.save({1: torch.zeros(1), "a": torch.zeros(1)}, weights)
    form = {"name": "intkey", "registry": SUPERNET["registry"], "options": json.dumps(SUPERNET["options"])}
    uploaded = client.post("/supernets/upload", data=form, files={"checkpoint": ("intkey.pt", weights.getvalue())})
    text = refused(uploaded, ["body", "checkpoint"])
    assert "CheckpointError" in text and "state dict keys must be strings" in text, text
    assert "AttributeError" not in text
    assert list((root / "store.sqlite.data" / "checkpoints").iterdir()) == []


def test_an_archive_listing_too_many_members_is_refused_before_its_directory_is_read(
        client: httpx.Client, root: Path, tmp_path: Path) -> None:
    """200,000 empty members, 9.4 MB: zipfile sized it member by member (a ZipInfo each) and torch
    parsed the directory again, holding the upload lock; a 512 MB one took about 150 s."""
    from tests._archives import many_member_zip

    archive = many_member_zip(tmp_path / "many.pt", 200_000, zip64=True).read_bytes()
    form = {"name": "many", "registry": SUPERNET["registry"], "options": json.dumps(SUPERNET["options"])}
    uploaded = client.post("/supernets/upload", data=form, files={"checkpoint": ("many.pt", archive)})
    assert "lists 200000 members; the limit is" in refused(uploaded, ["body", "checkpoint"])
    assert list((root / "store.sqlite.data" / "checkpoints").iterdir()) == []


def deflated(source: bytes) -> bytes:
    """``source`` (a zip archive) with every member deflated: what a zip bomb of that format looks like."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as original, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as packed:
        for member in original.infolist():
            packed.writestr(member.filename, original.read(member))
    return out.getvalue()


def test_files_that_unpack_past_the_limit_are_refused_before_they_are_read(
        client: httpx.Client, data_root: Path, root: Path) -> None:
    """The server allows 20 MiB files; each of these is under 100 KiB on disk and 64 MiB unpacked."""
    import torch

    weights = io.BytesIO()
    torch.save({"w": torch.zeros(16 * 1024 * 1024)}, weights)
    bomb = deflated(weights.getvalue())
    assert len(bomb) < 100 * 1024 and torch.load(io.BytesIO(bomb), weights_only=True)["w"].numel() == 16 << 20
    (data_root / "bomb.pt").write_bytes(bomb)
    images = io.BytesIO()
    np.savez_compressed(images, x=np.zeros((64 * 1024, 32, 32, 1), np.uint8), y=np.zeros(64 * 1024, np.int64))
    assert len(images.getvalue()) < 100 * 1024
    (data_root / "bomb.npz").write_bytes(images.getvalue())

    registered = client.post("/supernets", json={**SUPERNET, "name": "bomb", "checkpoint": "bomb.pt"})
    assert "unpacks to" in refused(registered, ["body", "checkpoint"])
    form = {"name": "bomb", "registry": SUPERNET["registry"], "options": json.dumps(SUPERNET["options"])}
    uploaded = client.post("/supernets/upload", data=form, files={"checkpoint": ("bomb.pt", bomb)})
    assert "unpacks to" in refused(uploaded, ["body", "checkpoint"])
    assert list((root / "store.sqlite.data" / "checkpoints").iterdir()) == []

    assert client.post("/devices", json={"profile": fast_device("cpu-1t")}).status_code == 201
    assert client.post("/supernets", json=SUPERNET).status_code == 201
    job = client.post("/jobs", json={"supernet": "tiny-mbv3", "devices": ["cpu-1t"], "dataset": "bomb.npz"})
    assert "unpacks to" in refused(job, ["body", "dataset"])
    arch = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [32]}
    export = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": arch, "precision": "int8",
                                           "dataset": "bomb.npz"})
    assert "unpacks to" in refused(export, ["body", "dataset"])
    assert "bomb" not in [s["name"] for s in client.get("/supernets").json()]


def test_loose_types_and_odd_names_are_refused(client: httpx.Client) -> None:
    assert client.post("/devices", json={"profile": fast_device("cpu-1t")}).status_code == 201
    registered = client.post("/supernets", json=SUPERNET)
    assert registered.status_code == 201, registered.text
    base = {"supernet": "tiny-mbv3", "devices": ["cpu-1t"], "dataset": "val.npz"}
    cases = [
        ({**base, "n_profile": "16"}, ["body", "n_profile"]),
        ({**base, "budget": True}, ["body", "budget"]),
        ({**base, "seed": 1.5}, ["body", "seed"]),
        ({**base, "supernet": "tiny-mbv3\n"}, ["body", "supernet"]),
        ({**base, "n_profile": 51}, ["body", "n_profile"]),
        ({**base, "budget": 6}, ["body", "budget"]),
        ({**base, "dataset": "notes.txt"}, ["body", "dataset"]),
    ]
    for body, loc in cases:
        refused(client.post("/jobs", json=body), loc)
    nan = client.post("/jobs", content=b'{"supernet": "tiny-mbv3", "devices": ["cpu-1t"], '
                                        b'"limits": [{"metric": "accuracy", "lower": NaN}]}',
                      headers={"content-type": "application/json"})
    refused(nan, ["body", "limits", 0, "lower"])

    profiles = [
        ({"name": "x\n"}, ["body", "profile", "name"]),
        ({"name": "../x"}, ["body", "profile", "name"]),
        ({"name": "x", "warmup": {"seconds": 1e12}}, ["body", "profile"]),
        ({"name": "x", "warmup": {"runs": 10**9}}, ["body", "profile"]),
        ({"name": "x", "intra_op_threads": 100_000}, ["body", "profile"]),
        ({"name": "x", "batch": 10**6}, ["body", "profile"]),
        ({"name": "x", "protocol": {"max_rounds": 10**9}}, ["body", "profile"]),
        ({"name": "x", "where": "local"}, ["body", "profile", "where"]),
    ]
    for profile, loc in profiles:
        refused(client.post("/devices", json={"profile": profile}), loc)
    infinite = client.post("/devices", content=b'{"profile": {"name": "x", "protocol": '
                                               b'{"max_seconds": 1e999}}}',
                           headers={"content-type": "application/json"})
    assert "protocol.max_seconds" in refused(infinite, ["body", "profile"])
    for setting in (b"max_foreign_cores", b"max_reference_slowdown"):
        for limit in (b"-1", b"1e999", b"true"):
            bad = client.post("/devices", content=b'{"profile": {"name": "x", "protocol": {"' + setting
                              + b'": ' + limit + b'}}}', headers={"content-type": "application/json"})
            assert "protocol." + setting.decode() in refused(bad, ["body", "profile"])
    for switch in (b"peer_normalisation", b"load_twice"):
        for value in (b"1", b'"yes"', b"null"):
            bad = client.post("/devices", content=b'{"profile": {"name": "x", "protocol": {"' + switch + b'": '
                              + value + b"}}}", headers={"content-type": "application/json"})
            assert "protocol." + switch.decode() in refused(bad, ["body", "profile"])
    assert [d["name"] for d in client.get("/devices").json()] == ["cpu-1t"]
    for after in ("-1", "abc", str(2**63)):
        response = client.get("/jobs/none/events", params={"after": after})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["query", "after"]
    assert client.get("/jobs/none/events", params={"after": 0}).status_code == 404


@pytest.mark.parametrize("arch", [
    {"resolution": 32, "depths": {"a": 1}},
    {"resolution": 32, "depths": None},
    {"resolution": 32, "depths": "22222"},
    {"resolution": 32, "depths": [2] * 5, "kernel": [[3]] * 10},
    {"resolution": "32", "depths": [2] * 5},
    {"ks": [[3]] * 20, "e": [3] * 20, "d": [2] * 5},
    {"ks": [3] * 20, "e": [3] * 20, "d": [[2]] * 5},
    # Found by a field-by-field fuzz of the real server (2026-12-04): each was a 500.
    {"ks": [10**30] + [3] * 19, "e": [3] * 20, "d": [2] * 5},  # past 64 bits: np.isfinite raised
    {"ks": [3] * 20, "e": [3] * 20, "d": [2, 1.5, 2, 2, 2]},  # a depth is a slice bound
    {"ks": [3] * 20, "e": [3] * 20, "d": [2.0] * 5},
    {"ks": 1.5, "e": [3] * 20, "d": [2] * 5},  # a scalar is broadcast, and checked
    {"resolution": 10**30, "depths": [2] * 5},
])
def test_malformed_archs_are_422_not_500(client: httpx.Client, arch: dict[str, Any]) -> None:
    client.post("/supernets", json=SUPERNET)
    response = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": arch})
    refused(response, ["body", "arch"])
    assert client.get("/health").status_code == 200


def wait_state(client: httpx.Client, job_id: str, states: tuple[str, ...],
               timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise TimeoutError(job)


def busy_ray_workers(root: int) -> list[str]:
    """Ray worker processes under process ``root`` now running a job's task (their title is ``ray::execute``).

    Only the server's own descendants count: tests in other files, run at the
    same time by another pytest worker, have Ray workers of their own.
    """
    children: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            titles[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])  # after "pid (comm) state"
        children.setdefault(parent, []).append(int(proc.name))
    below, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            below.append(child)
            todo.append(child)
    return [titles[pid] for pid in below if titles.get(pid, "").startswith("ray::execute")]


@pytest.mark.slow
def test_admission_queue_cancel_and_one_line_errors(server: Server, client: httpx.Client) -> None:
    client.post("/supernets", json=SUPERNET)
    slow = {**fast_device("slow"), "protocol": {"min_rounds": 300, "max_rounds": 300,
                                                "max_seconds": 600, "ci_target": 0.001}}
    assert client.post("/devices", json={"profile": slow}).status_code == 201
    job = {"supernet": "tiny-mbv3", "devices": ["slow"], "dataset": "val.npz", "n_profile": 8}
    running = client.post("/jobs", json=job).json()["id"]
    wait_state(client, running, ("running",))
    queued = client.post("/jobs", json=job)
    assert queued.status_code == 202
    full = client.post("/jobs", json=job)
    assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
    assert client.get("/limits").json()["queued"] == 1

    deadline = time.monotonic() + 120
    while client.get(f"/jobs/{running}").json()["progress"].get("step") != "profile":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert server.process is not None
    assert busy_ray_workers(server.process.pid), "the running job has a Ray task"
    waiting = queued.json()["id"]
    assert client.post(f"/jobs/{waiting}/cancel").json()["state"] == "cancelled"
    assert client.post(f"/jobs/{running}/cancel").json()["state"] == "cancelled"
    deadline = time.monotonic() + 30
    while busy_ray_workers(server.process.pid):
        assert time.monotonic() < deadline, f"still running after cancel: {busy_ray_workers(server.process.pid)}"
        time.sleep(0.2)
    time.sleep(1.0)
    assert [client.get(f"/jobs/{j}").json()["state"] for j in (running, waiting)] == [
        "cancelled", "cancelled"]
    log = server.log.read_text()
    assert "TaskCancelledError" not in log, "a cancel asked for is not a failure with a traceback"

    broken = client.post("/jobs", json={**job, "dataset": "broken.npz", "n_profile": 4})
    assert broken.status_code == 202, broken.text
    failed = wait_state(client, broken.json()["id"], ("failed", "succeeded"))
    assert failed["state"] == "failed"
    error = failed["error"]
    assert "\n" not in error and "Traceback" not in error and "\x1b" not in error
    assert "/" not in error and len(error) <= 300, error


def test_a_job_that_would_measure_what_a_running_job_measures_waits_and_reuses_its_rows(tmp_path: Path) -> None:
    """Two identical jobs submitted together measured every subnet twice, one after the other at the host's
    lock: each skipped only what was stored when its profiling began. The second now waits for the first,
    says so, and measures nothing; a different job behind it is not held up."""
    random_dataset(tmp_path / "val.npz")
    job = {"supernet": "tiny-mbv3", "devices": ["a"], "dataset": "val.npz", "n_profile": 4}
    server = Server(tmp_path / "store.sqlite", extra=("--max-running-jobs", "2")).start()
    try:
        with server.client() as c:
            c.post("/supernets", json=SUPERNET)
            c.post("/devices", json={"profile": fast_device("a")})
            first, twin, other = (c.post("/jobs", json=body).json()["id"]
                                  for body in (job, job, {**job, "seed": 7}))
            ended = {j: wait_state(c, j, ("succeeded", "failed")) for j in (first, twin, other)}
            assert all(record["state"] == "succeeded" for record in ended.values()), ended
            events = {j: c.get(f"/jobs/{j}/events").json()["events"] for j in (first, twin, other)}
    finally:
        server.stop()
    said = [e["message"] for e in events[twin] if e["step"] == "queued"]
    assert said == [f"waiting for job {first}, which measures the same subnets first; then reusing its "
                    "measurements"], events[twin][:3]
    assert ended[twin]["result"]["devices"]["a"]["profiling"] | {"seconds": 0} == {
        **ended[first]["result"]["devices"]["a"]["profiling"], "skipped": 4, "measured": 0, "unstable": 0,
        "seconds": 0}, "the twin reused all four of the first job's rows"
    timed = {j: [e for e in events[j] if e["at"] is not None] for j in events}
    started = {j: min(e["at"] for e in timed[j] if e["step"] not in ("", "queued")) for j in events}
    finished = {j: max(e["at"] for e in timed[j]) for j in events}
    assert started[twin] >= finished[first], "the twin ran after the first job"
    assert started[other] < finished[first], "another seed's job ran beside the first"


def test_a_job_past_the_time_bound_fails_and_its_tasks_stop(tmp_path: Path) -> None:
    """A job could run as long as its profiles allowed (an hour a session): two such jobs held both running
    places and the host for days.  Here the bound is 10 s against a job that measures for minutes."""
    data = tmp_path / "data"
    data.mkdir()
    random_dataset(data / "val.npz")
    srv = Server(tmp_path / "store.sqlite", extra=("--data-root", str(data), "--max-job-hours", str(10 / 3600))).start()
    try:
        with srv.client() as client:
            assert client.get("/limits").json()["max_job_seconds"] == pytest.approx(10)
            assert client.post("/supernets", json=SUPERNET).status_code == 201
            slow = {**fast_device("slow"), "protocol": {"min_rounds": 300, "max_rounds": 300,
                                                        "max_seconds": 600, "ci_target": 0.001}}
            assert client.post("/devices", json={"profile": slow}).status_code == 201
            job = client.post("/jobs", json={"supernet": "tiny-mbv3", "devices": ["slow"], "dataset": "val.npz",
                                             "n_profile": 8}).json()["id"]
            wait_state(client, job, ("running",))
            started = time.monotonic()
            ended = wait_state(client, job, ("failed", "succeeded", "cancelled"), timeout=120)
            assert ended["state"] == "failed" and "limit of" in ended["error"] and "--max-job-hours" in ended["error"]
            assert time.monotonic() - started < 60
            assert srv.process is not None
            deadline = time.monotonic() + 30
            while busy_ray_workers(srv.process.pid):
                assert time.monotonic() < deadline, "the job's task still runs past its bound"
                time.sleep(0.2)
            assert client.get(f"/jobs/{job}").json()["state"] == "failed"
    finally:
        srv.stop()


def processes_marked(marker: str) -> set[int]:
    """Processes whose command line or environment names ``marker`` (a Ray temp dir)."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes():
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def processes_in_group(group: int) -> set[int]:
    """Processes of process group ``group``: a service's Ray agents stay in it, whatever title they give themselves."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) == group:
                found.add(int(proc.name))
    return found


def command_line(pid: int) -> bytes:
    """``pid``'s command line, empty once it has gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def still_running(pids: set[int]) -> set[int]:
    """Those of ``pids`` that exist and are not zombies (an exited child its parent has not reaped)."""
    alive = set()
    for pid in pids:
        try:
            if b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower():
                alive.add(pid)
        except OSError:  # gone
            continue
    return alive


def freeze_holding(marker: str, server: int, folder: Path, deadline: float, frozen: set[int]) -> set[Path]:
    """SIGSTOP ``server`` and its Ray processes at a moment ``folder`` holds ONNX files; those files.

    Ray's processes are those marked ``marker`` and those of the server's
    process group titled ``ray::`` (a worker that rewrote its title over the
    mark finished its export unfrozen, and deleted it before the second start
    could show it clears what a crash left).  Each is added to ``frozen``
    before it is stopped, so the caller can end them whatever happens here.
    A worker (or the server's own threads) may delete its exports between a
    look and the stop, so each try looks again once all are stopped, and
    lets them go on if the files were gone.
    """
    while True:
        assert time.monotonic() < deadline, "the job exported nothing under the service's temp folder"
        if set(folder.rglob("*.onnx")):
            titled = {pid for pid in processes_in_group(server) if command_line(pid).startswith(b"ray::")}
            for pid in processes_marked(marker) | titled | {server}:
                frozen.add(pid)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGSTOP)
            if exports := set(folder.rglob("*.onnx")):
                return exports
            for pid in frozen:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)


@pytest.mark.slow
def test_nothing_the_service_started_outlives_a_kill_9_or_a_stop(tmp_path: Path, short_temp_dir: Path) -> None:
    from devices.hostlock import DEFAULT_LOCK_DIR
    from hwsearch.ray_session import private_temp_dir
    from hwsearch.store import SQLiteStore

    random_dataset(tmp_path / "val.npz")
    store = tmp_path / "store.sqlite"
    data_dir = str(Path(f"{store}.data"))
    # A temp dir of the test's own, short (Ray's socket paths live below it), and the host lock at
    # its default place: the service must keep sharing that lock with the host after it moves TMPDIR.
    host_tmp = short_temp_dir
    env = {"TMPDIR": str(host_tmp), "DEVICES_LOCK_DIR": ""}
    host_queue = DEFAULT_LOCK_DIR / "queue"
    queue_touched = host_queue.stat().st_mtime_ns if host_queue.is_dir() else None
    marker = str(host_tmp / private_temp_dir(data_dir).name)
    temp_files = host_tmp / private_temp_dir(data_dir, "tmp").name
    first = Server(store, env=env).start()
    frozen: set[int] = set()
    try:
        with first.client() as c:
            c.post("/supernets", json=SUPERNET)
            c.post("/devices", json={"profile": fast_device("a")})
            job = c.post("/jobs", json={"supernet": "tiny-mbv3", "devices": ["a"],
                                        "dataset": "val.npz", "n_profile": 4}).json()["id"]
            wait_state(c, job, ("running",))
        deadline = time.monotonic() + 60
        while not processes_marked(marker) - {first.process.pid}:
            assert time.monotonic() < deadline, "Ray never started under the service's temp dir"
            time.sleep(0.5)
        # The service and its Ray are frozen while the job's exports are on disk: a kill -9 of the
        # server leaves its workers running, and one that finished measuring would delete them before
        # the second start could show it clears what a crash left.
        exports = freeze_holding(marker, first.process.pid, temp_files, deadline, frozen)
        # Each ticket the job's exports queue in the host's lock folder changes that folder's mtime.
        assert host_queue.is_dir() and host_queue.stat().st_mtime_ns != queue_touched, \
            "the job's exports took no ticket at the host's lock"
        assert not list(host_tmp.rglob("hwsearch-devices-locks")), "the service locked a host of its own"
        # Ray's agents may rewrite their title over command line and environment, and so go unmarked; they
        # stay in the server's process group, and outlived three restarts unseen.
        started = processes_in_group(first.process.pid) - {first.process.pid}
        os.kill(first.process.pid, signal.SIGKILL)  # the server alone, as a crash would
        first.process.wait(timeout=30)
        second = Server(store, env=env).start()
        try:
            # SIGKILL is delivered at once but a process exits when the kernel gets to it: on a
            # loaded host a leftover killed at the second start could still be exiting when it answers.
            deadline = time.monotonic() + 10
            while (alive := still_running(frozen | started)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert alive == set(), f"left behind: {alive}"
            frozen.clear()  # ended: their numbers may be another process's from now on
            assert not exports & set(temp_files.rglob("*")), "the killed service's exports were kept"
            assert "temp file(s) (" in second.log.read_text() and "a previous run on" in second.log.read_text()
            with second.client() as c:
                assert c.get(f"/jobs/{job}").json()["state"] == "interrupted"
                assert c.post(f"/jobs/{job}/resume").status_code == 202
                deadline = time.monotonic() + 120
                while not set(temp_files.rglob("*.onnx")):  # running again, on Ray, mid-export
                    assert time.monotonic() < deadline, c.get(f"/jobs/{job}").json()
                    time.sleep(0.1)
                assert processes_marked(marker) - {second.process.pid}
        finally:
            second.stop()  # SIGTERM, as an operator's stop
        assert "Application shutdown complete" in second.log.read_text(), "the stop was cut short"
        # Left as a crash leaves it: the next start marks it interrupted, or queues it with --resume.
        assert SQLiteStore(store).get_job(job).state == "running"
        assert not temp_files.exists(), "a service that stops removes its temp folder"
    finally:
        first.kill()
        for pid in frozen & processes_marked(marker):  # never left stopped if the test failed before the restart
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("factory", [False, True], ids=["serve", "factory"])
def test_a_start_ends_a_killed_services_ray_agent_and_empties_its_temp_files(
        tmp_path: Path, short_temp_dir: Path, factory: bool) -> None:
    """Under ``uvicorn --factory`` a killed service's ``ray::DashboardAgent`` and exports were left for ever:
    only ``hwsearch serve`` cleared them.  Both now end the agent, empty the temp files and say so; a stop
    removes the temp-files folder."""
    from hwsearch.ray_session import private_temp_dir

    store = tmp_path / "store.sqlite"
    data_dir = str(Path(f"{store}.data"))
    ray_dir = short_temp_dir / private_temp_dir(data_dir).name
    temp_files = short_temp_dir / private_temp_dir(data_dir, "tmp").name
    (ray_dir / "logs").mkdir(parents=True)
    temp_files.mkdir()
    (temp_files / "subnet-3.onnx").write_bytes(b"\0" * 4096)  # an export the killed service left
    with open(ray_dir / "logs" / "dashboard_agent.log", "w") as held:
        agent = subprocess.Popen(["bash", "-c", "exec -a 'ray::DashboardAgent' sleep 600"], pass_fds=[held.fileno()])
    server = Server(store, env={"TMPDIR": str(short_temp_dir)}, factory=factory)
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{agent.pid}/cmdline").read_bytes().startswith(b"ray::"):  # bash, before its exec
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.start()
        assert agent.wait(timeout=10) == -signal.SIGKILL
        said = server.log.read_text()
        assert f"ended 1 process(es) a previous run on {data_dir} left behind: {agent.pid} ray::DashboardAgent" \
            in said and "removed 1 temp file(s) (0.0 MB)" in said, said
        assert list(temp_files.iterdir()) == []
    finally:
        server.stop()
        agent.kill()
        agent.wait()
    assert "Application shutdown complete" in server.log.read_text()
    assert not temp_files.exists(), "a service that stops removes its temp folder"


@pytest.mark.parametrize("factory", [False, True], ids=["serve", "factory"])
def test_a_service_under_a_deep_temp_folder_starts_its_ray_where_socket_paths_fit(
        tmp_path: Path, short_temp_dir: Path, factory: bool) -> None:
    """Under a ``TMPDIR`` of 34 characters every job failed: "AF_UNIX path length cannot exceed 107 bytes",
    Ray's sockets lying below the service's Ray folder there (the factory did so once it cleared leftovers as
    ``hwsearch serve`` does). Temp files stay in the deep folder; Ray's folder moves to /tmp."""
    from hwsearch.ray_session import private_temp_dir

    deep = short_temp_dir / "a-temp-folder-as-deep-as-an-operator-may-set-it"
    deep.mkdir()
    random_dataset(tmp_path / "val.npz")
    server = Server(tmp_path / "store.sqlite", env={"TMPDIR": str(deep)}, factory=factory).start()
    try:
        with server.client() as c:
            c.post("/supernets", json=SUPERNET)
            c.post("/devices", json={"profile": fast_device("a")})
            job = c.post("/jobs", json={"supernet": "tiny-mbv3", "devices": ["a"], "dataset": "val.npz",
                                        "n_profile": 4}).json()["id"]
            deadline = time.monotonic() + 300
            while (read := c.get(f"/jobs/{job}").json())["state"] in ("queued", "running") and \
                    (read["progress"] or {}).get("step") in (None, "", "prepare"):
                assert time.monotonic() < deadline, read
                time.sleep(0.2)
            assert read["state"] in ("running", "succeeded") and read["progress"]["step"] != "prepare", read
        ray_folder = Path("/tmp") / private_temp_dir(str(server.data_dir)).name
        assert ray_folder.is_dir() and list(ray_folder.iterdir()), "Ray ran in the service's folder under /tmp"
        assert (deep / private_temp_dir(str(server.data_dir), "tmp").name).is_dir()
    finally:
        server.stop()
        shutil.rmtree(Path("/tmp") / private_temp_dir(str(server.data_dir)).name, ignore_errors=True)


def _readable_by_nobody(path: Path) -> bool:
    """Whether another account (uid 65534) can read ``path``: a real open in a process of that user."""
    probe = subprocess.run(["head", "-c", "1", str(path)], user=65534, group=65534, extra_groups=[],
                           cwd="/", capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.mark.parametrize("factory", [False, True], ids=["hwsearch-serve", "uvicorn-factory"])
def test_what_the_service_keeps_is_closed_to_other_accounts(factory: bool) -> None:
    """Folders 0700, the store 0600, also where an earlier version left them open (0755, 0644).

    In a folder of the host's /tmp that others may enter (pytest's own are
    0700), so that only the service's modes stand between them and its files;
    both for ``hwsearch serve`` and for the app built by ``uvicorn --factory``.
    """
    folder = Path(tempfile.mkdtemp(prefix="hwsearch-closed-"))
    folder.chmod(0o755)
    store = folder / "store.sqlite"
    data_dir = Path(f"{store}.data")
    data_dir.mkdir(mode=0o755)
    store.touch(mode=0o644)
    open_file = folder / "allowed" / "open.txt"
    open_file.parent.mkdir()
    open_file.write_text("anyone may read this\n")
    roots = ("--data-root", str(open_file.parent))
    srv = Server(store, extra=() if factory else roots, factory=factory).start()
    try:
        with srv.client() as client:
            assert client.post("/devices", json={"profile": fast_device("closed")}).status_code == 201
        kept = [store, *(p for p in (Path(f"{store}-wal"), Path(f"{store}-shm")) if p.exists())]
        assert data_dir.stat().st_mode & 0o777 == 0o700
        assert [p.stat().st_mode & 0o777 for p in kept] == [0o600] * len(kept), kept
        if os.geteuid() == 0:
            assert _readable_by_nobody(open_file), "the probe reads what is open"
            assert not _readable_by_nobody(data_dir / "devices" / "closed.json")
            assert not any(map(_readable_by_nobody, kept))
    finally:
        srv.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(("setting", "named"), [
    ({"HWSEARCH_STORE": ""}, "HWSEARCH_STORE must be set"),
    ({"HWSEARCH_TOKEN": ""}, "HWSEARCH_TOKEN must be set"),
    ({"HWSEARCH_MAX_BODY": "-1"}, "HWSEARCH_MAX_BODY='-1' must be a finite number"),
    ({"HWSEARCH_READ_TIMEOUT_S": "nan"}, "HWSEARCH_READ_TIMEOUT_S='nan' must be a finite number"),
    ({"HWSEARCH_MAX_REGISTRATIONS": "many"}, "HWSEARCH_MAX_REGISTRATIONS='many' is not a number"),
    ({"HWSEARCH_MAX_INPUT_PIXELS": "100"}, "HWSEARCH_MAX_INPUT_PIXELS='100'"),
    ({"HWSEARCH_MAX_RUNNING_JOBS": "0"}, "HWSEARCH_MAX_RUNNING_JOBS='0' must be a finite number of at least 1"),
    ({"HWSEARCH_MAX_BUDGET": "2.5"}, "HWSEARCH_MAX_BUDGET='2.5' must be a whole number"),  # ran as 2
    ({"HWSEARCH_MAX_UPLOAD": "0"}, "HWSEARCH_MAX_UPLOAD='0' must be a finite number of at least 10485.76"),
    ({"HWSEARCH_RESUME": "maybe"}, "HWSEARCH_RESUME='maybe' must be true or false"),
    ({"HWSEARCH_AGENTS": "no-url-here"}, "HWSEARCH_AGENTS:"),
    ({"HWSEARCH_AGENT_SECRETS": "/etc/passwd"}, "HWSEARCH_AGENT_SECRETS: /etc/passwd is not JSON"),  # was AGENTS
    ({"HWSEARCH_TOKEN": "p\u00e4ss"}, "HWSEARCH_TOKEN: the token must be printable ASCII"),
    ({"HWSEARCH_TOKEN": "s3cret-15-chars"}, "HWSEARCH_TOKEN: the token is shorter than the 16 characters"),  # served
    ({"HWSEARCH_PUBLIC_URL": "ftp://x"}, "HWSEARCH_PUBLIC_URL: the public URL must be http(s)"),
    ({"HWSEARCH_AGENTS": "edge=http://user:s3cret@127.0.0.1:9", "HWSEARCH_AGENT_TOKEN_EDGE": "t"},
     "its url carries a user or password"),
    # Paths that cannot hold the service's locks: tracebacks before, and a runners folder left behind.
    ({"HWSEARCH_DATA": "/etc/passwd"}, "HWSEARCH_DATA: no service lock in /etc/passwd"),
    ({"HWSEARCH_STORE": "/proc/no-store.sqlite"}, "HWSEARCH_STORE: no service lock beside /proc/no-store.sqlite"),
])
def test_the_factory_stops_on_a_bad_setting_in_one_line_and_leaves_nothing(
        tmp_path: Path, setting: dict[str, str], named: str) -> None:
    """``uvicorn --factory``: exit 3 naming the variable, no traceback, no store made."""
    env = {**os.environ, "HWSEARCH_STORE": str(tmp_path / "store.sqlite"), "HWSEARCH_TOKEN": "a-token-of-16-chars",
           "RAY_AUTH_MODE": "disabled", **setting}
    started = subprocess.run([sys.executable, "-m", "uvicorn", "--factory", "hwsearch.api.app:create_app_from_env",
                              "--port", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 3, started.stderr[-2000:]
    assert named in started.stderr and "Traceback" not in started.stderr, started.stderr[-2000:]
    assert "s3cret" not in started.stderr
    assert list(tmp_path.iterdir()) == [], "a refused start leaves no store or data folder"


def test_the_factory_takes_the_job_limits_hwsearch_serve_takes_as_options(tmp_path: Path) -> None:
    """--max-running-jobs, --max-queued-jobs, --max-n-profile and --max-budget had no setting under the factory."""
    settings = {"HWSEARCH_MAX_RUNNING_JOBS": "1", "HWSEARCH_MAX_QUEUED_JOBS": "3", "HWSEARCH_MAX_N_PROFILE": "40",
                "HWSEARCH_MAX_BUDGET": "7"}
    srv = Server(tmp_path / "store.sqlite", factory=True, env=settings).start()
    try:
        with srv.client() as c:
            limits = c.get("/limits").json()
        assert {name: limits[name] for name in ("max_running", "max_queued", "max_n_profile", "max_budget")} == {
            "max_running": 1, "max_queued": 3, "max_n_profile": 40, "max_budget": 7}
    finally:
        srv.stop()


def test_registrations_from_an_earlier_version_are_checked_again_at_start(tmp_path: Path) -> None:
    import json

    from devices.profile import DeviceProfile

    store = tmp_path / "store.sqlite"
    catalog = Path(f"{store}.data")
    for kind in ("devices", "supernets"):
        (catalog / kind).mkdir(parents=True)
    legacy = {  # what v0.1 stored: profiles as sent, supernets without a description
        "devices/plain.json": {"name": "plain", "intra_op_threads": 1},
        # registered today, before a default of the measurement changed (its hash was another then)
        "devices/stale.json": {"name": "stale", "hash": "0123456789abcdef",
                               "profile": {"name": "stale", "where": {"kind": "local"}}},
        "devices/leaky.json": {"name": "leaky", "where": {"kind": "agent",
                                                          "url": "http://127.0.0.1:9",
                                                          "token_env": "HWSEARCH_TOKEN"}},
        "devices/zero.json": {"name": "zero", "reference_model": "/dev/zero"},
        "supernets/tiny-mbv3.json": {**SUPERNET, "checkpoint": None},
        "supernets/passwd.json": {**SUPERNET, "name": "passwd", "checkpoint": "/etc/passwd"},
    }
    for path, record in legacy.items():
        (catalog / path).write_text(json.dumps(record))
    server = Server(store).start()
    try:
        with server.client() as c:
            devices = c.get("/devices")
            supernets = c.get("/supernets")
        assert devices.status_code == 200 and supernets.status_code == 200
        assert [d["name"] for d in devices.json()] == ["plain", "stale"] and devices.json()[0]["hash"]
        assert devices.json()[1]["hash"] == DeviceProfile(name="stale").hash() != "0123456789abcdef"
        assert [s["name"] for s in supernets.json()] == ["tiny-mbv3"]
        assert supernets.json()[0]["space_name"] == "ofa_mbv3_d234_e346_k357_w1.0"
    finally:
        server.stop()
    assert sorted(p.name for p in catalog.glob("*/*.rejected")) == [
        "leaky.json.rejected", "passwd.json.rejected", "zero.json.rejected"]
    log = server.log.read_text()
    assert "device 'leaky' set aside" in log and "supernet 'tiny-mbv3' upgraded" in log
    assert "device 'stale' is measured under" in log and "not 0123456789abcdef" in log


def test_resume_at_start_queues_what_fits_and_leaves_the_rest_interrupted(tmp_path: Path
                                                                          ) -> None:
    from hwsearch.store import SQLiteStore
    from tests._jobs import tiny_spec

    store = SQLiteStore(tmp_path / "store.sqlite")
    spec = tiny_spec(random_dataset(tmp_path / "val.npz"), [fast_device("cpu-1t")], n_profile=4)
    left_running = [store.create_job(spec.to_dict()) for _ in range(3)]
    for job_id in left_running:  # what a killed service leaves behind
        store.update_job(job_id, state="running", progress={"step": "profile"})
    server = Server(store.path, extra=("--resume", "--max-running-jobs", "1",
                                       "--max-queued-jobs", "1")).start()
    try:
        with server.client() as c:
            states = [c.get(f"/jobs/{j}").json()["state"] for j in left_running]
        assert states[0] in ("queued", "running", "succeeded"), states
        assert states[1:] == ["interrupted", "interrupted"], "the queue holds one job"
    finally:
        server.stop()
    assert "stays interrupted: the job queue is full" in server.log.read_text()


def test_a_resume_is_checked_against_the_settings_the_service_has_now(tmp_path: Path) -> None:
    """A stopped job resumes only if a new submission of it would be admitted today.

    Before, an operator who restarted with tighter limits or other data roots
    still had any token holder resume an old job past them (a job with
    n_profile 20 ran under --max-n-profile 4 and read a dataset outside the roots).
    """
    from hwsearch.store import SQLiteStore
    from tests._jobs import tiny_spec

    first_root, second_root = tmp_path / "first", tmp_path / "second"
    first_root.mkdir()
    second_root.mkdir()
    store = SQLiteStore(tmp_path / "store.sqlite")
    spec = tiny_spec(random_dataset(first_root / "val.npz"), [fast_device("cpu-1t")], n_profile=8)
    stopped = store.create_job(spec.to_dict())
    store.update_job(stopped, state="cancelled")
    tighter = Server(store.path, extra=("--data-root", str(second_root), "--max-n-profile", "4")).start()
    try:
        with tighter.client() as c:
            refused = c.post(f"/jobs/{stopped}/resume")
            state = c.get(f"/jobs/{stopped}").json()["state"]
    finally:
        tighter.stop()
    assert refused.status_code == 409, refused.text
    assert "n_profile=8 is above the limit of 4" in refused.json()["detail"]
    assert "its dataset must name an existing file inside a data root" in refused.json()["detail"]
    assert state == "cancelled"  # nothing was queued

    within = Server(store.path, extra=("--data-root", str(first_root))).start()
    try:
        with within.client() as c:
            resumed = c.post(f"/jobs/{stopped}/resume")
            c.post(f"/jobs/{stopped}/cancel")
    finally:
        within.stop()
    assert resumed.status_code == 202, resumed.text  # the same job within the settings runs again


def test_links_in_answers_never_follow_the_clients_host_header(server: Server, client: httpx.Client) -> None:
    """A ``Host`` header of the client's choosing once came back inside ``download_url`` and ``status_url``.

    The next client following such a link would send its token there.  Links
    start with the address the connection reached, or the operator's --public-url.
    """
    arch = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [32]}
    client.post("/supernets", json=SUPERNET)
    made = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": arch},
                       headers={"Host": "evil.example:666", "X-Forwarded-Proto": "wss",
                                "X-Forwarded-Host": "evil.example"})
    assert made.status_code == 201, made.text
    assert made.json()["download_url"].startswith(f"{server.url}/exports/")
    assert client.get(made.json()["download_url"]).status_code == 200

    proxied = Server(server.store.with_name("proxied.sqlite"),
                     extra=("--public-url", "https://hwsearch.example/api/")).start()
    try:
        with proxied.client() as c:
            c.post("/supernets", json=SUPERNET)
            link = c.post("/exports", json={"supernet": "tiny-mbv3", "arch": arch},
                          headers={"Host": "evil.example"}).json()["download_url"]
    finally:
        proxied.stop()
    assert link.startswith("https://hwsearch.example/api/exports/")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--token", "p\u00e4ss", "the token must be printable ASCII"),
    ("--token", "a-token-15-char", "the token is shorter than the 16 characters"),  # "--token t" was served
    ("--public-url", "https://user:pw@host", "the public URL must be http(s)"),
    ("--public-url", "http://proxy.example/api?", "the public URL must be http(s)"),  # links went after the '?'
    ("--public-url", "http://proxy.example:99999", "the public URL must be http(s)"),
    ("--public-url", "http://proxy.example/a b", "the public URL must be http(s)"),
])
def test_serve_refuses_a_token_no_client_can_send_and_a_malformed_public_url(
        tmp_path: Path, option: str, value: str, message: str) -> None:
    """A non-ASCII token was accepted, then matched no client's header in any encoding: everyone got 401."""
    env = {**os.environ, "HWSEARCH_TOKEN": "a-token-of-16-chars", "RAY_AUTH_MODE": "disabled"}
    started = subprocess.run([sys.executable, "-m", "hwsearch.cli.main", "serve", "--store",
                              str(tmp_path / "s.sqlite"), "--port", "0", option, value],
                             env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 2 and message in started.stderr and "Traceback" not in started.stderr, \
        started.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_stored_job_that_can_no_longer_be_read_or_built_is_refused_a_resume_with_409(
        server: Server, client: httpx.Client) -> None:
    """Each of these was a 500 once the resume re-checked the job: a spec from an older version,
    a builder that is gone, a spec field of the wrong type."""
    from hwsearch.store import SQLiteStore
    from tests._jobs import tiny_spec

    store = SQLiteStore(server.store)
    good = tiny_spec(server.store.parent / "val.npz", [fast_device("cpu-1t")]).to_dict()
    broken = [{k: v for k, v in good.items() if k != "devices"},
              {**good, "supernet": {**good["supernet"], "registry": "no-such-builder"}},
              {**good, "n_profile": "abc"},
              {**good, "supernet": None}]
    for spec in broken:
        job = store.create_job(spec)
        store.update_job(job, state="failed", error="earlier")
        refused = client.post(f"/jobs/{job}/resume")
        assert refused.status_code == 409 and "cannot be resumed" in refused.json()["detail"], refused.text
        assert store.get_job(job).state == "failed"


@pytest.mark.parametrize("method, path, state, racers", [("post", "cancel", "failed", 1),
                                                        ("get", "events", "cancelled", 3)])
def test_requests_racing_a_delete_of_their_job_never_get_a_500(server: Server, client: httpx.Client, method: str,
                                                                path: str, state: str, racers: int) -> None:
    """A request that read the job before a DELETE removed it got a KeyError: a cancel (16 of 60 were 500s), and
    a read of its events (Y15: on the first job over HTTP, 3 in 300 in process)."""
    from concurrent.futures import ThreadPoolExecutor

    from hwsearch.store import SQLiteStore

    store = SQLiteStore(server.store)
    answers = []
    with ThreadPoolExecutor(racers + 1) as pool:
        for _ in range(40):
            job = store.create_job({"kind": "search"})
            store.update_job(job, state=state)
            racing = [pool.submit(getattr(client, method), f"/jobs/{job}/{path}") for _ in range(racers)]
            delete = pool.submit(client.delete, f"/jobs/{job}")
            answers += [answer.result().status_code for answer in racing] + [delete.result().status_code]
    assert set(answers) <= {200, 204, 404}, answers


#: One value of each kind a JSON client can send where a field expects something else.
HOSTILE = [None, True, -1, 1.5, 10**30, float("nan"), "", "x" * 300, [], {}, [None], "\ud800", {"\ud800": 1}]


def _field_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field and list item of a JSON body, at any depth, as a path of keys and indices."""
    if prefix:
        yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _field_paths(child, prefix + (key,))


_LEFT_OUT = object()


def _mutations(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``body`` with each field replaced by each :data:`HOSTILE` value in turn, and with each field left out."""
    for path in _field_paths(body):
        for value in [*HOSTILE, _LEFT_OUT]:
            mutated = copy.deepcopy(body)
            parent = mutated
            for key in path[:-1]:
                parent = parent[key]
            if value is _LEFT_OUT:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            yield mutated


def test_every_field_replaced_by_hostile_values_never_gets_a_500(client: httpx.Client) -> None:
    """Field by field, at every depth: a 4xx every time, never a 500 or a dropped connection.

    This fuzz found the native-arch 500s above.  The job body names a device
    that does not exist, so no mutation can start a job on the shared server.
    """
    client.post("/supernets", json=SUPERNET)
    native = {"ks": [3] * 20, "e": [4] * 20, "d": [2, 3, 4, 2, 3], "r": [32]}
    bodies = {
        "/exports": {"supernet": "tiny-mbv3", "arch": native},
        "/jobs": {"supernet": "tiny-mbv3", "devices": ["absent"], "dataset": "val.npz", "budget": 2,
                  "limits": [{"metric": "latency_ms", "upper": 9.0}], "targets": {"absent": {"budgets_ms": [5.0]}}},
        "/devices": {"profile": {**fast_device("fuzzed"), "batch": 1}},
    }
    answered: dict[int, int] = {}
    for path, base in bodies.items():
        for body in _mutations(base):
            response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
            assert response.status_code < 500, (path, body, response.text)
            answered[response.status_code] = answered.get(response.status_code, 0) + 1
    assert answered[422] > 500, answered
    assert client.get("/health").status_code == 200


def test_a_quoted_value_comes_back_bounded_and_a_lone_surrogate_as_sent(client: httpx.Client) -> None:
    """A message may quote the client's value: a 900 KB one came back whole, a lone surrogate as a 500."""
    huge = client.post("/devices", json={"profile": {**fast_device("huge"), "warmup": "w" * 900_000}})
    assert len(refused(huge, ["body", "profile"])) < 2_100 and len(huge.content) < 3_000
    # ``"\ud800"`` is valid JSON; echoed in an unknown key it could not be encoded as UTF-8.
    body = '{"profile": {"name": "sur", "\\ud800": 1}}'
    surrogate = client.post("/devices", content=body, headers={"content-type": "application/json"})
    assert "'\ud800'" in refused(surrogate, ["body", "profile"])
    assert client.get("/health").status_code == 200


def test_an_export_or_job_input_past_the_pixel_bound_is_refused_by_field(client: httpx.Client) -> None:
    """batch x resolution^2: at 1024 px, an export took ~240 MiB per sample, and batch 256 was allowed."""
    client.post("/supernets", json=SUPERNET)
    assert client.get("/limits").json()["max_input_pixels"] == INPUT_PIXELS
    native = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [32]}
    at_bound = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": native, "batch": 64})
    assert at_bound.status_code == 201 and at_bound.json()["input_shape"] == [64, 3, 32, 32], at_bound.text
    over = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": native, "batch": 65})
    assert "66,560 input pixels" in refused(over, ["body", "batch"])

    assert client.post("/devices", json={"profile": {**fast_device("wide"), "batch": 65}}).status_code == 201
    job = client.post("/jobs", json={"supernet": "tiny-mbv3", "devices": ["wide"], "dataset": "val.npz",
                                     "n_profile": 4})
    refused(job, ["body", "devices", 0])
    profile = client.post("/profiles", json={"supernet": "tiny-mbv3", "arch": native, "on": "wide"})
    refused(profile, ["body", "on"])
    assert client.get("/limits").json()["queued"] == 0


def scaled_demo_checkpoint(scale: float, nan_in: str | None = None) -> bytes:
    import torch

    state = torch.load(DEMO_CHECKPOINT, weights_only=True, map_location="cpu")
    state = {k: v * scale if v.is_floating_point() and not k.endswith("running_var") else v
             for k, v in state.get("state_dict", state).items()}
    if nan_in is not None:
        state[nan_in] = torch.full_like(state[nan_in], float("nan"))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_weights_that_give_no_numbers_are_refused_at_registration_or_export(
        client: httpx.Client, root: Path) -> None:
    """A NaN checkpoint loaded, registered, and then every export of it was a 500."""
    def upload(name: str, weights: bytes) -> httpx.Response:
        return client.post("/supernets/upload", data={"name": name, "registry": "demo_mbv3_mnist"},
                           files={"checkpoint": ("w.pt", weights)})

    import torch

    first_weight = next(k for k, v in torch.load(DEMO_CHECKPOINT, weights_only=True).items()
                        if v.is_floating_point())
    assert "NaN or infinite" in refused(upload("nan", scaled_demo_checkpoint(1.0, nan_in=first_weight)),
                                        ["body", "checkpoint"])
    assert "nan" not in [s["name"] for s in client.get("/supernets").json()]
    # Finite, but so large that the activations overflow: registered, and its export is a 422.
    assert upload("overflowing", scaled_demo_checkpoint(1e30)).status_code == 201
    arch = client.post("/exports", json={"supernet": "overflowing", "arch": {"ks": [3] * 16, "e": [3] * 16,
                                                                              "d": [2] * 4, "r": [28]}})
    assert "NaN or infinite" in refused(arch, ["body"])
    assert not list((root / "store.sqlite.data" / "exports").glob("overflowing-*"))


def test_a_burst_of_exports_waits_in_a_short_queue_and_the_rest_hear_429_at_once(
        client: httpx.Client) -> None:
    """Waiting exports held the worker threads every route shares: GET /devices took 57 s."""
    wide = {**SUPERNET, "name": "wide-mbv3", "options": {"n_classes": 10, "resolutions": [256]}}
    assert client.post("/supernets", json=wide).status_code == 201
    archs = [{"ks": [ks] * 20, "e": [e] * 20, "d": [4] * 5, "r": [256]} for ks in (3, 5, 7) for e in (3, 4, 6)]
    answers: list[tuple[int, float, str | None]] = []

    def export(arch: dict[str, Any]) -> None:
        start = time.monotonic()
        answer = client.post("/exports", json={"supernet": "wide-mbv3", "arch": arch}, timeout=120)
        answers.append((answer.status_code, time.monotonic() - start, answer.headers.get("retry-after")))

    threads = [threading.Thread(target=export, args=(arch,)) for arch in archs]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    start = time.monotonic()
    assert client.get("/devices").status_code == 200
    listing_s = time.monotonic() - start
    for thread in threads:
        thread.join()
    busy = [a for a in answers if a[0] == 429]
    assert len(busy) == len(archs) - 6 and all(seconds < 5 and after for _, seconds, after in busy), answers
    assert sorted(a[0] for a in answers if a[0] != 429) == [201] * 6
    assert listing_s < 5, listing_s


def test_identical_exports_at_once_wait_for_one_build_and_none_hears_429(client: httpx.Client, root: Path) -> None:
    """Each identical export built the same file and took one of the six export places: 6 of 12 heard 429."""
    wide = {**SUPERNET, "name": "twin-mbv3", "options": {"n_classes": 10, "resolutions": [256]}}
    assert client.post("/supernets", json=wide).status_code == 201
    arch = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": [256]}
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: client.post("/exports", json={"supernet": "twin-mbv3", "arch": arch},
                                                      timeout=300), range(12)))
    assert [a.status_code for a in answers] == [201] * 12, [a.text for a in answers if a.status_code != 201]
    assert len({a.json()["id"] for a in answers}) == 1
    exports = root / "store.sqlite.data" / "exports"
    assert [p.name for p in exports.glob("twin-mbv3-*.onnx")] == [f"{answers[0].json()['id']}.onnx"]


def test_hostile_dataset_files_are_refused_as_the_dataset_and_the_service_stays_responsive(
        client: httpx.Client, data_root: Path, server: Server) -> None:
    """A 9 KB .pt of shared nested lists froze the service (/health included); others answered 500."""
    import torch
    from PIL import Image

    nested: list = [0] * 1000
    for _ in range(3):
        nested = [nested] * 1000
    torch.save({"x": nested, "y": [0]}, data_root / "nested.pt")
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    torch.save({"x": images, "y": torch.arange(8)}, data_root / "bf16.pt")
    np.savez(data_root / "label.npz", x=np.zeros((8, 32, 32, 3), np.uint8), y=np.array([0] * 7 + [2**40]))
    np.savez(data_root / "constant.npz", x=np.zeros((8, 32, 32, 3), np.uint8), y=np.arange(8))
    with zipfile.ZipFile(data_root / "not-npy.npz", "w") as archive:  # numpy hands such members over as bytes
        archive.writestr("x.npy", b"not npy")
        archive.writestr("y.npy", b"xx")
    np.savez(data_root / "nan.npz", x=np.full((8, 32, 32, 3), np.nan, np.float32), y=np.arange(8))
    pixels = np.random.default_rng(0)  # one pixel per image: batch norms recalibrated on them blow up
    np.savez(data_root / "one-pixel.npz", x=pixels.integers(0, 256, (20, 1, 1, 3), dtype=np.uint8),
             y=pixels.integers(0, 10, 20))
    (data_root / "thin" / "a").mkdir(parents=True)
    Image.new("RGB", (1, 200_000)).save(data_root / "thin" / "a" / "1.png")
    _png(data_root / "thin" / "b" / "1.png", 5)

    assert client.post("/supernets", json=SUPERNET).status_code == 201
    arch = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [32]}
    largest = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": [32]}
    for name, says, chosen in [("nested.pt", "'x' must be a tensor", arch), ("label.npz", "labels must lie in", arch),
                               ("constant.npz", "hold one value per channel", arch),
                               ("thin", "becomes 37x7400000 when resized for 32 px", arch),
                               ("not-npy.npz", "its member x is not a .npy array", arch),  # a 500 before
                               ("nan.npz", "x holds NaN or infinite pixels", arch)]:  # a job on it succeeded
        started = time.monotonic()
        export = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": chosen, "dataset": name})
        assert says in refused(export, ["body", "dataset"]), name
        assert time.monotonic() - started < 30
        assert client.get("/health", timeout=5).status_code == 200
    # Batch norms recalibrated on one-pixel images: with the untrained weights of this supernet the export
    # check fails or passes by chance (both seen; a trained checkpoint passes); failing, it was a 500.
    export = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": largest, "dataset": "one-pixel.npz"})
    assert export.status_code in (201, 422), export.text
    if export.status_code == 422:
        assert "cannot be exported faithfully on this dataset" in refused(export, ["body", "dataset"])
    made = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": arch, "dataset": "bf16.pt"})
    assert made.status_code == 201, made.text


@pytest.mark.parametrize("body, says", [
    (b"[" * 200_000, "nested too deeply"),
    (b'{"supernet": "tiny-mbv3", "seed": ' + b"9" * 5000 + b"}", "a number with too many digits"),
    (b'{"supernet": "\xff\xfe"}', "not UTF-8"),
    (b'{"supernet": "tiny-mbv3", "devices": ["cpu-1t"], "supernet": "other"}', "the key 'supernet' appears twice"),
    (b'{"supernet": "x", "limits": [{"metric": "accuracy", "metric": "latency"}]}', "the key 'metric' appears twice"),
    (b'{"supernet": ', "the body is not JSON: Expecting value at character 13"),
    (b"hello", "the body is not JSON: Expecting value at character 0"),
    (b'{"supernet": "x"} xx', "the body is not JSON: Extra data at character 18"),
], ids=["deep", "long-number", "not-utf8", "repeated-key", "repeated-nested-key", "cut-short", "not-json",
        "trailing"])
def test_a_body_that_cannot_be_parsed_is_a_400_naming_the_body_and_why(client: httpx.Client, body: bytes,
                                                                       says: str) -> None:
    """They answered 'There was an error parsing the body'; a repeated key was taken, the last one winning;
    plain syntax errors were a 422 at an offset, unlike the rest."""
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"] and says in error["msg"], error
    assert client.get("/health").status_code == 200


def test_a_dataset_whose_walk_would_not_end_is_refused_naming_the_link(client: httpx.Client,
                                                                       data_root: Path) -> None:
    """A link back up inside a class folder: the service's count of the images would walk it forever."""
    assert client.post("/devices", json={"profile": fast_device("cpu-1t")}).status_code == 201
    assert client.post("/supernets", json=SUPERNET).status_code == 201
    _png(data_root / "loop" / "a" / "x.png", 1)
    _png(data_root / "loop" / "b" / "nested" / "y.png", 2)
    (data_root / "loop" / "b" / "nested" / "up").symlink_to(data_root / "loop" / "b", target_is_directory=True)
    jobs_before = client.get("/jobs").json()["jobs"]
    job = client.post("/jobs", json={"supernet": "tiny-mbv3", "devices": ["cpu-1t"], "dataset": "loop",
                                     "n_profile": 4})
    message = refused(job, ["body", "dataset"])
    assert "b/nested/up links back to a folder it is inside" in message and str(data_root) not in message, message
    assert client.get("/jobs").json()["jobs"] == jobs_before, "nothing was queued"
