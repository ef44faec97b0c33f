"""A registration's weights are the ones its jobs and exports use, whatever is uploaded or written later.

A real ``hwsearch serve`` on 127.0.0.1 and the demo supernet's checkpoint
(3.4 MiB), plus a copy with every weight shifted: two sets of weights whose
exports give different logits.  Before pinning, an upload was kept at
``checkpoints/<name>.pt`` and replaced in place, so a second upload under a
name changed what earlier jobs' fronts exported, and the export cache, keyed
by name and arch, kept serving the first upload's file for the second.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch

from hwsearch.jobs import SupernetRef, build_supernet
from hwsearch.store import SQLiteStore
from tests._server import Server

DEMO = "demo_mbv3_mnist"
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "hwsearch" / "demo" / "demo_mbv3_mnist.pt"


def shifted_weights() -> bytes:
    """The demo checkpoint with every floating-point tensor scaled by 0.9: other weights, same shapes."""
    return torch_scaled(0.9)


def torch_scaled(scale: float) -> bytes:
    """The demo checkpoint with every floating-point tensor times ``scale``, as ``torch.save`` bytes."""
    state = torch.load(DEMO_CHECKPOINT, weights_only=True, map_location="cpu")
    state = state.get("state_dict", state)
    shifted = {k: v * scale if v.is_floating_point() else v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(shifted, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def arch() -> dict[str, Any]:
    return build_supernet(SupernetRef(name=DEMO, registry=DEMO)).space.largest().to_dict()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "store.sqlite").start()
    yield srv
    srv.stop()


def upload(client: httpx.Client, name: str, weights: bytes) -> dict[str, Any]:
    answer = client.post("/supernets/upload", data={"name": name, "registry": DEMO},
                         files={"checkpoint": ("w.pt", weights)})
    assert answer.status_code == 201, answer.text
    return answer.json()


def exported_logits(client: httpx.Client, name: str, arch: dict[str, Any]) -> tuple[str, np.ndarray]:
    """The export's id and its logits on a fixed input, run in onnxruntime from the downloaded file."""
    made = client.post("/exports", json={"supernet": name, "arch": arch})
    assert made.status_code == 201, made.text
    info = made.json()
    session = ort.InferenceSession(client.get(httpx.URL(info["download_url"]).path).content,
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(info["input_shape"]).astype(np.float32)
    return info["id"], session.run(None, {session.get_inputs()[0].name: x})[0]


def test_uploading_other_weights_under_a_name_never_serves_the_old_export(
        server: Server, arch: dict[str, Any]) -> None:
    other = shifted_weights()
    with server.client() as client:
        upload(client, "net", DEMO_CHECKPOINT.read_bytes())
        first_id, first = exported_logits(client, "net", arch)
        upload(client, "net", other)
        second_id, second = exported_logits(client, "net", arch)
        upload(client, "reference", other)
        _, reference = exported_logits(client, "reference", arch)
    assert second_id != first_id
    assert not np.allclose(first, second, atol=1e-3)  # the weights really differ ...
    np.testing.assert_allclose(second, reference, atol=1e-5)  # ... and the export has the new ones


def test_a_checkpoint_a_job_names_is_kept_when_its_name_is_uploaded_again(server: Server) -> None:
    other = shifted_weights()
    kept = Path(f"{server.store}.data") / "checkpoints"
    with server.client() as client:
        first = upload(client, "net", DEMO_CHECKPOINT.read_bytes())
        assert Path(first["checkpoint"]).parent == kept and len(first["checkpoint_sha256"]) == 64
        # A job that used these weights (written straight into the store: running one takes minutes).
        store = SQLiteStore(server.store)
        job_id = store.create_job({"kind": "search", "supernet": {
            "name": "net", "registry": DEMO, "checkpoint": first["checkpoint"], "options": {}}})
        store.update_job(job_id, state="succeeded", result={"fronts": {}})
        second = upload(client, "net", other)
        assert Path(first["checkpoint"]).is_file() and Path(second["checkpoint"]).is_file()
        third = upload(client, "net", DEMO_CHECKPOINT.read_bytes())  # the first bytes again: the same file
        assert third["checkpoint"] == first["checkpoint"]
        assert not Path(second["checkpoint"]).exists()  # nothing names the second any more: its room is free
        assert sorted(p.name for p in kept.iterdir()) == [Path(first["checkpoint"]).name]

        # Deleting the last job that names an upload frees its room too.
        fourth = upload(client, "net", other)
        assert Path(first["checkpoint"]).is_file()  # the job still names it
        assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert sorted(p.name for p in kept.iterdir()) == [Path(fourth["checkpoint"]).name]


def test_uploads_racing_under_one_name_leave_only_the_registered_checkpoint(server: Server) -> None:
    """Each upload reads which file it replaces only once it holds the checkpoint room.

    Before, all three read the first upload's file as the one they replaced
    while the first of them was still building; the two that lost the race
    then left their own predecessor's file behind, holding room nothing named.
    """
    kept = Path(f"{server.store}.data") / "checkpoints"
    base = DEMO_CHECKPOINT.read_bytes()
    with server.client() as client:
        upload(client, "net", base)
    variants = [shifted_weights()] + [torch_scaled(scale) for scale in (0.8, 0.7)]

    def send(weights: bytes) -> int:
        with server.client() as client:
            return client.post("/supernets/upload", data={"name": "net", "registry": DEMO},
                               files={"checkpoint": ("w.pt", weights)}).status_code

    with ThreadPoolExecutor(len(variants)) as pool:
        assert list(pool.map(send, variants)) == [201] * len(variants)
    with server.client() as client:
        registered = next(s for s in client.get("/supernets").json() if s["name"] == "net")
    assert sorted(p.name for p in kept.iterdir()) == [Path(registered["checkpoint"]).name]


def test_deleting_a_job_leaves_an_earlier_versions_named_upload_for_the_operator(server: Server) -> None:
    """Only files kept by digest are the service's to remove; a ``<name>.pt`` of an earlier version is the
    operator's, whose registration start-up may have set aside (a DELETE once removed it)."""
    legacy = Path(f"{server.store}.data") / "checkpoints" / "legacy.pt"
    legacy.write_bytes(DEMO_CHECKPOINT.read_bytes())
    store = SQLiteStore(server.store)
    job_id = store.create_job({"kind": "search", "supernet": {
        "name": "legacy", "registry": DEMO, "checkpoint": str(legacy), "options": {}}})
    store.update_job(job_id, state="succeeded", result={"fronts": {}})
    with server.client() as client:
        assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert legacy.is_file()


def test_a_data_root_checkpoint_changed_after_registration_is_refused(
        server: Server, arch: dict[str, Any]) -> None:
    named = server.store.parent / "weights.pt"
    named.write_bytes(DEMO_CHECKPOINT.read_bytes())
    with server.client() as client:
        created = client.post("/supernets", json={"name": "named", "registry": DEMO, "checkpoint": "weights.pt"})
        assert created.status_code == 201, created.text
        exported_logits(client, "named", arch)
        named.write_bytes(shifted_weights())
        refused = client.post("/exports", json={"supernet": "named", "arch": arch, "batch": 2})
    assert refused.status_code == 409, refused.text
    assert "supernet 'named': its checkpoint file changed since it was registered" in refused.json()["detail"]


@pytest.mark.parametrize("damage", ["a folder", "truncated"])
def test_a_registered_checkpoint_that_no_longer_loads_is_a_409_naming_the_supernet(
        server: Server, arch: dict[str, Any], damage: str) -> None:
    """Y17: replaced by a folder or cut short after registration, it made ``POST /jobs`` and ``POST /profiles``
    500s (``POST /exports`` answered 409 for the same state)."""
    named = server.store.parent / "weights.pt"
    named.write_bytes(DEMO_CHECKPOINT.read_bytes())
    rng = np.random.default_rng(0)
    np.savez(server.store.parent / "val.npz", x=rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
             y=rng.integers(0, 10, 16))
    with server.client() as client:
        created = client.post("/supernets", json={"name": "named", "registry": DEMO, "checkpoint": "weights.pt"})
        assert created.status_code == 201, created.text
        device = client.post("/devices", json={"profile": {"name": "cpu1", "intra_op_threads": 1}})
        assert device.status_code == 201, device.text
        named.unlink()
        if damage == "a folder":
            named.mkdir()
        else:
            named.write_bytes(DEMO_CHECKPOINT.read_bytes()[:1000])
        answers = {
            "jobs": client.post("/jobs", json={"supernet": "named", "devices": ["cpu1"], "dataset": "val.npz",
                                               "n_profile": 4}),
            "profiles": client.post("/profiles", json={"supernet": "named", "arch": arch, "on": "cpu1"}),
            "exports": client.post("/exports", json={"supernet": "named", "arch": arch}),
        }
        listed = client.get("/jobs").json()["jobs"]
    for route, answer in answers.items():
        assert answer.status_code == 409, (route, answer.text)
        detail = answer.json()["detail"]
        assert "supernet 'named': its checkpoint cannot be loaded now" in detail, (route, detail)
    assert listed == []  # nothing was stored for the refused submissions


def test_a_kept_upload_nothing_names_is_removed_at_start_up(tmp_path: Path) -> None:
    """What a crash between keeping an upload and registering it leaves is not kept for ever."""
    checkpoints = tmp_path / "store.sqlite.data" / "checkpoints"
    checkpoints.mkdir(parents=True)
    orphan = checkpoints / f"{'ab' * 32}.pt"
    orphan.write_bytes(DEMO_CHECKPOINT.read_bytes())
    earlier = checkpoints / "legacy.pt"  # an earlier version's upload: the operator's to remove
    earlier.write_bytes(b"kept")
    srv = Server(tmp_path / "store.sqlite").start()
    try:
        assert not orphan.exists() and earlier.exists()
    finally:
        srv.stop()


def test_a_pinned_reference_refuses_other_bytes(tmp_path: Path) -> None:
    from hwsearch.jobs import CheckpointChanged

    path = tmp_path / "w.pt"
    path.write_bytes(DEMO_CHECKPOINT.read_bytes())
    ref = SupernetRef(name="w", registry=DEMO, checkpoint=str(path)).pinned()
    assert SupernetRef.from_dict(ref.to_dict()) == ref
    assert build_supernet(ref).space.name
    path.write_bytes(shifted_weights())
    with pytest.raises(CheckpointChanged, match="changed since it was registered"):
        build_supernet(ref)
    assert build_supernet(SupernetRef(name="w", registry=DEMO, checkpoint=str(path))).space.name


def test_the_pin_is_checked_on_the_bytes_loaded_while_the_file_is_being_replaced(tmp_path: Path) -> None:
    """The pin hashed the path and the load opened it again: 3 of 57 builds loaded other weights under it.

    A thread swaps two checkpoints in place of one path every millisecond; every build either loads the
    pinned weights or refuses, and every digest read names the bytes read.
    """
    import hashlib
    import itertools
    import os
    import threading

    from hwsearch.jobs import CheckpointChanged
    from hwsearch.supernets.base import read_checkpoint

    pinned, other = DEMO_CHECKPOINT.read_bytes(), shifted_weights()
    digests = {hashlib.sha256(pinned).hexdigest(): 1.0, hashlib.sha256(other).hexdigest(): 0.9}
    path = tmp_path / "w.pt"
    path.write_bytes(pinned)
    ref = SupernetRef(name="w", registry=DEMO, checkpoint=str(path)).pinned()
    reference = build_supernet(ref).module.state_dict()
    name = next(k for k, v in reference.items() if v.is_floating_point() and v.abs().sum() > 0)
    stop = threading.Event()

    def swap() -> None:
        for turn in itertools.count():
            if stop.is_set():
                return
            temp = tmp_path / f"w.{turn % 2}.tmp"
            temp.write_bytes(other if turn % 2 else pinned)
            os.replace(temp, path)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    outcomes = {"pinned": 0, "refused": 0}
    try:
        for _ in range(40):
            checkpoint = read_checkpoint(path, digest=True)
            torch.testing.assert_close(checkpoint.state[name], reference[name] * digests[checkpoint.sha256])
            try:
                net = build_supernet(ref)
            except CheckpointChanged:
                outcomes["refused"] += 1
                continue
            torch.testing.assert_close(net.module.state_dict()[name], reference[name])
            outcomes["pinned"] += 1
    finally:
        stop.set()
        swapper.join()
    assert outcomes["pinned"] and outcomes["refused"], outcomes  # the swaps did land between builds


def test_an_export_waiting_for_a_slot_keeps_the_checkpoint_an_upload_replaces(tmp_path: Path,
                                                                             arch: dict[str, Any]) -> None:
    """The upload removed the old file while the export waited, and the export answered 409 "no longer
    readable; register it again" for a name that was registered all along (128 of 278 under load).

    The service's own functions on a real catalog and store: both export slots are held (as two other
    exports would hold them) while one export of the name waits and the name is uploaded again.
    """
    import threading
    import time

    from hwsearch.api import service
    from hwsearch.api.catalog import Catalog

    catalog, store = Catalog(tmp_path / "data"), SQLiteStore(tmp_path / "store.sqlite")

    def upload_weights(weights: bytes) -> dict[str, Any]:
        return service.upload_supernet(catalog=catalog, store=store, name="net", registry=DEMO, options={},
                                       content=io.BytesIO(weights), max_unpacked_bytes=1 << 30)

    first = Path(upload_weights(DEMO_CHECKPOINT.read_bytes())["checkpoint"])
    outcome: list[Any] = []

    def export() -> None:
        try:
            outcome.append(service.export_subnet(store=store, catalog=catalog, supernet="net", arch=arch,
                                                 job_id=None, device=None, point=None))
        except Exception as error:  # noqa: BLE001 - the outcome under test
            outcome.append(error)

    for _ in range(2):
        assert service._EXPORT_SLOTS.acquire(timeout=60)
    waiting = threading.Thread(target=export)
    try:
        waiting.start()
        deadline = time.monotonic() + 60
        while not catalog.checkpoints_read():  # it reads the registration, then waits for a slot
            assert time.monotonic() < deadline and waiting.is_alive(), outcome
            time.sleep(0.05)
        time.sleep(0.5)
        second = Path(upload_weights(shifted_weights())["checkpoint"])
        assert first.exists(), "the file the waiting export reads was removed"
    finally:
        service._EXPORT_SLOTS.release()
        service._EXPORT_SLOTS.release()
    waiting.join(timeout=120)
    [made] = outcome
    assert isinstance(made, dict) and made["supernet"] == "net", made
    assert not first.exists() and second.exists()  # nothing names the old weights once the export is done


def test_a_checkpoint_rewritten_in_place_while_it_is_read_loads_whole_or_is_refused(tmp_path: Path) -> None:
    """One handle guards a replaced path, not a file rewritten in place (``cp``, ``open(path, "wb")``).

    Pinned loads hash and load the same bytes in memory; plain loads refuse a file whose size or time
    moved while it was read.  No load returns one version's weights under the other's digest.
    """
    import hashlib
    import itertools
    import threading

    from hwsearch.supernets import CheckpointError
    from hwsearch.supernets.base import read_checkpoint

    versions = [DEMO_CHECKPOINT.read_bytes(), shifted_weights()]
    states = [read_checkpoint(DEMO_CHECKPOINT).state, None]
    path = tmp_path / "w.pt"
    path.write_bytes(versions[1])
    states[1] = read_checkpoint(path).state
    name = next(k for k, v in states[0].items() if v.is_floating_point() and v.abs().sum() > 0)
    by_digest = {hashlib.sha256(v).hexdigest(): i for i, v in enumerate(versions)}
    stop = threading.Event()

    def rewrite() -> None:
        for turn in itertools.count():
            if stop.is_set():
                return
            with open(path, "wb") as file:  # the same inode, truncated and written again
                file.write(versions[turn % 2])

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    outcome = {"whole": 0, "refused": 0}
    try:
        for turn in range(60):
            try:
                checkpoint = read_checkpoint(path, digest=bool(turn % 2))
            except CheckpointError:
                outcome["refused"] += 1
                continue
            if checkpoint.sha256 in by_digest:  # else a torn read that loaded: its digest pins nothing
                torch.testing.assert_close(checkpoint.state[name], states[by_digest[checkpoint.sha256]][name])
            outcome["whole"] += 1
    finally:
        stop.set()
        writer.join()
    assert outcome["refused"], outcome  # the rewrites did land while files were read


def test_an_export_does_not_wait_for_an_upload_of_any_name(tmp_path: Path, arch: dict[str, Any]) -> None:
    """Reading the registration under the uploads' lock held every export, cached ones too, for as long as
    an upload copied and built (and outside the bound on waiting exports)."""
    from hwsearch.api import service
    from hwsearch.api.catalog import Catalog

    catalog, store = Catalog(tmp_path / "data"), SQLiteStore(tmp_path / "store.sqlite")
    service.upload_supernet(catalog=catalog, store=store, name="net", registry=DEMO, options={},
                            content=io.BytesIO(DEMO_CHECKPOINT.read_bytes()), max_unpacked_bytes=1 << 30)
    request = {"store": store, "catalog": catalog, "supernet": "net", "arch": arch, "job_id": None,
               "device": None, "point": None}
    first = service.export_subnet(**request)
    done = threading.Event()
    with catalog.checkpoint_room():  # an upload is copying and building
        threading.Thread(target=lambda: done.set() if service.export_subnet(**request) == first else None,
                         daemon=True).start()
        assert done.wait(30), "the cached export waited for the upload"


class _HeldUpload(io.BytesIO):
    """An upload's body whose first read waits until the test lets it go: an upload stuck in its copy."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reading, self.go_on = threading.Event(), threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        self.reading.set()
        assert self.go_on.wait(60), "the test never let the upload go on"
        return super().read(size)


def _upload_in_background(catalog: Any, store: Any, body: _HeldUpload) -> tuple[Any, dict[str, Any]]:
    """Start an upload of ``body`` as "net" in a thread; the thread and what it returned or raised."""
    from hwsearch.api import service

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["described"] = service.upload_supernet(catalog=catalog, store=store, name="net", registry=DEMO,
                                                           options={}, content=body, max_unpacked_bytes=1 << 30)
        except Exception as error:  # reported by the test's assertions
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert body.reading.wait(60), "the upload never started copying"
    return thread, outcome


def test_submissions_registrations_and_deletes_do_not_wait_for_an_uploads_copy(tmp_path: Path) -> None:
    """An upload held the checkpoint lock through its copy and build, so every job submission, profile
    submission, registration and delete queued behind it (2.9 s behind six 25 MB uploads)."""
    from hwsearch.api import service
    from hwsearch.api.catalog import Catalog
    from hwsearch.api.files import DataRoots

    catalog, store = Catalog(tmp_path / "data"), SQLiteStore(tmp_path / "store.sqlite")
    roots = DataRoots([tmp_path / "root"], max_file_bytes=1 << 30)
    (tmp_path / "root" / "w.pt").write_bytes(DEMO_CHECKPOINT.read_bytes())
    body = _HeldUpload(shifted_weights())
    thread, outcome = _upload_in_background(catalog, store, body)
    try:
        named = threading.Event()

        def submission() -> None:  # what submit_search, submit_profile and delete_job hold
            with catalog.checkpoints_named():
                named.set()

        threading.Thread(target=submission, daemon=True).start()
        assert named.wait(30), "a submission waited for the upload's copy"
        registered = service.register_supernet(catalog=catalog, store=store, roots=roots, name="other",
                                               registry=DEMO, checkpoint="w.pt", options={})
        assert registered["space_name"] and catalog.get_supernet("other") is not None
    finally:
        body.go_on.set()
        thread.join(120)
    assert "error" not in outcome, outcome
    kept = Path(outcome["described"]["checkpoint"])
    assert catalog.get_supernet("net").checkpoint == str(kept) and kept.is_file()
    assert not list(catalog.checkpoints.glob("*.part"))


def test_an_upload_keeps_a_checkpoint_a_job_named_while_it_copied(tmp_path: Path) -> None:
    """What an upload frees is decided when it is kept, not when it began: a job submitted during the copy
    names the old file, which must stay; and the room is read again then."""
    from hwsearch.api import service
    from hwsearch.api.catalog import Catalog

    catalog, store = Catalog(tmp_path / "data"), SQLiteStore(tmp_path / "store.sqlite")
    first = service.upload_supernet(catalog=catalog, store=store, name="net", registry=DEMO, options={},
                                    content=io.BytesIO(DEMO_CHECKPOINT.read_bytes()), max_unpacked_bytes=1 << 30)
    body = _HeldUpload(shifted_weights())
    thread, outcome = _upload_in_background(catalog, store, body)
    try:
        with catalog.checkpoints_named():  # as submit_search does: read the registration, write the record
            named = catalog.get_supernet("net").checkpoint
            store.create_job({"kind": "search", "supernet": {"name": "net", "registry": DEMO,
                                                             "checkpoint": named, "options": {}}})
    finally:
        body.go_on.set()
        thread.join(120)
    assert "error" not in outcome, outcome
    assert named == first["checkpoint"]
    assert Path(first["checkpoint"]).is_file()  # the job names it
    assert Path(outcome["described"]["checkpoint"]).is_file()
    assert catalog.get_supernet("net").checkpoint == outcome["described"]["checkpoint"] != first["checkpoint"]


def test_a_pinned_load_does_not_hold_the_files_bytes_in_memory(tmp_path: Path) -> None:
    """Read into memory to be hashed and loaded, a pinned checkpoint's bytes were held beside its tensors:
    +489 MiB of peak RSS for a 244 MiB checkpoint copied into a model, against +245 MiB now (the mapped
    copy's pages, which the kernel can drop).  Here the load alone, in a fresh interpreter."""
    import subprocess
    import sys

    path = tmp_path / "w.pt"
    torch.save({f"w{i}": torch.randn(2_000_000) for i in range(8)}, path)  # 61 MiB of tensors
    probe = ("import hashlib, sys\n"
             "from hwsearch.supernets.base import read_checkpoint\n"
             "def kib(field):\n"
             "    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(field))\n"
             "open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) starts again from now\n"
             "before = kib('VmRSS:')\n"
             "loaded = read_checkpoint(sys.argv[1], digest=True)\n"
             "print((kib('VmHWM:') - before) // 1024,\n"
             "      loaded.sha256 == hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest(),\n"
             "      sum(float(t.sum()) for t in loaded.state.values()) != 0)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    grew_mib, digest_matches, read = result.stdout.split()
    assert digest_matches == "True" and read == "True"
    assert int(grew_mib) < 20, f"peak RSS grew by {grew_mib} MiB loading 61 MiB of tensors"


def test_supernets_are_built_a_few_at_a_time_and_shared_by_content(tmp_path: Path) -> None:
    """Built before the checkpoint lock, eight registrations at once built eight supernets side by side
    (each up to --max-supernet-mb); four names of one supernet were four copies."""
    from hwsearch.api.built import BuiltSupernets

    at_once = {"now": 0, "most": 0}
    lock = threading.Lock()
    release = threading.Event()

    def build(ref: SupernetRef) -> Any:
        with lock:
            at_once["now"] += 1
            at_once["most"] = max(at_once["most"], at_once["now"])
        release.wait(30)
        with lock:
            at_once["now"] -= 1
        return build_supernet(ref)

    built = BuiltSupernets(build, keep=4, at_once=2)
    refs = [SupernetRef(name=f"n{i}", registry=DEMO, options={"n_classes": 10 + i}) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(built.get, ref, 0) for ref in refs]
        threading.Timer(1.0, release.set).start()
        nets = [f.result(timeout=120) for f in futures]
    assert at_once["most"] == 2
    assert [n.space.layout.n_classes for n in nets] == [10 + i for i in range(8)]
    same = SupernetRef(name="other-name", registry=DEMO, options={"n_classes": 17})
    assert built.get(same, 0) is nets[7]  # kept by content, whatever the name


def test_a_removal_put_off_for_a_reader_spares_the_file_registered_again_meanwhile(
        tmp_path: Path, arch: dict[str, Any]) -> None:
    """x's old upload was to be removed once an export stopped reading it; y uploaded the same bytes, kept at
    the same path, and the put-off removal then deleted y's checkpoint: y's exports answered 409."""
    from hwsearch.api import service
    from hwsearch.api.catalog import Catalog

    catalog, store = Catalog(tmp_path / "data"), SQLiteStore(tmp_path / "store.sqlite")

    def upload(name: str, weights: bytes) -> dict[str, Any]:
        return service.upload_supernet(catalog=catalog, store=store, name=name, registry=DEMO, options={},
                                       content=io.BytesIO(weights), max_unpacked_bytes=1 << 30)

    first = upload("x", DEMO_CHECKPOINT.read_bytes())
    reading = catalog.reading_checkpoint(first["checkpoint"])  # an export of x under way
    upload("x", shifted_weights())  # frees x's old file, once the export is done with it
    again = upload("y", DEMO_CHECKPOINT.read_bytes())
    assert again["checkpoint"] == first["checkpoint"]
    catalog.done_reading(reading)
    assert Path(again["checkpoint"]).is_file()
    made = service.export_subnet(store=store, catalog=catalog, supernet="y", arch=arch, job_id=None, device=None,
                                 point=None)
    assert made["supernet"] == "y"


def test_deleting_a_job_that_names_an_upload_by_a_relative_path_frees_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written while the store path was relative name uploads relative to the service's folder;
    deleting the last such job compared that path as given, found the absolute file 'unused' under another
    name, and left it holding room until the next start."""
    import os

    from hwsearch.api import service
    from hwsearch.api.catalog import Catalog
    from hwsearch.dispatch import JobDispatcher

    monkeypatch.chdir(tmp_path)
    catalog, store = Catalog("data"), SQLiteStore("store.sqlite")

    def upload(weights: bytes) -> Path:
        return Path(service.upload_supernet(catalog=catalog, store=store, name="net", registry=DEMO, options={},
                                            content=io.BytesIO(weights), max_unpacked_bytes=1 << 30)["checkpoint"])

    first = upload(DEMO_CHECKPOINT.read_bytes())
    job_id = store.create_job({"kind": "search", "supernet": {
        "name": "net", "registry": DEMO, "checkpoint": os.path.relpath(first), "options": {}}})
    store.update_job(job_id, state="succeeded", result={"fronts": {}})
    upload(shifted_weights())
    assert first.is_file()  # the job names it
    service.delete_job(dispatcher=JobDispatcher(store, agents={}), catalog=catalog, job_id=job_id)
    assert not first.exists()
