"""Small real jobs for the service, jobs and report tests.

The supernet is OFA MobileNetV3 w1.0 with random weights, narrowed to 32 px
inputs and 10 classes, so a subnet exports and profiles in seconds.  The
validation data are random images with random labels: accuracies are real
measurements of these subnets on these data (about chance level), which is
all the plumbing under test needs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from devices.calibration import device_reference_ms
from devices.local import host_fingerprint, runtime_version
from devices.profile import DeviceProfile
from hwsearch.jobs import JobSpec, SupernetRef
from hwsearch.store import SQLiteStore

SUPERNET = {"name": "tiny-mbv3", "registry": "ofa_mbv3_d234_e346_k357_w1.0",
            "options": {"n_classes": 10, "resolutions": [32]}}


def remember_a_faster_session(profile: DeviceProfile, reference_ms: float) -> None:
    """Record, as an earlier session on this host would have, a session whose reference took ``reference_ms``.

    Every later session of the device on this host is then judged against it
    as the host's fast state (:mod:`devices.calibration`).
    """
    device = profile.hash_with_reference(hashlib.sha256(profile.reference_bytes()).hexdigest())
    host = profile.measured_host(host_fingerprint(), runtime_version(profile.runtime))
    device_reference_ms(profile, device, host, reference_ms)


def fast_device(name: str, threads: int = 1) -> dict[str, Any]:
    """A device profile with a short measurement protocol (tests need plumbing, not precision)."""
    return {"name": name, "intra_op_threads": threads, "warmup": {"runs": 2, "seconds": 0.0},
            "protocol": {"min_rounds": 8, "max_rounds": 10, "max_seconds": 5.0, "ci_target": 0.1,
                         "reference_ceiling_percentile": 100}}


def random_dataset(path: Path, n: int = 96, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             y=rng.integers(0, 10, n))
    return path


def tiny_spec(dataset: Path, devices: list[dict[str, Any]], *, n_profile: int = 4,
              budget: int = 0, seed: int = 0) -> JobSpec:
    return JobSpec(supernet=SupernetRef(**SUPERNET), devices=tuple(devices), dataset=str(dataset),
                   n_profile=n_profile, budget=budget, seed=seed)


def demo_devices_with_shorter_sessions(folder: Path) -> tuple[Path, ...]:
    """The demo's device profiles with a shorter measurement protocol, written to ``folder``.

    The protocol is not part of a device's identity, so these are the
    demo's devices and file their rows under the same keys.  The end-to-end
    demo tests check the flow, not the figures: with the shipped protocol
    (up to 150 rounds, a 2% CI target) the MNIST demo's took 184 s on this
    host, with this one 115 s.
    """
    from hwsearch.demo.run import default_devices

    paths = []
    for shipped in default_devices():
        data = DeviceProfile.load(shipped).to_dict()
        data.update(warmup={"runs": 3, "seconds": 0.1},
                    protocol=data["protocol"] | {"min_rounds": 10, "max_rounds": 40, "max_seconds": 20.0,
                                                 "ci_target": 0.05})
        paths.append(folder / f"{Path(shipped).stem}.json")
        paths[-1].write_text(json.dumps(data))
    return tuple(paths)


class FinishedJob(NamedTuple):
    """A real tiny job that ran to the end: its SQLite store file, its id and its spec."""

    store_path: Path
    job_id: str
    spec: JobSpec


def run_tiny_job(folder: Path) -> FinishedJob:
    """One real job (4 subnets profiled, 2 more by refinement, on one 1-thread device) in ``folder``."""
    from hwsearch.jobs import run_job

    store = SQLiteStore(folder / "jobs.sqlite")
    spec = tiny_spec(random_dataset(folder / "val.npz"), [fast_device("cpu-1t")], n_profile=4, budget=2)
    job_id = store.create_job(spec.to_dict())
    run_job(spec, store=store, job_id=job_id)
    return FinishedJob(store.path, job_id, spec)


def own_copy(job: FinishedJob, folder: Path) -> SQLiteStore:
    """A store of the caller's own holding everything ``job``'s store holds, so the caller may add to it.

    SQLite's backup API copies the committed pages, WAL included.
    """
    path = folder / "jobs.sqlite"
    with sqlite3.connect(job.store_path) as source, sqlite3.connect(path) as target:
        source.backup(target)
    return SQLiteStore(path)
