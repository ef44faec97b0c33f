"""How well does an anchor of k subnets tell a shifted session from a calm one?

A profiling run measures its anchor subnets in every session and calls a
session shifted when the median of their ratios there, each over its own
median over the sessions, is more than 5% from 1 (hwsearch/anchor.py).  One
subnet's ratio also moves on its own, so a small anchor flags calm sessions
and misses shifted ones.  This bench records ``--sessions`` whole sessions
of the same ``--subnets`` demo subnets (``demo_mbv3_mnist``, trained
checkpoint, FP32, spread over MACs) on each demo device, with a fresh
calibration and nothing else measured in between, and then scores the rule
for k = 1, 3 and 5 anchor subnets over every choice of anchor (or
``--choices`` random ones): a session is truly shifted when the median
offset of the subnets *outside* the anchor is more than 5% from 1.

It prints, per device and k, the share of calm sessions flagged and the
share of shifted ones missed, plus the sessions' true offsets, and how
far the rows sit from their medians once every session is divided by the
offset of the k middle subnets by size (the pipeline's choice), for k = 1,
3, 5 and 7.  It scores
the device's own witness the same way: how many shifted sessions (median
offset of all subnets more than 5% from 1) and calm ones each
``protocol.max_reference_slowdown`` would have flagged, from each session's
reference slowdown as the session saw it (against the fastest session so
far).  It also writes the recordings (``--out``), so the rules can be
scored again without measuring (``--from``).

With ``--int8`` every subnet is also quantized (static QDQ, calibrated on
random images at its input size: latency depends on the quantized graph,
not on its ranges) and its INT8 file measured in the same sessions; the
bench then prints how the other subnets' INT8 ratios sit against their
medians when divided by nothing, by the anchor's FP32 offset and by the
anchor's own INT8 offset (hwsearch/anchor.py takes the latter).
``--load-every N`` runs a CPU-bound process beside every Nth session, so
that the recording holds disturbed sessions whatever the host's hour.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEVICES = {"1t": "cpu-1thread.yaml", "2t": "cpu-2threads.yaml"}
TOLERANCE = 0.05
SLOWDOWN_LIMITS = (0.04, 0.06, 0.08, 0.10)


def record(device_file: str, subnets: int, sessions: int, seed: int, int8: bool = False,
           load_every: int = 0) -> dict[str, list[Any]]:
    """Each session's ratios of the same exported subnets, one session after another, and its reference slowdown.

    With ``int8``, each subnet's INT8 file is measured in the same session
    (``int8_ratios``); with ``load_every``, every such session runs beside
    a CPU-bound process (``loaded``).
    """
    from devices.local import measure_model_bytes
    from devices.profile import DeviceProfile
    from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
    from hwsearch.jobs import supernet_builders
    from hwsearch.pipeline import select_subnets
    from hwsearch.supernets import create_supernet

    supernet_builders()
    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    profile = DeviceProfile.load(Path(__file__).resolve().parents[1] / "hwsearch/demo/devices" / device_file)
    models, quantized = _exported(net, select_subnets(net.space, subnets, seed=seed), int8)
    recorded: dict[str, list[Any]] = {"ratios": [], "slowdown": [], "int8_ratios": [], "loaded": []}
    for index in range(sessions):
        started = time.perf_counter()
        loaded = load_every > 0 and index % load_every == load_every - 1
        with _cpu_load(loaded):
            measured = measure_model_bytes(profile, models + quantized, profile.reference_bytes())
        recorded["ratios"].append([m.ratio for m in measured[:len(models)]])
        recorded["int8_ratios"].append([m.ratio for m in measured[len(models):]])
        recorded["slowdown"].append(measured[0].env["reference_slowdown"])
        recorded["loaded"].append(loaded)
        print(f"  session {index + 1}/{sessions}{' (loaded)' if loaded else ''}: "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    return recorded


def _exported(net: Any, archs: list[Any], int8: bool) -> tuple[list[bytes], list[bytes]]:
    """Each subnet's FP32 file and, with ``int8``, its INT8 file (calibrated on random images at its input)."""
    from hwsearch.export import export_subnet
    from hwsearch.quantize import model_input_shape, quantize_onnx

    models, quantized = [], []
    with tempfile.TemporaryDirectory() as folder:
        for index, arch in enumerate(archs):
            path = Path(folder) / f"{index}.onnx"
            export_subnet(net, arch, path, check=False)
            models.append(path.read_bytes())
            if int8:
                images = np.random.default_rng(index).normal(size=(32, *model_input_shape(path)[1:]))
                quantize_onnx(path, Path(folder) / f"{index}-int8.onnx", images.astype(np.float32))
                quantized.append((Path(folder) / f"{index}-int8.onnx").read_bytes())
    return models, quantized


@contextlib.contextmanager
def _cpu_load(on: bool) -> Iterator[None]:
    """A CPU-bound process (matrix products) for the duration, when ``on``."""
    if not on:
        yield
        return
    worker = multiprocessing.get_context("spawn").Process(target=_burn, daemon=True)
    worker.start()
    try:
        yield
    finally:
        worker.terminate()
        worker.join()


def _burn() -> None:
    matrix = np.random.default_rng(0).random((300, 300))
    while True:
        matrix = matrix @ matrix
        matrix /= np.abs(matrix).max()


def subnet_offsets(recording: dict[str, list[Any]]) -> np.ndarray:
    """Each session's ratio of each subnet over that subnet's median, for the subnets usable in every session.

    The medians are the host's undisturbed state's, as the pipeline's
    anchor takes them (:func:`hwsearch.anchor.prevailing_state`, each
    session's reference time standing as its slowdown against the fastest
    session so far): a host that flips between two states puts a plain
    median between them, and every session then reads shifted.
    """
    from hwsearch.anchor import prevailing_state

    ratios = np.array(recording["ratios"], dtype=float)
    ratios = ratios[:, np.all(np.isfinite(ratios), axis=0)]
    references = 1.0 + np.array(recording["slowdown"], dtype=float)
    return ratios / np.median(prevailing_state(ratios, TOLERANCE, references), axis=0)


def score(recording: dict[str, list[Any]], k: int, choices: int, rng: np.random.Generator) -> dict[str, float]:
    """Calm sessions flagged and shifted sessions missed by the k-subnet rule, over anchor choices."""
    offsets = subnet_offsets(recording)
    subnets = offsets.shape[1]
    anchors = [list(c) for c in itertools.combinations(range(subnets), k)]
    if len(anchors) > choices:
        anchors = [anchors[i] for i in rng.choice(len(anchors), choices, replace=False)]
    flagged_calm = calm = missed = shifted = 0
    for anchor in anchors:
        others = [j for j in range(subnets) if j not in anchor]
        truth = np.abs(np.median(offsets[:, others], axis=1) - 1) > TOLERANCE
        verdict = np.abs(np.median(offsets[:, anchor], axis=1) - 1) > TOLERANCE
        flagged_calm += int(np.sum(verdict & ~truth))
        calm += int(np.sum(~truth))
        missed += int(np.sum(~verdict & truth))
        shifted += int(np.sum(truth))
    return {"flagged_calm": flagged_calm / max(calm, 1), "missed": missed / shifted if shifted else float("nan"),
            "shifted_per_choice": shifted / len(anchors)}


def score_slowdown_limits(recorded: dict[str, list[Any]]) -> None:
    """Shifted sessions caught and calm ones flagged by each reference-slowdown limit, as the sessions ran."""
    print("\n| device | shifted sessions | limit | shifted caught | calm flagged |")
    print("|---|---:|---:|---:|---:|")
    for device, recording in recorded.items():
        offsets = subnet_offsets(recording)
        shifted = np.abs(np.median(offsets, axis=1) - 1) > TOLERANCE
        slowdown = np.array(recording["slowdown"])
        for limit in SLOWDOWN_LIMITS:
            flagged = slowdown > limit
            print(f"| {device} | {shifted.sum()} of {shifted.size} | {limit:.2f} | {np.sum(flagged & shifted)} | "
                  f"{np.sum(flagged & ~shifted)} of {np.sum(~shifted)} |")


def _middle(k: int) -> Callable[[int], list[int]]:
    """The k middle places of n subnets ordered by size: the pipeline's anchor (``_middle_by_macs``)."""
    return lambda n: [(n - k) // 2 + i for i in range(k)]


#: Where the anchor's subnets sit among the run's, by size (here by median ratio): (name, indices into by_size).
PLACEMENTS = (("3 smallest", lambda n: [0, 1, 2]), ("3 middle", _middle(3)),
              ("smallest, middle, largest", lambda n: [0, n // 2, n - 1]))
#: Anchor sizes :func:`score_anchor_size` compares, each the k middle subnets by size.
ANCHOR_SIZES = (1, 3, 5, 7)


def score_correction(recorded: dict[str, dict[str, list[Any]]]) -> None:
    """How far the subnets outside the anchor sit from their medians, with and without its correction.

    The anchor is the pipeline's: the three middle subnets by size (here by
    median ratio).  A rule keeps the sessions whose anchor offset is within
    its tolerance (all of them without one), optionally divides each kept
    session's ratios by its offset, and each subnet is then held to its
    median over the kept sessions.
    """
    rules = [("flag 5%", TOLERANCE, False), ("flag 5%, corrected", TOLERANCE, True),
             ("flag 15%, corrected", 0.15, True), ("all sessions", math.inf, False),
             ("all sessions, corrected", math.inf, True)]
    print("\n| device | rule | sessions kept | median deviation | within ±10% | within ±5% |")
    print("|---|---|---:|---:|---:|---:|")
    for device, recording in recorded.items():
        offsets, by_size = _offsets_by_size(recording)
        for name, tolerance, corrected in rules:
            kept, deviation = _corrected_deviation(offsets, by_size, PLACEMENTS[1][1](len(by_size)),
                                                   tolerance, corrected)
            print(f"| {device} | {name} | {kept.sum()} of {kept.size} | {np.median(deviation):.2%} | "
                  f"{np.mean(deviation <= 0.10):.1%} | {np.mean(deviation <= 0.05):.1%} |")


def score_placement(recorded: dict[str, dict[str, list[Any]]]) -> None:
    """The correction (flag at 5%, corrected) and the verdicts for each placement of the anchor by size.

    Subnets of different sizes shift by different amounts in the same
    session, so the anchor's offset corrects best the subnets its own size.
    A session is truly shifted when the median offset of the subnets
    outside the anchor is more than 5% from 1.
    """
    print("\n| device | anchor | sessions kept | median deviation | within ±10% | within ±5% "
          "| calm flagged | shifted missed | every session corrected: median, within ±10% |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for device, recording in recorded.items():
        offsets, by_size = _offsets_by_size(recording)
        for name, place in PLACEMENTS:
            anchor = by_size[place(len(by_size))]
            others = np.setdiff1d(by_size, anchor)
            truth = np.abs(np.median(offsets[:, others], axis=1) - 1) > TOLERANCE
            kept, deviation = _corrected_deviation(offsets, by_size, place(len(by_size)), TOLERANCE, True)
            _, every = _corrected_deviation(offsets, by_size, place(len(by_size)), math.inf, True)
            print(f"| {device} | {name} | {kept.sum()} of {kept.size} | {np.median(deviation):.2%} | "
                  f"{np.mean(deviation <= 0.10):.1%} | {np.mean(deviation <= 0.05):.1%} | "
                  f"{np.sum(~kept & ~truth)} of {np.sum(~truth)} | {np.sum(kept & truth)} of {np.sum(truth)} | "
                  f"{np.median(every):.2%}, {np.mean(every <= 0.10):.1%} |")


def score_anchor_size(recorded: dict[str, dict[str, list[Any]]]) -> None:
    """How far the rows sit from their medians when every session is divided by the offset of k middle subnets.

    As the pipeline reads rows now, every session is corrected, shifted or
    not.  Two sets of rows: the subnets outside the largest anchor compared
    (the same rows for every k), and every subnet (an anchor subnet is
    corrected by an offset it is part of, as its rows are in a run).
    """
    print("\n| device | anchor | rows outside the 7 middle: median, within ±10% | every row: median, within ±10% |")
    print("|---|---|---:|---:|")
    for device, recording in recorded.items():
        offsets, by_size = _offsets_by_size(recording)
        if len(by_size) <= max(ANCHOR_SIZES):
            continue
        held_out = np.setdiff1d(by_size, by_size[_middle(max(ANCHOR_SIZES))(len(by_size))])
        for k in ANCHOR_SIZES:
            session_offset = np.median(offsets[:, by_size[_middle(k)(len(by_size))]], axis=1)
            corrected = offsets / session_offset[:, None]
            every = np.abs(corrected / np.median(corrected, axis=0) - 1)
            outside = every[:, held_out].ravel()
            print(f"| {device} | {k} middle | {np.median(outside):.2%}, {np.mean(outside <= 0.10):.1%} | "
                  f"{np.median(every):.2%}, {np.mean(every <= 0.10):.1%} |")


def _offsets_by_size(recording: dict[str, list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The subnets' offsets (sessions x usable subnets) and the subnets' indices there from smallest to largest."""
    offsets = subnet_offsets(recording)
    ratios = np.array(recording["ratios"], dtype=float)
    return offsets, np.argsort(np.median(ratios[:, np.all(np.isfinite(ratios), axis=0)], axis=0))


def _corrected_deviation(offsets: np.ndarray, by_size: np.ndarray, places: list[int], tolerance: float,
                         corrected: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sessions kept by the anchor at ``places`` (in ``by_size``), the other subnets' deviations from their medians."""
    anchor = by_size[places]
    others = np.setdiff1d(by_size, anchor)
    session_offset = np.median(offsets[:, anchor], axis=1)
    kept = np.abs(session_offset - 1) <= tolerance
    rows = offsets[kept][:, others] / (session_offset[kept, None] if corrected else 1.0)
    return kept, np.abs(rows / np.median(rows, axis=0) - 1).ravel()


def score_precision_offsets(recorded: dict[str, dict[str, list[Any]]]) -> None:
    """How the other subnets' INT8 ratios sit against their medians, divided by no offset, FP32's or INT8's.

    The anchor is the pipeline's (the three middle subnets by size); the
    medians of both precisions are taken over the FP32 files' undisturbed
    state, as :func:`hwsearch.anchor.current_norms` takes them.
    """
    from hwsearch.anchor import undisturbed_sessions

    with_int8 = {device: r for device, r in recorded.items() if any(r.get("int8_ratios") or ())}
    if not with_int8:
        return
    print("\n| device | INT8 rows divided by | median deviation | within ±10% | within ±5% |")
    print("|---|---|---:|---:|---:|")
    for device, recording in with_int8.items():
        fp32, int8 = (np.array(recording[name], dtype=float) for name in ("ratios", "int8_ratios"))
        usable = np.all(np.isfinite(fp32), axis=0) & np.all(np.isfinite(int8), axis=0)
        fp32, int8 = fp32[:, usable], int8[:, usable]
        state = undisturbed_sessions(fp32, TOLERANCE, 1.0 + np.array(recording["slowdown"], dtype=float))
        fp32, int8 = fp32 / np.median(fp32[state], axis=0), int8 / np.median(int8[state], axis=0)
        by_size = np.argsort(np.median(fp32, axis=0))
        anchor = by_size[PLACEMENTS[1][1](len(by_size))]
        others = np.setdiff1d(by_size, anchor)
        fp32_offset, int8_offset = np.median(fp32[:, anchor], axis=1), np.median(int8[:, anchor], axis=1)
        for name, offset in (("nothing", np.ones(len(int8))), ("the FP32 offset", fp32_offset),
                             ("the INT8 offset", int8_offset)):
            deviation = np.abs(int8[:, others] / offset[:, None] - 1).ravel()
            print(f"| {device} | {name} | {np.median(deviation):.2%} | {np.mean(deviation <= 0.10):.1%} | "
                  f"{np.mean(deviation <= 0.05):.1%} |")
        between = int8_offset / fp32_offset
        print(f"{device}: a session's INT8 offset over its FP32 offset ranged {between.min():.2f}-{between.max():.2f} "
              f"(FP32 offsets {fp32_offset.min():.2f}-{fp32_offset.max():.2f})")


def report(recorded: dict[str, dict[str, list[Any]]], choices: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    print("\n| device | sessions x subnets | k | calm sessions flagged | shifted sessions missed |")
    print("|---|---|---:|---:|---:|")
    for device, recording in recorded.items():
        ratios = np.array(recording["ratios"], dtype=float)
        for k in (1, 3, 5):
            found = score(recording, k, choices, rng)
            missed = "-" if np.isnan(found["missed"]) else f"{found['missed']:.0%}"
            print(f"| {device} | {ratios.shape[0]} x {ratios.shape[1]} | {k} | {found['flagged_calm']:.1%} | "
                  f"{missed} (of {found['shifted_per_choice']:.1f}) |")
    for device, recording in recorded.items():
        medians = np.median(subnet_offsets(recording), axis=1)
        print(f"{device}: sessions' median offsets {np.round(medians, 3).tolist()}")
    score_slowdown_limits(recorded)
    score_correction(recorded)
    score_placement(recorded)
    score_anchor_size(recorded)
    score_precision_offsets(recorded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=17)
    parser.add_argument("--sessions", type=int, default=14)
    parser.add_argument("--devices", nargs="+", choices=sorted(DEVICES), default=sorted(DEVICES))
    parser.add_argument("--choices", type=int, default=300, help="anchor choices scored per k (at most)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the recorded ratios here (JSON)")
    parser.add_argument("--from", dest="source", type=Path, help="score recorded ratios instead of measuring")
    parser.add_argument("--int8", action="store_true", help="also measure each subnet's INT8 file")
    parser.add_argument("--load-every", type=int, default=0, help="a CPU-bound process beside every Nth session")
    args = parser.parse_args()
    if args.source:
        recorded = json.loads(args.source.read_text())
    else:
        os.environ["DEVICES_CALIBRATION_DIR"] = tempfile.mkdtemp(prefix="anchor-verdicts-")
        recorded = {}
        for device in args.devices:
            print(f"recording {args.sessions} sessions of {args.subnets} subnets on the {device} device")
            recorded[device] = record(DEVICES[device], args.subnets, args.sessions, args.seed, args.int8,
                                      args.load_every)
        if args.out:
            args.out.write_text(json.dumps(recorded))
    report(recorded, args.choices, args.seed)


if __name__ == "__main__":
    main()
