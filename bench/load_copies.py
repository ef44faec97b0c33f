"""What makes a model loaded later run faster?  Copies of one file in bare onnxruntime, under changed conditions.

``bench/load_order.py`` found that a model's place in its session's load
order moves its ratio: loaded last it read up to 5% faster than loaded
first.  This bench looks for the mechanism without the protocol in the
way.  It exports one demo subnet (``--precision``, MACs rank ``--rank`` of
24), then for each arm starts a fresh process that loads ``--copies``
InferenceSessions of those same bytes, warms each up, and runs them
round-robin in a random order for ``--rounds`` rounds, ``--trials`` times.
Each trial gives every copy its median over the copies' median; the bench
fits a line through those log ratios against load place and prints the
first-to-last move with a 90% interval from resampling trials.

Arms (each one change from ``default``; the arms take turns over
``--repeats`` so they share the hour):

* ``malloc-mmap-low`` / ``malloc-mmap-high``: glibc's mmap threshold pinned
  at 4 KiB (every large buffer its own mapping) or 1 GiB (every buffer on
  the heap), which also stops glibc moving the threshold as buffers are
  freed;
* ``warm-reverse``: warm-up runs the copies last loaded first;
* ``inputs-first``: the input arrays are allocated before the sessions;
* ``no-prepack``: ``session.disable_prepacking``;
* ``no-optimisation``: ``ORT_DISABLE_ALL`` graph optimisation;
* ``no-arena``: ``enable_cpu_mem_arena`` off, so each buffer is its own
  allocation rather than a slice of the session's arena;
* ``hugepages``: glibc asks for transparent huge pages on its heap and
  mappings (``glibc.malloc.hugetlb=1``), so a copy's place in memory no
  longer decides how many pages (and TLB entries) its buffers span;
* ``numpy``: no onnxruntime; copies of eight 256x256 float32 weights, a
  matmul-and-ReLU chain over each (is it the host's memory, whoever uses it?).

    python bench/load_copies.py --precision int8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # bench/predictors.py would shadow the predictors package

ARMS = ("default", "malloc-mmap-low", "malloc-mmap-high", "warm-reverse", "inputs-first",
        "no-prepack", "no-optimisation", "no-arena", "hugepages", "numpy")
MALLOC = {"malloc-mmap-low": {"MALLOC_MMAP_THRESHOLD_": "4096"},
          "malloc-mmap-high": {"MALLOC_MMAP_THRESHOLD_": str(2 ** 30), "MALLOC_TRIM_THRESHOLD_": str(2 ** 30)},
          "hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}
WARM_UP_RUNS = 20
BOOTSTRAP = 1000


def exported_file(precision: str, rank: int, folder: Path) -> Path:
    """The demo subnet of MACs rank ``rank`` among the 24 the contention bench uses, at ``precision``."""
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
    archs = select_subnets(net.space, 24, seed=0)
    macs = [export_subnet(net, arch, folder / "probe.onnx", check=False).macs for arch in archs]
    arch = archs[int(np.argsort(macs, kind="stable")[rank])]
    calibration = None
    if precision == "int8":
        _, heldout = write_digits(folder)
        calibration = calibration_part(DataPlan(str(heldout)).open(size=max(net.space.resolutions)))
    path = folder / f"rank{rank}-{precision}.onnx"
    export_subnet(net, arch, path, precision=precision, calibration=calibration)
    return path


def onnx_copies(model: bytes, copies: int, threads: int, arm: str
                ) -> tuple[list[Callable[[], Any]], Callable[[], None]]:
    """``copies`` sessions of one model, loaded in order, as run callables; and their warm-up in the arm's order."""
    import onnxruntime as ort

    def session() -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if arm == "no-prepack":
            options.add_session_config_entry("session.disable_prepacking", "1")
        if arm == "no-optimisation":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if arm == "no-arena":
            options.enable_cpu_mem_arena = False
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    probe = session()
    spec = probe.get_inputs()[0]
    del probe
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if arm == "inputs-first":
        inputs = [data.copy() for _ in range(copies)]
        sessions = [session() for _ in range(copies)]
    else:
        sessions = [session() for _ in range(copies)]
        inputs = [data.copy() for _ in range(copies)]
    runs = [lambda s=s, x=x: s.run(None, {spec.name: x}) for s, x in zip(sessions, inputs)]
    return runs, lambda: _warm_up(runs[::-1] if arm == "warm-reverse" else runs)


def numpy_copies(copies: int) -> tuple[list[Callable[[], Any]], Callable[[], None]]:
    """The control: the same small weights copied ``copies`` times in order, a matmul chain over each."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((256, 256)).astype(np.float32) for _ in range(8)]
    data = rng.standard_normal((16, 256)).astype(np.float32)

    def chain(ws: list[np.ndarray], x: np.ndarray) -> np.ndarray:
        for w in ws:
            x = np.maximum(x @ w, 0.0) * 0.05
        return x

    loaded = [([w.copy() for w in weights], data.copy()) for _ in range(copies)]
    runs = [lambda ws=ws, x=x: chain(ws, x) for ws, x in loaded]
    return runs, lambda: _warm_up(runs)


def _warm_up(runs: list[Callable[[], Any]]) -> None:
    for run in runs:
        for _ in range(WARM_UP_RUNS):
            run()


def child(args: argparse.Namespace) -> None:
    """One arm in this fresh process: prints each trial's log(copy median / median of copies), in load order."""
    table = []
    model = None if args.arm == "numpy" else args.onnx.read_bytes()
    for _ in range(args.trials):
        if model is None:
            runs, warm_up = numpy_copies(args.copies)
        else:
            runs, warm_up = onnx_copies(model, args.copies, args.threads, args.arm)
        warm_up()
        times: list[list[float]] = [[] for _ in runs]
        for _ in range(args.rounds):
            for index in random.sample(range(len(runs)), len(runs)):
                start = time.perf_counter()
                runs[index]()
                times[index].append(time.perf_counter() - start)
        medians = np.array([np.median(t) for t in times])
        table.append(np.log(medians / np.median(medians)).tolist())
    print(json.dumps(table))


def run_arm(arm: str, onnx: Path, args: argparse.Namespace) -> np.ndarray:
    """The arm's trials × copies table, from a fresh process with the arm's environment."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), **MALLOC.get(arm, {})}
    command = [sys.executable, __file__, "--child", arm, "--onnx", str(onnx), "--copies", str(args.copies),
               "--rounds", str(args.rounds), "--trials", str(args.trials), "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]))


def first_to_last(table: np.ndarray) -> float:
    """The slope of log ratio against load place (0 first, 1 last), as a relative move."""
    places = np.tile(np.linspace(0.0, 1.0, table.shape[1]), table.shape[0])
    return float(np.expm1(np.polyfit(places, table.ravel(), 1)[0]))


def report(arm: str, table: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    draws = [first_to_last(table[rng.integers(0, len(table), len(table))]) for _ in range(BOOTSTRAP)]
    low, high = np.percentile(draws, [5, 95])
    by_place = " ".join(f"{value:+.2%}" for value in np.expm1(table.mean(axis=0)))
    last_fastest = int((table.argmin(axis=1) == table.shape[1] - 1).sum())
    print(f"{arm:17s} first->last {first_to_last(table):+7.2%} (90% {low:+.2%}..{high:+.2%})  by place {by_place}"
          f"  last fastest in {last_fastest}/{len(table)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    parser.add_argument("--rank", type=int, default=12, help="MACs rank of the subnet among 24 (0 smallest)")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--trials", type=int, default=30, help="fresh loads per arm and repeat")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="times every arm runs, the arms taking turns")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=ARMS, dest="arm", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm is not None:
        child(args)
        return
    if not 0 <= args.rank < 24 or args.copies < 2 or args.trials < 2:
        parser.error("--rank must be 0-23, with at least 2 copies and 2 trials")
    with tempfile.TemporaryDirectory() as folder:
        onnx = exported_file(args.precision, args.rank, Path(folder))
        tables: dict[str, list[np.ndarray]] = {arm: [] for arm in args.arms}
        for repeat in range(args.repeats):
            for arm in args.arms[repeat % len(args.arms):] + args.arms[:repeat % len(args.arms)]:
                tables[arm].append(run_arm(arm, onnx, args))
            print(f"  repeat {repeat + 1}/{args.repeats} done", flush=True)
    print(f"\n{args.copies} copies of the {args.precision} demo subnet of MACs rank {args.rank}/24, "
          f"{args.threads} thread(s), {args.rounds} rounds, {args.trials} trials x {args.repeats} repeats per arm")
    for arm, parts in tables.items():
        report(arm, np.concatenate(parts), args.seed)


if __name__ == "__main__":
    main()
