"""Do concurrent measurements still agree with a measurement alone?  The host lock under contention.

Exports ``--subnets`` subnets of the demo supernet (``demo_mbv3_mnist``, its
trained checkpoint, spread over MACs) once, then measures all of them, each
run in a process of its own, in these scenarios:

* (a) alone: the 1-thread demo device, then the 2-thread demo device, then
  the 1-thread device once more (the session-to-session noise without contention);
* (b) three processes at once, each measuring all subnets on the 1-thread device;
* (c) the 1-thread and the 2-thread device at once, from two processes.

Every local session holds the host lock (:mod:`devices.hostlock`), so in (b)
and (c) the sessions run one after another however the processes were
started.  For (b) and (c) it prints, per process and against the same
device's run in (a), the median and worst ``|latency_ms / alone − 1|``, the
share of subnets within ±10% and ±5%, the share of stable rows, the session's
own reference latency (the machine's state), how long the process waited
for the host and how long its session held it; then each scenario's wall
time, and the span from its first session's start to its last one's end,
against the sum of the same runs alone.  Calibrations start fresh (the first run of each device in (a) sets its
ruler) in a temporary folder; the lock is the host's own, so measurements by
other people on this machine are waited for too (they show in the lock wait).

    python bench/contention.py            # the demo devices' own protocol
    python bench/contention.py --quick    # shorter sessions (about 2-4 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The script's own folder holds bench/predictors.py, which would shadow the predictors package.
sys.path[0] = str(REPO)

from devices.calibration import CALIBRATION_DIR_ENV  # noqa: E402
from devices.profile import DeviceProfile  # noqa: E402

DEVICES = {"1t": REPO / "hwsearch/demo/devices/cpu-1thread.yaml",
           "2t": REPO / "hwsearch/demo/devices/cpu-2threads.yaml"}
QUICK = {"warmup": {"runs": 5, "seconds": 0.2},
         "protocol": {"min_rounds": 12, "max_rounds": 60, "max_seconds": 30.0, "ci_target": 0.02}}


@dataclass(frozen=True)
class Run:
    """One process's measurement of every subnet on one device."""

    device: str
    rows: list[dict[str, Any]]

    @property
    def latencies(self) -> np.ndarray:
        return np.array([r["latency_ms"] for r in self.rows])

    @property
    def env(self) -> dict[str, Any]:
        return self.rows[0]["env"]


def export_subnets(n: int, seed: int, folder: Path) -> list[Path]:
    """``n`` demo subnets spread evenly over log MACs, exported at batch 1."""
    from devices.hostlock import compute_unit
    from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
    from hwsearch.export import export_subnet
    from hwsearch.jobs import supernet_builders
    from hwsearch.pipeline import select_subnets
    from hwsearch.supernets import create_supernet

    supernet_builders()
    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    paths = []
    for index, arch in enumerate(select_subnets(net.space, n, seed=seed)):
        path = folder / f"subnet{index:02d}.onnx"
        with compute_unit():
            export_subnet(net, arch, path, check=False)
        paths.append(path)
    return paths


def profile_file(device: str, quick: bool, folder: Path) -> Path:
    """The demo device's profile, with a shorter protocol under ``--quick`` (same device hash)."""
    data = DeviceProfile.load(DEVICES[device]).to_dict()
    if quick:
        data.update(QUICK)
    path = folder / f"{device}.json"
    path.write_text(json.dumps(data))
    return path


def scenario(devices: list[str], paths: list[Path], profiles: dict[str, Path], folder: Path,
             name: str) -> tuple[list[Run], float]:
    """Start one measuring process per entry of ``devices`` at once; their runs and the wall time."""
    started = time.monotonic()
    outs = [folder / f"{name}-{i}.json" for i in range(len(devices))]
    processes = [
        subprocess.Popen([sys.executable, __file__, "--worker", str(profiles[device]), str(out),
                          *map(str, paths)])
        for device, out in zip(devices, outs)
    ]
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"a measuring process of scenario {name} failed")
    wall = time.monotonic() - started
    return [Run(device, json.loads(out.read_text())) for device, out in zip(devices, outs)], wall


def worker(profile_path: Path, out: Path, paths: list[Path]) -> None:
    """Measure ``paths`` in one session (one process of a scenario) and write the rows."""
    from devices.local import LocalProfiler

    rows = LocalProfiler(DeviceProfile.load(profile_path)).measure_many(paths)
    out.write_text(json.dumps([m.to_dict() for m in rows]))


def agreement(run: Run, alone: Run) -> dict[str, float]:
    """``|latency / alone − 1|`` statistics, stable share and conditions of one run."""
    deviation = np.abs(run.latencies / alone.latencies - 1.0)
    return {
        "median": float(np.nanmedian(deviation)),
        "worst": float(np.nanmax(deviation)),
        "within_10": float(np.mean(deviation <= 0.10)),
        "within_5": float(np.mean(deviation <= 0.05)),
        "stable": float(np.mean([r["stable"] for r in run.rows])),
        "session_reference_ms": float(run.env["session_reference_ms"]),
        "lock_wait_s": float(run.env["lock_wait_s"]),
    }


def overlaps(runs: list[Run]) -> int:
    """How many pairs of sessions overlapped in time (the lock promises none)."""
    spans = sorted((r.env["session_start"], r.env["session_end"]) for r in runs)
    return sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def session_span(runs: list[Run]) -> float:
    """Seconds from the first session's start to the last one's end (process start-up excluded)."""
    return max(r.env["session_end"] for r in runs) - min(r.env["session_start"] for r in runs)


def _row(label: str, run: Run, stats: dict[str, float] | None) -> str:
    stable = float(np.mean([r["stable"] for r in run.rows]))
    numbers = (f"{stats['median']:7.2%} {stats['worst']:7.2%} {stats['within_10']:6.0%} {stats['within_5']:6.0%}"
               if stats else f"{'-':>7s} {'-':>7s} {'-':>6s} {'-':>6s}")
    return (f"{label:13s} {run.device:6s} {numbers} {stable:7.0%} {run.env['session_reference_ms']:7.3f} "
            f"{run.env['lock_wait_s']:7.1f} {run.env['session_end'] - run.env['session_start']:9.1f}")


def print_table(alone: dict[str, tuple[Run, float]], again: Run,
                scenarios: dict[str, tuple[list[Run], float]]) -> dict[str, Any]:
    """The comparison table; returns the same numbers for ``--json``."""
    print(f"\n{'run':13s} {'device':6s} {'median':>7s} {'worst':>7s} {'±10%':>6s} {'±5%':>6s} "
          f"{'stable':>7s} {'ref ms':>7s} {'wait s':>7s} {'session s':>9s}")
    results: dict[str, Any] = {}
    for device, (run, wall) in alone.items():
        print(_row("(a) alone", run, None))
        results[f"a-{device}"] = {"wall_s": wall, "session_s": session_span([run]),
                                  "session_reference_ms": run.env["session_reference_ms"]}
    results["a-1t-again"] = agreement(again, alone["1t"][0])
    print(_row("(a) again", again, results["a-1t-again"]) + "   <- session-to-session noise, alone")
    for name, (runs, wall) in scenarios.items():
        for index, run in enumerate(runs):
            results[f"{name}-{index}"] = agreement(run, alone[run.device][0])
            print(_row(f"{name} #{index + 1}", run, results[f"{name}-{index}"]))
        solo_wall = sum(alone[run.device][1] for run in runs)
        solo_sessions = sum(session_span([alone[run.device][0]]) for run in runs)
        results[name] = {"wall_s": wall, "solo_wall_sum_s": solo_wall, "session_span_s": session_span(runs),
                         "solo_session_sum_s": solo_sessions, "overlapping_sessions": overlaps(runs)}
        print(f"{'':13s} wall {wall:.1f}s vs {solo_wall:.1f}s for these runs alone; sessions from first start "
              f"to last end {session_span(runs):.1f}s vs {solo_sessions:.1f}s alone; "
              f"overlapping sessions: {overlaps(runs)}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="shorter sessions (same devices)")
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    parser.add_argument("--worker", nargs="+", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        profile_path, out, *paths = args.worker
        worker(profile_path, out, paths)
        return

    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        folder = Path(tmp)
        os.environ[CALIBRATION_DIR_ENV] = str(folder / "calibration")  # inherited by the workers
        started = time.monotonic()
        paths = export_subnets(args.subnets, args.seed, folder)
        profiles = {device: profile_file(device, args.quick, folder) for device in DEVICES}
        print(f"exported {len(paths)} demo subnets in {time.monotonic() - started:.1f}s; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; protocol {'quick' if args.quick else 'demo'}",
              flush=True)
        alone = {}
        for device in DEVICES:
            [run], wall = scenario([device], paths, profiles, folder, f"a-{device}")
            alone[device] = (run, wall)
            print(f"(a) {device} alone: {wall:.1f}s", flush=True)
        [again], _ = scenario(["1t"], paths, profiles, folder, "a-again")
        scenarios = {}
        for name, devices in (("(b) 3x1t", ["1t", "1t", "1t"]), ("(c) 1t+2t", ["1t", "2t"])):
            scenarios[name] = scenario(devices, paths, profiles, folder, name[1])
            print(f"{name}: {scenarios[name][1]:.1f}s", flush=True)
        results = print_table(alone, again, scenarios)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
