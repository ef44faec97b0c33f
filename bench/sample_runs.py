"""Do sessions agree better when a timed sample is a short loop of a model (``timing: loop``) than one run (``warm``)?

The demo's subnets run in 0.06-0.4 ms on one thread, against a 2 ms
reference.  Under ``timing: warm`` each timed sample of a subnet is one
inference, and one inference of 60 µs is timed with its own jitter; under
``loop`` a sample is back-to-back runs lasting about 1 ms
(``devices.protocol.SAMPLE_MS``), timed as their mean.

This bench exports ``--subnets`` demo subnets (trained checkpoint; with
``--int8`` their INT8 files too, in the same sessions, as a job measures a
device's precisions) and alternates, on each ``--device``, sessions of the
two timings through the real protocol (``devices.local.measure_model_bytes``),
``--pairs`` of each, each session loading its files in a fresh random order.
Per device, precision and timing it prints each subnet's agreement with
the other sessions of the same timing (``|ratio / their median − 1|``):
median, worst, share within ±10% and ±5%; the same once each session's
common offset (its median over subnets of that ratio, what the anchor
subnets correct in a job) is divided out; the median |offset|; and the
share of stable rows, the median ratio CI and the sessions' median seconds.  Last, per device and
precision, the median over subnets of ``loop``'s median ratio over
``warm``'s: what the change of timing moves.  The rulers go to a temporary
folder of the bench's own; sessions take the host lock, so nothing else
measures meanwhile.

    python bench/sample_runs.py --pairs 4 --int8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load_order import DEVICES, exported_files  # noqa: E402

TIMINGS = ("warm", "loop")


def record(files: dict[str, list[bytes]], device: str, pairs: int, seed: int) -> dict[tuple[str, str], dict]:
    """Per (precision, timing): ``ratios`` (sessions × subnets), ``stable`` and ``ci`` alike, and ``seconds``."""
    from devices.local import measure_model_bytes
    from devices.profile import DeviceProfile

    base = DeviceProfile.load(REPO / "hwsearch/demo/devices" / DEVICES[device])
    profiles = {timing: dataclasses.replace(base, timing=timing) for timing in TIMINGS}
    rng = np.random.default_rng(seed)
    models = [(precision, i, data) for precision, datas in files.items() for i, data in enumerate(datas)]
    n = len(next(iter(files.values())))
    found: dict[tuple[str, str], dict] = defaultdict(lambda: {"ratios": [], "stable": [], "ci": [], "seconds": []})
    for pair in range(pairs):
        for timing in TIMINGS[pair % 2:] + TIMINGS[:pair % 2]:
            shuffled = [models[i] for i in rng.permutation(len(models))]
            measured = measure_model_bytes(profiles[timing], [data for _, _, data in shuffled],
                                           profiles[timing].reference_bytes())
            seconds = float(measured[0].env["session_seconds"])
            print(f"  {device} pair {pair + 1}/{pairs}: {timing} {seconds:.0f} s", flush=True)
            for precision in files:
                row = {key: np.full(n, np.nan) for key in ("ratios", "stable", "ci")}
                for (at, i, _), m in zip(shuffled, measured):
                    if at == precision:
                        row["ratios"][i], row["stable"][i], row["ci"][i] = m.ratio, m.stable, m.ratio_ci
                table = found[(precision, timing)]
                for key, values in row.items():
                    table[key].append(values)
                table["seconds"].append(seconds)
    return found


def agreement(ratios: np.ndarray) -> np.ndarray:
    """Each session's ratio of each subnet over the median of the other sessions' ratios of it, less one."""
    sessions = ratios.shape[0]
    return np.array([ratios[s] / np.nanmedian(np.delete(ratios, s, axis=0), axis=0) - 1 for s in range(sessions)])


def offsets(ratios: np.ndarray) -> np.ndarray:
    """Each session's common offset: its median over subnets of :func:`agreement` (plus one)."""
    return np.nanmedian(agreement(ratios) + 1, axis=1)


def _cells(gaps: np.ndarray) -> str:
    gaps = np.abs(gaps[np.isfinite(gaps)])
    return f"{np.median(gaps):7.2%} {gaps.max():7.2%} {np.mean(gaps <= 0.10):6.1%} {np.mean(gaps <= 0.05):6.1%}"


def report(device: str, found: dict[tuple[str, str], dict]) -> None:
    print(f"\n{'device':6s} {'precision':9s} {'timing':6s} {'median':>7s} {'worst':>7s} {'±10%':>6s} {'±5%':>6s} "
          f"| offsets out: {'median':>7s} {'worst':>7s} {'±10%':>6s} {'±5%':>6s} | {'|offset|':>8s} "
          f"{'stable':>6s} {'ci':>6s} {'session s':>9s}")
    for (precision, timing), table in sorted(found.items()):
        ratios = np.array(table["ratios"])
        moves = offsets(ratios)
        print(f"{device:6s} {precision:9s} {timing:6s} {_cells(agreement(ratios).ravel())} | {'':13s} "
              f"{_cells(agreement(ratios / moves[:, None]).ravel())} | {np.median(np.abs(moves - 1)):8.2%} "
              f"{np.nanmean(table['stable']):6.1%} {np.nanmedian(table['ci']):6.2%} "
              f"{np.median(table['seconds']):9.1f}")
    for precision in sorted({precision for precision, _ in found}):
        loop = np.nanmedian(np.array(found[(precision, "loop")]["ratios"]), axis=0)
        warm = np.nanmedian(np.array(found[(precision, "warm")]["ratios"]), axis=0)
        shift = loop / warm - 1
        print(f"{device:6s} {precision:9s} loop over warm, per subnet: median {np.median(shift):+.2%}, "
              f"range {shift.min():+.2%}..{shift.max():+.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=4, help="sessions of each timing per device, alternated")
    parser.add_argument("--device", choices=sorted(DEVICES), action="append", help="default: both")
    parser.add_argument("--int8", action="store_true", help="also the subnets' INT8 files, in the same sessions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write every session's rows here")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.subnets} subnets", flush=True)
    files = exported_files(args.subnets, args.seed, ["fp32", "int8"] if args.int8 else ["fp32"])
    with tempfile.TemporaryDirectory() as rulers:
        from devices.calibration import CALIBRATION_DIR_ENV

        os.environ[CALIBRATION_DIR_ENV] = rulers
        found = {device: record(files, device, args.pairs, args.seed) for device in args.device or sorted(DEVICES)}
    for device, table in found.items():
        report(device, table)
    if args.json is not None:
        args.json.write_text(json.dumps({device: {f"{precision} {timing}": {k: np.asarray(v).tolist()
                                                                            for k, v in table.items()}
                                                  for (precision, timing), table in tables.items()}
                                         for device, tables in found.items()}))


if __name__ == "__main__":
    main()
