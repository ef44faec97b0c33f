"""How repeatable are latencies on this machine?  Naive timing vs the hwsearch protocol.

Measures the same random OFA-MobileNetV3 subnets in two separate passes within
one run on one device, with two protocols:

* naive: per model, 10 warm-up + 30 timed runs on the wall clock, median; one
  model after another;
* hwsearch: ``devices`` interleaved, reference-normalised protocol
  (``latency_ms``), by default with one thread on the thread's CPU clock.

For each protocol it prints, over subnets, the median, p90 and worst
``|pass2 / pass1 − 1|`` and the share of subnets within ±10% and ±5%, plus
throughput (subnets profiled per minute, export included).  The goal is a
median ≤ 2% and ≥ 98% of subnets within ±10%.

    python bench/repeatability.py --subnets 30 --resolution 160
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from devices.calibration import CALIBRATION_DIR_ENV
from devices.local import LocalProfiler
from devices.ort import OrtRunner
from devices.profile import DeviceProfile

SUPERNET = "ofa_mbv3_d234_e346_k357_w1.0"
NAIVE_WARMUP, NAIVE_RUNS = 10, 30
# One thread on the thread's CPU clock (see DeviceProfile); per-pass caps keep the bench under ~20 min on 2 busy cores.
DEFAULT_PROFILE = {
    "name": "local-cpu-1t",
    "clock": "thread_cpu",
    "protocol": {"min_rounds": 15, "max_rounds": 300, "max_seconds": 240, "ci_target": 0.015},
}


def export_subnets(n: int, resolution: int, seed: int, folder: Path) -> tuple[list[Path], float]:
    """Export ``n`` random subnets (random weights) at one resolution; returns paths and seconds."""
    from hwsearch.export import export_subnet
    from hwsearch.supernets import create_supernet

    started = time.monotonic()
    supernet = create_supernet(SUPERNET)
    archs = [dataclasses.replace(a, resolution=resolution) for a in supernet.space.sample(seed, n)]
    paths = []
    for index, arch in enumerate(archs):
        path = folder / f"subnet{index:03d}.onnx"
        export_subnet(supernet, arch, path)
        paths.append(path)
    return paths, time.monotonic() - started


def naive_pass(paths: list[Path], profile: DeviceProfile) -> list[float]:
    """One model after another: warm up, time on the wall clock, take the median."""
    wall_clock = dataclasses.replace(profile, clock="wall")
    medians = []
    for path in paths:
        runner = OrtRunner(path.read_bytes(), wall_clock)
        for _ in range(NAIVE_WARMUP):
            runner.run_ms()
        medians.append(float(np.median([runner.run_ms() for _ in range(NAIVE_RUNS)])))
    return medians


def hwsearch_pass(paths: list[Path], profile: DeviceProfile) -> tuple[list[float], dict]:
    """The interleaved, reference-normalised protocol over all subnets at once."""
    measurements = LocalProfiler(profile).measure_many(paths)
    env = measurements[0].env
    facts = {
        "reference_ms": round(env["reference_ms"], 3),
        "session_reference_ms": round(env["session_reference_ms"], 3),
        "rounds": env["rounds"],
        "unstable": sum(not m.stable for m in measurements),
        "worst_ci": round(max(m.ratio_ci for m in measurements), 4),
    }
    return [m.latency_ms for m in measurements], facts


def agreement(first: list[float], second: list[float]) -> dict[str, float]:
    """Between-pass agreement statistics of ``|second / first − 1|``."""
    deviation = np.abs(np.asarray(second) / np.asarray(first) - 1.0)
    return {
        "median": float(np.median(deviation)),
        "p90": float(np.percentile(deviation, 90)),
        "worst": float(deviation.max()),
        "within_10": float(np.mean(deviation <= 0.10)),
        "within_5": float(np.mean(deviation <= 0.05)),
    }


def timed(fn, *args):
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=30)
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=Path, default=None, help="device profile (default: local, 1 thread)")
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    args = parser.parse_args()

    profile = DeviceProfile.load(args.profile) if args.profile else DeviceProfile.from_dict(DEFAULT_PROFILE)
    with tempfile.TemporaryDirectory(prefix="repeatability-") as folder:
        # A fresh, uncalibrated device: pass 1 calibrates its reference, pass 2 reuses it.
        os.environ[CALIBRATION_DIR_ENV] = str(Path(folder) / "calibration")
        paths, export_s = export_subnets(args.subnets, args.resolution, args.seed, Path(folder))
        print(f"exported {len(paths)} subnets of {SUPERNET} at {args.resolution}px in {export_s:.1f}s; "
              f"device {profile.name} ({profile.hash()}), {profile.intra_op_threads} thread(s), clock {profile.clock}, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        naive, hws, seconds = [], [], {"naive": [], "hwsearch": []}
        for number in (1, 2):
            latencies, spent = timed(naive_pass, paths, profile)
            naive.append(latencies)
            seconds["naive"].append(spent)
            (latencies, facts), spent = timed(hwsearch_pass, paths, profile)
            hws.append(latencies)
            seconds["hwsearch"].append(spent)
            print(f"pass {number}: naive {seconds['naive'][-1]:.0f}s; hwsearch {spent:.0f}s, {facts}", flush=True)

    results = {"naive": agreement(*naive), "hwsearch": agreement(*hws)}
    print(f"\n{'|pass2/pass1 - 1|':22s} {'naive':>10s} {'hwsearch':>10s}")
    for key, label in (("median", "median"), ("p90", "p90"), ("worst", "worst")):
        print(f"{label:22s} {results['naive'][key]:10.2%} {results['hwsearch'][key]:10.2%}")
    for key, label in (("within_10", "share within ±10%"), ("within_5", "share within ±5%")):
        print(f"{label:22s} {results['naive'][key]:10.1%} {results['hwsearch'][key]:10.1%}")
    for name in ("naive", "hwsearch"):
        per_minute = len(paths) / ((export_s + float(np.mean(seconds[name]))) / 60.0)
        results[name]["subnets_per_min"] = per_minute
    print(f"{'subnets/min (w/ export)':22s} {results['naive']['subnets_per_min']:10.1f} "
          f"{results['hwsearch']['subnets_per_min']:10.1f}")
    goal = results["hwsearch"]["median"] <= 0.02 and results["hwsearch"]["within_10"] >= 0.98
    print(f"goal (median <= 2%, >= 98% within ±10%): {'met' if goal else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "naive": naive, "hwsearch": hws}, indent=2))


if __name__ == "__main__":
    main()
