"""Do a few subnets measured in a small session read what they read in a full one, once the anchor corrects them?

What a subnet reads depends on how many models share its session
(docs/measurement.md, "Session size").  A refinement round measures a few
candidates beside the run's three anchor subnets, so its session is small;
the anchor's subnets sit in it too, so its offset (hwsearch/anchor/) sees
the session's size as it sees a shift of the host.

This bench exports ``--subnets`` demo subnets (``demo_mbv3_mnist``, trained
checkpoint, FP32), takes the three middle ones by MACs as the anchor (as the
pipeline does), and on each demo
device alternates ``--pairs`` full sessions (every subnet) with small ones
(``--small`` random non-anchor subnets and the anchor), one after another
with nothing else measured.  Each subnet's ratio in a session is held to its
median over the full sessions, as measured and divided by the session's
anchor offset (the median over the anchor subnets of their ratio there over
their full-session median).  It prints, per device and session kind, the
median deviation, the signed median and the share within ±10%, and the
small sessions' offsets.

    python bench/session_size.py --pairs 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEVICES = {"1t": "cpu-1thread.yaml", "2t": "cpu-2threads.yaml"}
ANCHOR_SUBNETS = 3


def exported_subnets(n: int, seed: int) -> tuple[list[bytes], list[int]]:
    """``n`` demo subnets' ONNX files and their MACs."""
    from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
    from hwsearch.export import export_subnet
    from hwsearch.jobs import supernet_builders
    from hwsearch.pipeline import select_subnets
    from hwsearch.supernets import create_supernet

    supernet_builders()
    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    models, macs = [], []
    with tempfile.TemporaryDirectory() as folder:
        for index, arch in enumerate(select_subnets(net.space, n, seed=seed)):
            path = Path(folder) / f"{index}.onnx"
            macs.append(int(export_subnet(net, arch, path, check=False).macs))
            models.append(path.read_bytes())
    return models, macs


def record(device_file: str, models: list[bytes], anchor: list[int], pairs: int, small: int,
           seed: int, padded: bool = False) -> dict[str, list[dict[int, float]]]:
    """Each session's ratio per subnet index, the kinds of session taking turns (which goes first rotates too).

    ``padded`` adds a third kind: a small session's subnets measured again
    (copies of their files) until it holds as many models as a full one,
    the copies' results dropped.
    """
    from devices.local import measure_model_bytes
    from devices.profile import DeviceProfile

    profile = DeviceProfile.load(REPO / "hwsearch/demo/devices" / device_file)
    others = [i for i in range(len(models)) if i not in anchor]
    rng = np.random.default_rng(seed)
    kinds = ("full", "small", "padded") if padded else ("full", "small")
    sessions: dict[str, list[dict[int, float]]] = {kind: [] for kind in kinds}
    for pair in range(pairs):
        picked = [int(i) for i in rng.choice(others, small, replace=False)]
        sessions_now = {"full": others + anchor, "small": picked + anchor,
                        "padded": picked + anchor + [picked[j % small] for j in range(len(others) - small)]}
        for kind in kinds[pair % len(kinds):] + kinds[:pair % len(kinds)]:
            chosen = sessions_now[kind]
            measured = measure_model_bytes(profile, [models[i] for i in chosen], profile.reference_bytes())
            first: dict[int, float] = {}
            for i, m in zip(chosen, measured):
                first.setdefault(i, m.ratio)  # a padded session's repeats are dropped
            sessions[kind].append(first)
        print(f"  pair {pair + 1}/{pairs}", flush=True)
    return sessions


def score(sessions: dict[str, list[dict[int, float]]], anchor: list[int]) -> dict[str, Any]:
    """Per session kind: each non-anchor ratio over its full-session median, uncorrected and corrected."""
    medians = {i: float(np.median([s[i] for s in sessions["full"]])) for i in sessions["full"][0]}
    scored: dict[str, Any] = {}
    for kind, recorded in sessions.items():
        offsets = [float(np.median([s[a] / medians[a] for a in anchor])) for s in recorded]
        raw = np.array([s[i] / medians[i] for s in recorded for i in s if i not in anchor])
        corrected = np.array([s[i] / medians[i] / o for s, o in zip(recorded, offsets) for i in s if i not in anchor])
        scored[kind] = {"offsets": offsets, "uncorrected": raw, "corrected": corrected}
    return scored


def describe(values: np.ndarray) -> str:
    deviation = np.abs(values - 1)
    return (f"{np.median(deviation):6.2%} {np.median(values) - 1:+7.2%} {np.mean(deviation <= 0.10):6.0%} "
            f"{values.size:5d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=19)
    parser.add_argument("--small", type=int, default=4, help="non-anchor subnets in a small session")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--padded", action="store_true",
                        help="also small sessions padded to full size with copies of their own subnets")
    args = parser.parse_args()
    if not ANCHOR_SUBNETS + args.small <= args.subnets:
        parser.error("--subnets must hold the anchor and a small session's subnets")
    models, macs = exported_subnets(args.subnets, args.seed)
    start = (args.subnets - ANCHOR_SUBNETS) // 2
    anchor = [int(i) for i in np.argsort(macs)[start:start + ANCHOR_SUBNETS]]
    print(f"{'device':6s} {'sessions':8s} {'figures':12s} {'median':>6s} {'signed':>7s} {'±10%':>6s} {'n':>5s}")
    for device, device_file in DEVICES.items():
        print(f"recording {args.pairs} pairs of sessions on the {device} device", flush=True)
        scored = score(record(device_file, models, anchor, args.pairs, args.small, args.seed, args.padded), anchor)
        for kind, found in scored.items():
            for figures in ("uncorrected", "corrected"):
                print(f"{device:6s} {kind:8s} {figures:12s} {describe(found[figures])}")
        print(f"{device}: small sessions' anchor offsets {np.round(scored['small']['offsets'], 3).tolist()}")


if __name__ == "__main__":
    main()
