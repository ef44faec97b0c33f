"""Do sessions read models as a loop of each reads them, under ``timing: warm`` (the default) and ``hot``?

A session interleaves many models with the reference (``R M R M ...``).
Under ``hot`` each timed model run follows one untimed run of itself and
the reference none: a mid-size model then reads above what a loop of it
reads, the more so after a large model, and the reference timed after a
large model reads slow, so large models' ratios come out low.  ``warm``
runs each model, and the reference, untimed for ``devices.protocol.WARM_MS``
before each timed run of it.

This bench exports full-size OFA MobileNetV3 w1.0 subnets (random weights,
the largest of a seeded sample at 224 px, a middle one at 160 px, the
smallest at 128 px) and ``--demo`` demo subnets, and on the demo's 1-thread
device alternates sessions of all of them under ``hot`` and ``warm``.
Between sessions it times every model in plain loops: blocks of
``--block`` back-to-back runs of the reference, the model and the
reference again, each block after untimed runs for ``WARM_MS`` (a loop's
steady state: one untimed run left the reference after a large model
slow), in a fresh random order
of models; a model's plain ratio is its block median over the geometric
mean of its two reference blocks' medians, and its median over ``--plain``
rounds is what a loop on a warm machine reads.

It prints, per timing and model, the median over sessions of the session's
ratio over the plain ratio (1.00: the session reads what a loop reads), the
session's reference (its low percentile, ms) against the plain reference
median, the share of stable rows and the sessions' wall time.  Ratios are
compared within this run, never absolute times across runs.  The rulers
go to a temporary folder of the bench's own.

    python bench/reference_warmth.py --pairs 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIMINGS = ("hot", "warm")


def exported_models(n_demo: int, seed: int) -> tuple[list[str], list[bytes]]:
    """Names and ONNX bytes: three full-size subnets (224, 160, 128 px) and ``n_demo`` demo subnets."""
    from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
    from hwsearch.export import export_subnet
    from hwsearch.pipeline import select_subnets
    from hwsearch.supernets import create_supernet

    full = create_supernet("ofa_mbv3_d234_e346_k357_w1.0")
    demo = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    picks: list[tuple[str, Any, Any]] = []
    for resolution, which in ((224, -1), (160, 4), (128, 0)):
        sample = sorted(select_subnets(full.space, 9, seed=seed, resolution=resolution),
                        key=lambda arch: full.count(arch).macs)
        picks.append((f"full{resolution}", full, sample[which]))
    picks += [(f"demo{i}", demo, arch) for i, arch in enumerate(select_subnets(demo.space, n_demo, seed=seed))]
    names, models = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, net, arch in picks:
            path = Path(folder) / f"{name}.onnx"
            macs = export_subnet(net, arch, path, check=False).macs
            names.append(f"{name} ({macs / 1e6:.0f} MMACs)")
            models.append(path.read_bytes())
    return names, models


def plain_ratios(profile: Any, models: list[bytes], reference: bytes, rounds: int, block: int,
                 seed: int) -> tuple[np.ndarray, float]:
    """Each model's median plain ratio over ``rounds`` (see the module docstring), and the reference's median ms."""
    from devices.ort import OrtRunner
    from devices.protocol import WARM_MS

    ref = OrtRunner(reference, profile)
    runners = [OrtRunner(model, profile) for model in models]
    rng = np.random.default_rng(seed)

    def block_median(runner: Any) -> float:
        spent = runner.run_ms()  # untimed, for as long as a session warms: the block times a loop's steady state
        while spent < max(WARM_MS, 1.0):
            spent += runner.run_ms()
        return float(np.median([runner.run_ms() for _ in range(block)]))

    ratios = np.empty((rounds, len(models)))
    refs: list[float] = []
    for r in range(rounds):
        before = block_median(ref)
        for i in rng.permutation(len(models)):
            model_ms = block_median(runners[i])
            after = block_median(ref)
            ratios[r, i] = model_ms / np.sqrt(before * after)
            refs += [before, after]
            before = after
    return np.median(ratios, axis=0), float(np.median(refs))


def session(profile: Any, models: list[bytes], reference: bytes) -> tuple[np.ndarray, float, float, float]:
    """One session's ratios, its reference ms, the share of its rows that are stable, and its wall time."""
    from devices.local import measure_model_bytes

    start = time.perf_counter()
    measured = measure_model_bytes(profile, models, reference)
    seconds = time.perf_counter() - start
    reference_ms = float(measured[0].env.get("session_reference_ms", float("nan")))
    return (np.array([m.ratio for m in measured]), reference_ms,
            float(np.mean([m.stable for m in measured])), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4, help="sessions under each timing, alternated")
    parser.add_argument("--demo", type=int, default=3, help="demo subnets beside the three full-size ones")
    parser.add_argument("--plain", type=int, default=5, help="plain rounds between sessions")
    parser.add_argument("--block", type=int, default=5, help="timed runs per plain block")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="warmth-rulers-") as rulers:
        os.environ["DEVICES_CALIBRATION_DIR"] = rulers  # never a user's own rulers
        run(args)


def run(args: argparse.Namespace) -> None:
    """Export, alternate the sessions and plain rounds, report."""
    import dataclasses

    from devices.profile import DeviceProfile

    base = DeviceProfile.load(REPO / "hwsearch/demo/devices/cpu-1thread.yaml")
    profiles = {timing: dataclasses.replace(base, timing=timing) for timing in TIMINGS}
    names, models = exported_models(args.demo, args.seed)
    reference = base.reference_bytes()
    found: dict[str, list[Any]] = {timing: [] for timing in TIMINGS}
    plain: list[np.ndarray] = []
    plain_ref: list[float] = []
    print(f"load average {os.getloadavg()[0]:.1f}; {len(models)} models; {args.pairs} sessions per timing",
          flush=True)
    for pair in range(args.pairs):
        for timing in TIMINGS[pair % 2:] + TIMINGS[:pair % 2]:
            ratios, ref_plain = plain_ratios(base, models, reference, args.plain, args.block, args.seed + pair)
            plain.append(ratios)
            plain_ref.append(ref_plain)
            found[timing].append((session(profiles[timing], models, reference), ratios, ref_plain))
        print(f"  pair {pair + 1}/{args.pairs}", flush=True)
    report(names, found, np.median(plain, axis=0))


def report(names: list[str], found: dict[str, list[Any]], plain: np.ndarray) -> None:
    """Per timing: each model's session ratio over the plain one next to it, and the sessions' references."""
    width = max(len(name) for name in names)
    print(f"\n{'model':{width}s} plain ratio  " + "  ".join(f"{t + ': session/plain':>22s}" for t in TIMINGS))
    for i, name in enumerate(names):
        cells = []
        for timing in TIMINGS:
            over = [s[0][i] / p[i] for s, p, _ in found[timing]]
            cells.append(f"{np.median(over):8.3f} ({min(over):.3f}-{max(over):.3f})")
        print(f"{name:{width}s} {plain[i]:11.4f}  " + "  ".join(f"{c:>22s}" for c in cells))
    for timing in TIMINGS:
        refs = [s[1] / ref for s, _, ref in found[timing]]
        print(f"{timing:8s} session reference / plain reference median: "
              f"{np.median(refs):.3f} ({min(refs):.3f}-{max(refs):.3f}); stable rows "
              f"{np.mean([s[2] for s, _, _ in found[timing]]):.0%}; "
              f"session wall {np.median([s[3] for s, _, _ in found[timing]]):.1f} s")


if __name__ == "__main__":
    main()
