"""Does a session read differently right after the other device's session than after its own device's?

In ``bench/contention.py``'s scenario (c), one job profiles the 1-thread and
the 2-thread device, and the host lock makes their sessions alternate: every
session follows one of the other device, a tenth of a second after it ends.
Solo runs never do that.  Over runs 38-48 of docs/measurement.md, (c)'s
cells were shown worse than the solo runs in 5 of 44, where 2.2 are
expected by chance (p = 0.07), and (b)'s (three 1-thread jobs, whose
sessions follow their own device's) in 2 of 22.  The results are in
docs/measurement.md ("A session right after the other device's").

This bench exports ``--subnets`` demo subnets (``demo_mbv3_mnist``, trained
checkpoint; with ``--int8`` their INT8 files too, in the same sessions, as a
job measures a device's precisions) and runs ``--sessions`` sessions per
device through the real protocol, back to back, in a random order of the two
devices, each session loading its files in a fresh random order.  Per device
and precision it fits

    log ratio[subnet, session] = subnet effect + session effect

and compares sessions that follow the other device with those that follow
their own: the session effects (a move of the whole session, which the
anchor corrects), the lean of the residuals on the log of the file's
size in bytes (a move that depends on size, which a session offset
corrects only as far as its lean is the anchor's), and the residuals'
spread, each as
``after other − after own`` with a 90% interval from resampling sessions.

    python bench/session_order.py --sessions 12 --int8
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load_order import DEVICES, exported_files  # noqa: E402

BOOTSTRAP = 2000
OWN, OTHER = "own", "other"


@dataclass
class Sessions:
    """One device's sessions at one precision: log ratios (sessions × subnets) and what each session followed."""

    log_ratios: list[np.ndarray]
    after: list[str]


def device_order(sessions: int, seed: int) -> list[str]:
    """Each device ``sessions`` times, shuffled: runs of one device and switches both occur often."""
    order = [device for device in DEVICES for _ in range(sessions)]
    np.random.default_rng(seed).shuffle(order)
    return order


def record(files: dict[str, list[bytes]], order: list[str], seed: int) -> dict[tuple[str, str], Sessions]:
    """Run the sessions in ``order``; per (device, precision), each session's log ratios and its predecessor.

    The first session follows nothing and is left out.
    """
    from devices.local import measure_model_bytes
    from devices.profile import DeviceProfile

    profiles = {d: DeviceProfile.load(REPO / "hwsearch/demo/devices" / f) for d, f in DEVICES.items()}
    rng = np.random.default_rng(seed)
    models = [(precision, i, data) for precision, datas in files.items() for i, data in enumerate(datas)]
    n = len(next(iter(files.values())))
    tables: dict[tuple[str, str], Sessions] = {}
    for index, device in enumerate(order):
        shuffled = [models[i] for i in rng.permutation(len(models))]
        measured = measure_model_bytes(profiles[device], [data for _, _, data in shuffled],
                                       profiles[device].reference_bytes())
        print(f"  session {index + 1}/{len(order)}: {device}", flush=True)
        if index == 0:
            continue
        after = OWN if order[index - 1] == device else OTHER
        for precision in files:
            row = np.empty(n)
            for (at, i, _), m in zip(shuffled, measured):
                if at == precision:
                    row[i] = np.log(m.ratio)
            table = tables.setdefault((device, precision), Sessions([], []))
            table.log_ratios.append(row)
            table.after.append(after)
    return tables


def effects(log_ratios: np.ndarray, after_other: np.ndarray, log_size: np.ndarray) -> np.ndarray:
    """``after other − after own``: mean session effect, lean on centred log size, residual SD."""
    session_effect = log_ratios.mean(axis=1) - log_ratios.mean()
    residual = log_ratios - log_ratios.mean(axis=0) - session_effect[:, None]
    size = log_size - log_size.mean()
    lean = residual @ size / (size @ size)
    spread = residual.std(axis=1, ddof=1)
    return np.array([part[after_other].mean() - part[~after_other].mean()
                     for part in (session_effect, lean, spread)])


def report(label: str, table: Sessions, log_size: np.ndarray, seed: int) -> None:
    """One line: each effect with its interval, resampling sessions within each group."""
    log_ratios = np.array(table.log_ratios)
    after_other = np.array([a == OTHER for a in table.after])
    if after_other.sum() < 2 or (~after_other).sum() < 2:
        print(f"{label:12s} too few sessions after each kind ({after_other.sum()} after other)")
        return
    found = effects(log_ratios, after_other, log_size)
    rng = np.random.default_rng(seed)
    other, own = np.flatnonzero(after_other), np.flatnonzero(~after_other)
    draws = []
    for _ in range(BOOTSTRAP):
        pick = np.concatenate([rng.choice(other, len(other)), rng.choice(own, len(own))])
        draws.append(effects(log_ratios[pick], after_other[pick], log_size))
    low, high = np.percentile(draws, [5, 95], axis=0)
    names = ("session move", "lean per e-fold of size", "residual SD")
    parts = [f"{name} {np.expm1(v):+.2%} (90% {np.expm1(lo):+.2%}..{np.expm1(hi):+.2%})"
             for name, v, lo, hi in zip(names, found, low, high)]
    print(f"{label:12s} n={len(other)} after other, {len(own)} after own; " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=24)
    parser.add_argument("--sessions", type=int, default=12, help="per device")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int8", action="store_true", help="also the subnets' INT8 files, in the same sessions")
    args = parser.parse_args()
    if args.sessions < 4 or args.subnets < 4:
        parser.error("needs at least 4 sessions per device of at least 4 subnets")
    precisions = ["fp32", "int8"] if args.int8 else ["fp32"]
    files = exported_files(args.subnets, args.seed, precisions)
    order = device_order(args.sessions, args.seed)
    switches = sum(a != b for a, b in zip(order, order[1:]))
    print(f"{len(order)} sessions, {switches} after the other device, {len(order) - 1 - switches} after their own",
          flush=True)
    tables = record(files, order, args.seed)
    print()
    for (device, precision), table in tables.items():
        log_size = np.log([len(data) for data in files[precision]])
        report(f"{device} {precision}", table, log_size, args.seed)


if __name__ == "__main__":
    main()
