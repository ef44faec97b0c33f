"""What running onnxruntime's quantizer in hwsearch's child process costs against running it in this process.

hwsearch quantizes in a reused child process (``hwsearch/quantize_worker.py``)
so that onnxruntime's staging files live in a temp folder hwsearch can
clear after a kill.  This bench quantizes the same exported subnets both
ways, interleaved (in-process, then child, ``--reps`` times) so the host's
speed states fall on both alike, and prints per supernet:

* the child's first call (its start: a Python process importing onnx and
  onnxruntime's quantizer, then one quantization);
* the median time of each way and the median and range of the per-pair
  ratio child / in-process (ratios within one pair share the host's state);
* whether both ways produced the same bytes (they must: same library, same inputs).

Usage::

    python bench/quantizer_child.py --supernets demo_mbv3_mnist ofa_mbv3_d234_e346_k357_w1.0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/predictors.py would shadow predictors


_HEADER = {"batch": 1, "input_name": "input", "method": "minmax", "per_channel": True}


def _in_process(model: bytes, images: np.ndarray, scratch: Path) -> bytes:
    """The child's own quantizing function, called in this process: only the process differs."""
    from hwsearch.quantize_worker import _quantize

    return _quantize(model, images, _HEADER, scratch)


def _in_child(model: bytes, images: np.ndarray) -> bytes:
    from hwsearch.quantize_worker import quantize_in_child

    return quantize_in_child(model, images, _HEADER["batch"], input_name=_HEADER["input_name"],
                             method=_HEADER["method"], per_channel=_HEADER["per_channel"])


def _timed(call: Any) -> tuple[float, bytes]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def compare(supernet: str, n_images: int, reps: int, scratch: Path) -> dict[str, Any]:
    from hwsearch.export import export_onnx
    from hwsearch.supernets import create_supernet

    net = create_supernet(supernet)
    size = max(net.space.resolutions)
    path = scratch / f"{supernet}.onnx"
    export_onnx(net.extract(net.space.sample(np.random.default_rng(0), 1)[0]), path,
                input_shape=(1, 3, size, size))
    images = np.random.default_rng(0).standard_normal((n_images, 3, size, size)).astype(np.float32)
    model = path.read_bytes()
    first_child, _ = _timed(lambda: _in_child(model, images))
    _in_process(model, images, scratch)  # this process's first call pays its imports, as the child's did
    here, child, same = [], [], True
    for _ in range(reps):
        seconds, ours = _timed(lambda: _in_process(model, images, scratch))
        here.append(seconds)
        seconds, theirs = _timed(lambda: _in_child(model, images))
        child.append(seconds)
        same &= ours == theirs
    ratios = [c / h for c, h in zip(child, here)]
    return {"supernet": supernet, "n_images": n_images, "first_child_call_s": first_child,
            "in_process_median_s": statistics.median(here), "child_median_s": statistics.median(child),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "same_bytes": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernets", nargs="+", default=["demo_mbv3_mnist", "ofa_mbv3_d234_e346_k357_w1.0"])
    parser.add_argument("--images", type=int, default=32, help="calibration images (profiling uses 32)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = [compare(name, args.images, args.reps, Path(scratch)) for name in args.supernets]
    for r in results:
        print(f"{r['supernet']}: first child call {r['first_child_call_s']:.2f} s; "
              f"in-process {r['in_process_median_s']:.3f} s, child {r['child_median_s']:.3f} s (medians); "
              f"child/in-process {r['ratio_median']:.3f} (range {r['ratio_min']:.3f}-{r['ratio_max']:.3f}); "
              f"same bytes: {r['same_bytes']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
