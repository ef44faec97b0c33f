"""Bounded soak of a real ``hwsearch serve`` on 127.0.0.1: valid requests, hostile ones, small jobs.

Several client threads send, for ``--seconds``, a mix of reads, registrations,
bad inputs (paths outside the data root, loose types, agent URLs, NaN, huge
bodies) and small search jobs, while one thread polls ``GET /jobs/ID``.  It
prints requests by status class (goal: no 5xx), the p50/p99 latency of the
job polls while jobs run, the server's RSS at start and end, and rows lost
(accepted jobs missing from the listing, or front points whose measurement
is not in the store; goal: none).  Traffic goes to 127.0.0.1 only, and every
loop stops at the deadline.

    python bench/service_load.py --seconds 180 --clients 4
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

TOKEN = "bench-token-of-16-chars"
SUPERNET = {"name": "tiny-mbv3", "registry": "ofa_mbv3_d234_e346_k357_w1.0",
            "options": {"n_classes": 10, "resolutions": [32]}}
DEVICE = {"name": "cpu-1t", "intra_op_threads": 1, "clock": "thread_cpu",
          "warmup": {"runs": 2, "seconds": 0.0},
          "protocol": {"min_rounds": 8, "max_rounds": 20, "max_seconds": 5.0, "ci_target": 0.05}}
JOB = {"supernet": "tiny-mbv3", "devices": ["cpu-1t"], "dataset": "val.npz", "n_profile": 4,
       "budget": 1}

HOSTILE: list[tuple[str, str, Any]] = [
    ("POST", "/supernets", {**SUPERNET, "name": "p", "checkpoint": "/etc/passwd"}),
    ("POST", "/supernets", {**SUPERNET, "name": "p", "checkpoint": "x" * 100_001}),
    ("POST", "/supernets", {**SUPERNET, "name": "p", "checkpoint": "notes.txt"}),
    ("POST", "/devices", {"profile": {"name": "e", "where": {"kind": "agent",
                                                             "url": "http://127.0.0.1:9",
                                                             "token_env": "HWSEARCH_TOKEN"}}}),
    ("POST", "/devices", {"profile": {"name": "e", "reference_model": "/dev/zero"}}),
    ("POST", "/devices", {"profile": {"name": "e", "warmup": {"seconds": 1e12}}}),
    ("POST", "/devices", {"profile": {"name": "e\n"}}),
    ("POST", "/jobs", {**JOB, "n_profile": "16"}),
    ("POST", "/jobs", {**JOB, "budget": True}),
    ("POST", "/jobs", {**JOB, "dataset": "/proc/self/environ"}),
    ("POST", "/exports", {"supernet": "tiny-mbv3", "arch": {"resolution": 32, "depths": {"a": 1}}}),
    ("POST", "/exports", {"supernet": "tiny-mbv3", "arch": {"resolution": 32, "depths": None}}),
    ("POST", "/exports", {"supernet": "tiny-mbv3",
                          "arch": {"resolution": 32, "depths": [2] * 5, "kernel": [[3]]}}),
    ("GET", "/jobs/../../etc/passwd", None),
    ("GET", "/exports/..%2F..%2Fetc%2Fpasswd", None),
]
RAW_HOSTILE = [
    ("/jobs", b'{"supernet": "tiny-mbv3", "devices": ["cpu-1t"], '
              b'"limits": [{"metric": "accuracy", "lower": NaN}]}'),
    ("/devices", b'{"profile": {"name": "x", "protocol": {"max_seconds": 1e999}}}'),
    ("/devices", b'{"profile": '),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident memory of the server process, and of it plus every process below it (Ray's too)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(proc.name)] = int(fields["PPid"])
        rss[int(proc.name)] = int(fields.get("VmRSS", "0 kB").split()[0])

    def below(candidate: int) -> bool:
        while candidate > 1:
            if candidate == pid:
                return True
            candidate = parents.get(candidate, 0)
        return False

    tree = sum(kib for p, kib in rss.items() if below(p))
    return rss.get(pid, 0) / 1024, tree / 1024


class Tally:
    """Thread-safe counters of status classes and job-poll latencies."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_class: collections.Counter[str] = collections.Counter()
        self.five_xx: list[str] = []
        self.poll_ms: list[float] = []
        self.accepted: list[str] = []

    def record(self, what: str, response: httpx.Response) -> None:
        with self.lock:
            self.by_class[f"{response.status_code // 100}xx"] += 1
            if response.status_code >= 500:
                self.five_xx.append(f"{what} -> {response.status_code} {response.text[:200]}")


def hostile_client(base: str, deadline: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=60) as client:
        while time.monotonic() < deadline:
            roll = rng.random()
            if roll < 0.35:
                method, path, body = rng.choice(HOSTILE)
                response = client.request(method, path, json=body)
                tally.record(f"{method} {path}", response)
            elif roll < 0.45:
                path, raw = rng.choice(RAW_HOSTILE)
                response = client.post(path, content=raw,
                                       headers={"content-type": "application/json"})
                tally.record(f"raw {path}", response)
            elif roll < 0.5:
                response = client.post("/devices", content=b"x" * 2_000_000,
                                       headers={"content-type": "application/json"})
                tally.record("oversize", response)
            elif roll < 0.55:
                response = client.post("/jobs", json=JOB)
                tally.record("POST /jobs", response)
                if response.status_code == 202:
                    with tally.lock:
                        tally.accepted.append(response.json()["id"])
            else:
                path = rng.choice(["/jobs", "/devices", "/supernets", "/limits", "/health",
                                   "/supernets/registry", "/data-roots"])
                tally.record(f"GET {path}", client.get(path))
            time.sleep(rng.uniform(0.02, 0.1))


def poller(base: str, deadline: float, tally: Tally) -> None:
    """Follow accepted jobs one after the other, polling each as a client waiting for it would."""
    following = 0
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=60) as client:
        while time.monotonic() < deadline:
            with tally.lock:
                job = tally.accepted[following] if following < len(tally.accepted) else None
            if job is None:
                time.sleep(0.2)
                continue
            started = time.perf_counter()
            response = client.get(f"/jobs/{job}")
            elapsed = (time.perf_counter() - started) * 1000
            tally.record("GET /jobs/ID", response)
            state = response.json().get("state") if response.status_code == 200 else None
            if state == "running":
                with tally.lock:
                    tally.poll_ms.append(elapsed)
            elif state not in ("queued", None):
                following += 1
            time.sleep(0.1)


def listed_jobs(client: httpx.Client) -> list[dict]:
    """The service's jobs (a soak accepts far fewer than a page of 1,000)."""
    return client.get("/jobs", params={"limit": 1000}).json()["jobs"]


def rows_lost(client: httpx.Client, store_path: Path, accepted: list[str]) -> list[str]:
    """Accepted jobs missing from the listing, or front points without a stored measurement."""
    from hwsearch.store import SQLiteStore

    store = SQLiteStore(store_path)
    listed = {job["id"]: job for job in listed_jobs(client)}
    lost = [f"job {job} not listed" for job in accepted if job not in listed]
    for job in accepted:
        if listed.get(job, {}).get("state") != "succeeded":
            continue
        result = store.get_job(job).result
        for device, info in result["devices"].items():
            rows = store.get_latencies(info["hash"], result["network_id"])
            for point in result["fronts"][device]["points"]:
                if point["arch_key"] not in rows:
                    lost.append(f"job {job} {device} {point['arch_key']}")
    return lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hwsearch-soak-"))
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(data / "val.npz", x=rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, 96))
    (data / "notes.txt").write_text("not a checkpoint\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HWSEARCH_TOKEN": TOKEN, "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "hwsearch.cli.main", "serve", "--store", str(root / "store.sqlite"),
         "--port", str(port), "--data-root", str(data), "--max-running-jobs", "1",
         "--max-queued-jobs", "3", "--max-n-profile", "8", "--max-budget", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=120) as client:
            for _ in range(300):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            assert client.post("/supernets", json=SUPERNET).status_code == 201
            assert client.post("/devices", json={"profile": DEVICE}).status_code == 201
            rss_start = rss_mib(server.pid)
            tally = Tally()
            deadline = time.monotonic() + args.seconds
            threads = [threading.Thread(target=hostile_client, args=(base, deadline, tally, i))
                       for i in range(args.clients)]
            threads.append(threading.Thread(target=poller, args=(base, deadline, tally)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rss_end = rss_mib(server.pid)
            finish = time.monotonic() + 600  # let the accepted jobs finish before counting
            while time.monotonic() < finish and any(
                    j["state"] in ("queued", "running") for j in listed_jobs(client)):
                time.sleep(1)
            lost = rows_lost(client, root / "store.sqlite", tally.accepted)
            states = collections.Counter(j["state"] for j in listed_jobs(client))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)

    polls = np.array(tally.poll_ms) if tally.poll_ms else np.array([np.nan])
    total = sum(tally.by_class.values())
    print(f"soak: {args.seconds:.0f} s, {args.clients} clients + 1 poller, {total} requests")
    print("requests by status class: " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(tally.by_class.items())))
    print(f"5xx: {len(tally.five_xx)}" + "".join(f"\n  {line}" for line in tally.five_xx[:10]))
    print(f"GET /jobs/ID while a job ran: n={len(tally.poll_ms)}, "
          f"p50 {np.percentile(polls, 50):.1f} ms, p99 {np.percentile(polls, 99):.1f} ms")
    print(f"server RSS: start {rss_start[0]:.0f} MiB, end {rss_end[0]:.0f} MiB; with every process "
          f"below it (Ray's raylet, GCS and workers): start {rss_start[1]:.0f} MiB, "
          f"end {rss_end[1]:.0f} MiB")
    print(f"jobs accepted {len(tally.accepted)}; final states {dict(states)}")
    print(f"rows lost: {len(lost)}" + "".join(f"\n  {line}" for line in lost[:10]))


if __name__ == "__main__":
    main()
