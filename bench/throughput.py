"""Time to a front at real scale: accuracy throughput, memory, profiling rate, agents in parallel.

On OFA-MobileNetV3 w1.0 (random weights, no download) at 224 px, prints:

1. ``eval``: accuracy-evaluation images per second of one CPU worker (torch
   on 1 thread) with the streamed folder loader, split into the loader alone
   and a whole subnet evaluation (BN recalibration + scoring); on a GPU too
   when torch sees one.
2. ``memory``: peak RSS of a fresh process evaluating one subnet on a folder
   of N generated JPEGs (500x375, like ImageNet's), for each N: the streamed
   loader (goal: flat in N) against the in-memory loader of before (its
   load and split alone, a lower bound of its evaluation's peak).  The peak
   (``VmHWM``) is reset once the supernet is built, so it is the data's and
   the evaluation's own, not the supernet constructor's transient.
3. ``profile``: subnets per minute profiling N subnets on the 1-thread local
   device (``examples/devices/local-1thread.yaml``), with this tree's
   pipeline and with the pipeline of git ``--before`` (default ``HEAD``,
   imported from its source; ``--before-timing interleaved`` also measures
   the way sessions did before hot timing) in the same run, in the order
   before, tree, tree, before so that a drift of the machine's speed cancels.  Host-lock waits (other people's sessions
   on this machine) are shown and subtracted.
4. ``agents``: wall time of a job's profiling stage with two agent devices
   against one agent device alone (goal: at most 1.2x); each agent is a real
   ``python -m devices.agent`` with its own measurement lock (a separate
   host).  Both agents share this machine's two cores, so it also times their
   sessions alone on files exported beforehand, one agent and then both at
   once: that ratio is what sharing the cores costs without any export.

This machine is shared and noisy: compare ratios within one run.

    python bench/throughput.py                       # everything
    python bench/throughput.py --only eval memory    # some parts
    python bench/throughput.py --sizes 500 3000 --profile-n 24 --agent-n 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # bench/predictors.py would shadow the predictors package

SUPERNET = "ofa_mbv3_d234_e346_k357_w1.0"
DEVICE = REPO / "examples/devices/local-1thread.yaml"
TOKEN = "throughput-bench"


def _net() -> Any:
    from hwsearch.supernets import create_supernet

    return create_supernet(SUPERNET)


def _mid_arch(space: Any, resolution: int) -> Any:
    """A middle-sized subnet: depth 3, kernel 5, expand 4 in every one of its 15 blocks."""
    return space.arch(resolution=resolution, depths=(3,) * 5, kernel=[5] * 15, expand=[4] * 15)


def write_jpegs(root: Path, n: int, *, classes: int = 10, seed: int = 0) -> Path:
    """``n`` 500x375 JPEGs (smooth colour fields plus noise) in ``classes`` folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 150, 375), np.linspace(0, 90, 500))
    for i in range(n):
        folder = root / f"c{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = ramp[..., None] * rng.uniform(0.3, 1.0, 3) + rng.integers(0, 40, (375, 500, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg",
                                                                        quality=90)
    return root


# --- 1. images per second -------------------------------------------------------------------

def bench_eval(workdir: Path, n_images: int) -> dict[str, Any]:
    import torch

    from hwsearch.accuracy_eval import EvalSettings, Placement, subnet_accuracy
    from hwsearch.data import batches
    from hwsearch.evaldata import DataPlan

    torch.set_num_threads(1)
    root = write_jpegs(workdir / f"eval-{n_images}", n_images)
    plan = DataPlan(str(root), n_calibration=n_images // 4)
    split = plan.open(size=224)
    start = time.perf_counter()
    for _ in batches(split.validation, 224, 64):
        pass
    loader = len(split.validation) / (time.perf_counter() - start)
    net = _net()
    out: dict[str, Any] = {"images": n_images, "loader_images_per_s_1thread": round(loader, 1)}
    warm = split.validation.take(np.arange(8))
    subnet_accuracy(net, net.space.smallest(224), warm, warm, EvalSettings())  # first-call costs
    for name, arch in (("smallest", net.space.smallest(224)), ("mid", _mid_arch(net.space, 224)),
                       ("largest", net.space.largest(224))):
        start = time.perf_counter()
        subnet_accuracy(net, arch, split.calibration, split.validation, EvalSettings())
        out[f"cpu_images_per_s_{name}"] = round(n_images / (time.perf_counter() - start), 1)
    if torch.cuda.is_available():
        placement = Placement(True, 4, 1.0, 256, 4)
        arch = _mid_arch(net.space, 224)
        subnet_accuracy(net, arch, split.calibration, split.validation, EvalSettings(),
                        device="cuda", placement=placement)  # warm-up
        start = time.perf_counter()
        subnet_accuracy(net, arch, split.calibration, split.validation, EvalSettings(),
                        device="cuda", placement=placement)
        out["gpu_images_per_s_mid"] = round(n_images / (time.perf_counter() - start), 1)
    else:
        out["gpu"] = "none (torch sees no CUDA device)"
    return out


# --- 2. peak memory ---------------------------------------------------------------------------

_CHILD = r"""
import gc, json, sys, time
sys.path[0] = {repo!r}
import torch
torch.set_num_threads(1)
from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
from hwsearch.supernets import create_supernet

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

net = create_supernet({supernet!r})
arch = net.space.smallest(224)
gc.collect()
before = status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as refs:  # reset the peak (VmHWM) to the current RSS
    refs.write("5")
start = time.perf_counter()
if {streamed!r}:
    from hwsearch.evaldata import DataPlan
    split = DataPlan({root!r}, n_calibration={n_calibration}).open(size=224)
    accuracy = subnet_accuracy(net, arch, split.calibration, split.validation, EvalSettings())
else:
    from hwsearch.data import load_images
    calibration, validation = load_images({root!r}, size=224).split({n_calibration})
    accuracy = None
print(json.dumps({{"rss_before_mb": round(before), "peak_rss_mb": round(status_mb("VmHWM")),
                  "seconds": round(time.perf_counter() - start, 1), "accuracy": accuracy}}))
"""


def bench_memory(workdir: Path, sizes: list[int], legacy: bool) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        root = write_jpegs(workdir / f"mem-{n}", n)
        disk = sum(f.stat().st_size for f in root.rglob("*.jpg")) / 2**20
        for streamed in (True, False) if legacy else (True,):
            code = _CHILD.format(repo=str(REPO), supernet=SUPERNET, streamed=streamed,
                                 root=str(root), n_calibration=min(100, n // 2))
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"images": n, "disk_mb": round(disk), "loader":
                         "streamed, evaluate smallest subnet" if streamed
                         else "in-memory (before), load + split only", **figures})
    return rows


# --- 3. profiling rate ------------------------------------------------------------------------

def pipeline_at(revision: str) -> types.ModuleType:
    """The pipeline module as committed at ``revision``, imported from its source (the 'before')."""
    source = subprocess.run(["git", "show", f"{revision}:hwsearch/pipeline.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("hwsearch._pipeline_before")
    module.__file__ = f"{revision}:hwsearch/pipeline.py"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102  (this repository's own history)
    return module


def _warm_up_export(net: Any) -> None:
    """Export once before anything is timed, so no run pays torch's first-export costs."""
    from hwsearch.export import export_subnet

    with tempfile.TemporaryDirectory() as tmp:
        export_subnet(net, net.space.smallest(), Path(tmp) / "warm.onnx", check=False)


def _profile_once(pipeline: Any, net: Any, archs: list[Any], profiler: Any) -> dict[str, Any]:
    from hwsearch.store import MemoryStore

    store = MemoryStore()
    key = profiler.device_key()
    start = time.perf_counter()
    pipeline.profile_subnets(net, archs, profiler, key, store)
    wall = time.perf_counter() - start
    rows = store.get_latencies(key, net.space.network_id).values()
    sessions = {(r["env"]["session_start"], r["env"]["session_end"]): r["env"].get("lock_wait_s", 0.0)
                for r in rows}
    waited = sum(sessions.values())
    return {"wall_s": round(wall, 1), "lock_wait_s": round(waited, 1),
            "export_s": round(sum(r["export_seconds"] for r in rows), 1),
            "session_s": round(sum(b - a for a, b in sessions), 1),
            "subnets_per_min": round(60 * len(archs) / wall, 1),
            "subnets_per_min_without_waits": round(60 * len(archs) / max(wall - waited, 1e-9), 1),
            "stable": sum(bool(r["stable"]) for r in rows)}


def bench_profile(n: int, resolution: int, before: str, before_timing: str) -> dict[str, Any]:
    """Subnets per minute of this tree against ``before`` (a git revision's pipeline, its timing)."""
    import dataclasses

    import hwsearch.pipeline as current
    from devices import open_profiler
    from devices.profile import DeviceProfile

    net = _net()
    archs = current.select_subnets(net.space, n, seed=0, resolution=resolution)
    profile = DeviceProfile.load(DEVICE)
    profilers = {"before": open_profiler(dataclasses.replace(profile, timing=before_timing)),
                 "this tree": open_profiler(profile)}
    _warm_up_export(net)
    pipelines = {"before": pipeline_at(before), "this tree": current}
    runs = [(name, _profile_once(pipelines[name], net, archs, profilers[name]))
            for name in ("before", "this tree", "this tree", "before")]  # ABBA: drift cancels
    totals = {name: sum(r["wall_s"] - r["lock_wait_s"] for n, r in runs if n == name)
              for name in pipelines}
    return {"subnets": n, "resolution": resolution, "before": f"{before} pipeline, timing {before_timing}",
            "runs (in order)": runs,
            "subnets_per_min_without_waits": {name: round(60 * 2 * n / total, 1)
                                              for name, total in totals.items()}}


# --- 4. agents in parallel --------------------------------------------------------------------

def _start_agent(state: Path) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DEVICES_LOCK_DIR": str(state / "locks"),
           "DEVICES_CALIBRATION_DIR": str(state / "calibration")}
    process = subprocess.Popen([sys.executable, "-m", "devices.agent", "--port", str(port),
                                "--token", TOKEN, "--state-dir", str(state)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=1.0)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("agent did not start")


def _profiling_stage(net: Any, archs: list[Any], urls: list[str], tag: str) -> dict[str, Any]:
    """A job's profiling stage (``profile_devices``) over agent devices at ``urls``."""
    from hwsearch.jobs.context import JobContext, job_device
    from hwsearch.jobs.control import start_job
    from hwsearch.jobs.stages import profile_devices
    from hwsearch.store import MemoryStore

    devices = [job_device(_agent_device_data(f"edge-{tag}-{i}", url), None) for i, url in enumerate(urls)]
    store = MemoryStore()
    job_id = store.create_job({"kind": "search"})
    job = JobContext(store=store, job_id=job_id, net=net, devices=devices, data=None,
                     dataset_id="unused", archs=archs)
    start = time.perf_counter()
    profile_devices(start_job(store, job_id), job)
    wall = time.perf_counter() - start
    rows = [r for d in devices for r in store.get_latencies(d.key, net.space.network_id).values()]
    sessions = {(r["env"]["session_start"], r["env"]["session_end"]) for r in rows}
    return {"devices": len(urls), "wall_s": round(wall, 1),
            "export_s": round(sum(r["export_seconds"] for r in rows), 1),
            "session_s": round(sum(b - a for a, b in sessions), 1)}


def _agent_device_data(name: str, url: str) -> dict[str, Any]:
    """The 1-thread device's settings as data, named ``name`` and measured by the agent at ``url``."""
    from devices.profile import DeviceProfile

    data = DeviceProfile.load(DEVICE).to_dict()
    return {**data, "name": name, "where": {"kind": "agent", "url": url, "token_env": "THROUGHPUT_TOKEN"}}


def _sessions_only(net: Any, archs: list[Any], urls: list[str], folder: Path) -> dict[str, Any]:
    """The same subnets, exported beforehand, measured by one agent and then by all ``urls`` at once.

    No export and no store: only the agents' sessions.  Both test agents
    share this host's two cores, so the ratio is what sharing the cores
    costs by itself, a floor under the job's two/one ratio that only
    separate hardware removes.
    """
    from concurrent.futures import ThreadPoolExecutor

    from devices import open_profiler
    from devices.profile import DeviceProfile
    from hwsearch.export import export_subnet

    files = [folder / f"subnet{i}.onnx" for i in range(len(archs))]
    for arch, path in zip(archs, files):
        export_subnet(net, arch, path, check=False)

    def measure_on(urls_now: list[str]) -> float:
        profilers = [open_profiler(DeviceProfile.from_dict(_agent_device_data(f"edge-sessions-{i}", url)))
                     for i, url in enumerate(urls_now)]
        start = time.perf_counter()
        with ThreadPoolExecutor(len(profilers)) as pool:
            list(pool.map(lambda profiler: profiler.measure_many(files), profilers))
        return time.perf_counter() - start

    one, two = measure_on(urls[:1]), measure_on(urls)
    return {"one agent_s": round(one, 1), "two agents_s": round(two, 1), "two / one": round(two / one, 2)}


def bench_agents(workdir: Path, n: int, resolution: int) -> dict[str, Any]:
    import hwsearch.pipeline as current

    os.environ["THROUGHPUT_TOKEN"] = TOKEN
    net = _net()
    archs = current.select_subnets(net.space, n, seed=1, resolution=resolution)
    _warm_up_export(net)
    agents = [_start_agent(workdir / f"agent-{i}") for i in range(2)]
    try:
        urls = [url for _, url in agents]
        one = _profiling_stage(net, archs, urls[:1], "one")
        two = _profiling_stage(net, archs, urls, "two")
        sessions = _sessions_only(net, archs, urls, workdir)
    finally:
        for process, _ in agents:
            process.terminate()
            process.wait(timeout=30)
    return {"subnets": n, "resolution": resolution, "one agent": one, "two agents": two,
            "two / one": round(two["wall_s"] / one["wall_s"], 2),
            "sessions only, exported beforehand (the cost of sharing two cores)": sessions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=["eval", "memory", "profile", "agents"])
    parser.add_argument("--eval-images", type=int, default=96)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 3000])
    parser.add_argument("--no-legacy", action="store_true",
                        help="skip the in-memory loader's memory figures")
    parser.add_argument("--profile-n", type=int, default=24)
    parser.add_argument("--agent-n", type=int, default=20)
    parser.add_argument("--before", default="HEAD", help="git revision whose pipeline is the 'before'")
    parser.add_argument("--before-timing", default="hot", choices=["hot", "interleaved"],
                        help="the protocol's timing for the 'before' runs (interleaved: before hot timing)")
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    os.environ.setdefault("DEVICES_CALIBRATION_DIR", tempfile.mkdtemp(prefix="throughput-calib-"))
    with tempfile.TemporaryDirectory(prefix="hwsearch-throughput-") as tmp:
        workdir = Path(tmp)
        parts = {
            "eval": lambda: bench_eval(workdir, args.eval_images),
            "memory": lambda: bench_memory(workdir, args.sizes, not args.no_legacy),
            "profile": lambda: bench_profile(args.profile_n, args.resolution, args.before, args.before_timing),
            "agents": lambda: bench_agents(workdir, args.agent_n, args.resolution),
        }
        for name in args.only:
            start = time.perf_counter()
            result = parts[name]()
            print(json.dumps({name: result, "bench_seconds": round(time.perf_counter() - start)},
                             indent=2), flush=True)


if __name__ == "__main__":
    main()
