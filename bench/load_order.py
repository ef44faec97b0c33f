"""Does where a model is loaded in its session move what it reads, and does loading it twice cancel that?

A session loads its reference, then its models in the order given
(:func:`devices.local.measure_model_bytes`), each in its own onnxruntime
``InferenceSession``.  Two sessions of the same bytes in one process need
not run alike: on this host (2026-12-04), four copies of one INT8 demo
subnet, loaded one after another and run round-robin on two threads, read
2-8% apart (max over min of their medians), the copy loaded last the
fastest in most of 20 trials.  If a model's load position moves its ratio,
a row carries the place its subnet had in its session.

This bench exports ``--subnets`` demo subnets (``demo_mbv3_mnist``, trained
checkpoint; with ``--int8`` their INT8 files too, calibrated on the demo's
held-out digits) and on each demo device measures ``--sessions`` sessions
of all of them through the real protocol, each session loading them in a
fresh random order.  It fits, per device and precision,

    log ratio[subnet, session] = subnet effect + session effect + c × position

(``position`` 0 for the first model loaded, 1 for the last) and prints
``exp(c) − 1``, the move from first to last place, with a 90% interval
from resampling whole sessions; and the subnets' spread between sessions
(the median over subnets of the SD of their log ratio once each session's
common move is taken out), as measured and with the fitted position taken
out.  ``--load-twice`` alternates every session with one under
``protocol.load_twice`` (each model loaded again in reverse order, the
copies taking turns by round), the position being the first copy's.

    python bench/load_order.py --sessions 8 --int8 --load-twice
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEVICES = {"1t": "cpu-1thread.yaml", "2t": "cpu-2threads.yaml"}
BOOTSTRAP = 1000


def exported_files(n: int, seed: int, precisions: list[str]) -> dict[str, list[bytes]]:
    """``n`` demo subnets' ONNX files per precision, in one subnet order."""
    from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
    from hwsearch.demo.data import write_digits
    from hwsearch.evaldata import DataPlan
    from hwsearch.export import export_subnet
    from hwsearch.jobs import supernet_builders
    from hwsearch.jobs.precision import calibration_part
    from hwsearch.pipeline import select_subnets
    from hwsearch.supernets import create_supernet

    supernet_builders()
    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    files: dict[str, list[bytes]] = {precision: [] for precision in precisions}
    with tempfile.TemporaryDirectory() as folder:
        _, heldout = write_digits(Path(folder))
        calibration = calibration_part(DataPlan(str(heldout)).open(size=max(net.space.resolutions)))
        for index, arch in enumerate(select_subnets(net.space, n, seed=seed)):
            for precision in precisions:
                path = Path(folder) / f"{index}-{precision}.onnx"
                export_subnet(net, arch, path, check=False, precision=precision,
                              calibration=calibration if precision == "int8" else None)
                files[precision].append(path.read_bytes())
    return files


def record(device_file: str, models: list[bytes], sessions: int, seed: int,
           modes: list[bool]) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """Per mode (``protocol.load_twice``), ``(log ratios, positions)``, each sessions × subnets.

    Every session loads the models in a new order (its first loads', for a
    session that loads them twice); the modes take turns, which goes first
    alternating, so both see the same hour.
    """
    from dataclasses import replace

    from devices.local import measure_model_bytes
    from devices.profile import DeviceProfile

    base = DeviceProfile.load(REPO / "hwsearch/demo/devices" / device_file)
    rng = np.random.default_rng(seed)
    n = len(models)
    tables = {mode: (np.empty((sessions, n)), np.empty((sessions, n))) for mode in modes}
    for s in range(sessions):
        for mode in modes[s % len(modes):] + modes[:s % len(modes)]:
            profile = replace(base, protocol=replace(base.protocol, load_twice=mode))
            order = rng.permutation(n)
            measured = measure_model_bytes(profile, [models[i] for i in order], profile.reference_bytes())
            log_ratios, positions = tables[mode]
            log_ratios[s, order] = np.log([m.ratio for m in measured])
            positions[s, order] = np.arange(n) / (n - 1)
        print(f"  session {s + 1}/{sessions}", flush=True)
    return tables


def position_effect(log_ratios: np.ndarray, positions: np.ndarray) -> float:
    """``c`` of the two-way fit: every subnet sits in every session, so both effects go by double centring."""
    y, p = _double_centred(log_ratios), _double_centred(positions)
    return float((p * y).sum() / (p ** 2).sum())


def _double_centred(table: np.ndarray) -> np.ndarray:
    """``table`` less its column means and row means, plus its grand mean."""
    return table - table.mean(axis=0) - table.mean(axis=1, keepdims=True) + table.mean()


def spread_between_sessions(log_ratios: np.ndarray) -> float:
    """Median over subnets of the SD of their log ratio across sessions, each session's common move taken out."""
    centred = log_ratios - np.median(log_ratios - log_ratios.mean(axis=0), axis=1, keepdims=True)
    return float(np.median(centred.std(axis=0, ddof=1)))


def report(label: str, log_ratios: np.ndarray, positions: np.ndarray, seed: int) -> None:
    """One line: first-to-last move with its interval, and the spread with and without the position."""
    c = position_effect(log_ratios, positions)
    rng = np.random.default_rng(seed)
    draws = [position_effect(log_ratios[idx], positions[idx])
             for idx in (rng.integers(0, len(log_ratios), len(log_ratios)) for _ in range(BOOTSTRAP))]
    low, high = np.percentile(draws, [5, 95])
    interval = f"90% {np.expm1(low):+.2%}..{np.expm1(high):+.2%}"
    print(f"{label:20s} first->last {np.expm1(c):+7.2%} ({interval})"
          f"  spread between sessions {spread_between_sessions(log_ratios):.2%}"
          f" -> {spread_between_sessions(log_ratios - c * positions):.2%} without the position")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int8", action="store_true", help="also the subnets' INT8 files, in sessions of their own")
    parser.add_argument("--load-twice", action="store_true",
                        help="alternate every session with one that loads each model twice (protocol.load_twice)")
    args = parser.parse_args()
    if args.sessions < 3 or args.subnets < 4:
        parser.error("needs at least 3 sessions of at least 4 subnets")
    precisions = ["fp32", "int8"] if args.int8 else ["fp32"]
    files = exported_files(args.subnets, args.seed, precisions)
    modes = [False, True] if args.load_twice else [False]
    results = {}
    for device, device_file in DEVICES.items():
        for precision in precisions:
            print(f"recording {args.sessions} sessions of {args.subnets} {precision} subnets on {device}", flush=True)
            for mode, table in record(device_file, files[precision], args.sessions, args.seed, modes).items():
                results[f"{device} {precision}{' twice' if mode else ''}"] = table
    print()
    for label, (log_ratios, positions) in results.items():
        report(label, log_ratios, positions, args.seed)


if __name__ == "__main__":
    main()
