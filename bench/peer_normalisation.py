"""Does dividing out each round's common move (read from the session's other models) make rows agree better?

Records ``--sessions`` sessions of the same ``--subnets`` demo subnets
(``demo_mbv3_mnist``, its trained checkpoint, spread over MACs) on each demo
device, one session after another on the host lock, each a fixed
``--rounds`` rounds so that both settings judge the same samples; then
judges every session's samples twice (:meth:`devices.protocol.SessionResult.evaluated`),
with ``protocol.peer_normalisation`` on and off.  Per device and setting it
prints the median ratio CI, the share of rows within the device's CI
target, and how far each row sits from its subnet's median over the
sessions once each session's common offset (the median over its subnets,
as an anchor of every subnet would find it) is divided out: median
deviation and the shares within ±10% and ±5%.  ``--int8`` adds each
subnet's INT8 file (onnxruntime static quantization, random calibration
images: latency only) to the same sessions.

    python bench/peer_normalisation.py                    # 16 subnets, 12 sessions, 60 rounds
    python bench/peer_normalisation.py --int8 --subnets 8
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The script's own folder holds bench/predictors.py, which would shadow the predictors package.
sys.path[0] = str(REPO)

from devices.profile import DeviceProfile  # noqa: E402

DEVICES = {"1t": "cpu-1thread.yaml", "2t": "cpu-2threads.yaml"}


def subnet_files(subnets: int, seed: int, int8: bool) -> list[bytes]:
    """The demo subnets' ONNX files (FP32, and each one's INT8 file after it with ``int8``)."""
    from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
    from hwsearch.export import export_subnet
    from hwsearch.jobs import supernet_builders
    from hwsearch.pipeline import select_subnets
    from hwsearch.quantize import model_input_shape, quantize_onnx
    from hwsearch.supernets import create_supernet

    supernet_builders()
    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    files = []
    with tempfile.TemporaryDirectory() as folder:
        for index, arch in enumerate(select_subnets(net.space, subnets, seed=seed)):
            fp32 = Path(folder) / f"{index}.onnx"
            export_subnet(net, arch, fp32, check=False)
            files.append(fp32.read_bytes())
            if int8:
                shape = model_input_shape(fp32)
                images = np.random.default_rng(index).normal(size=(32, *shape[1:])).astype(np.float32)
                quantize_onnx(fp32, Path(folder) / f"{index}.int8.onnx", images)
                files.append((Path(folder) / f"{index}.int8.onnx").read_bytes())
    return files


def record(profile: DeviceProfile, files: list[bytes], sessions: int) -> list[Any]:
    """Each session's result (devices.protocol.SessionResult), measured on the host lock."""
    from devices.hostlock import measurement_session
    from devices.protocol import make_runner, run_protocol

    results = []
    for index in range(sessions):
        with measurement_session():
            reference = make_runner(profile.reference_bytes(), profile)
            results.append(run_protocol(reference, [make_runner(f, profile) for f in files], profile, seed=index))
        print(f"  session {index + 1}/{sessions}: {results[-1].seconds:.1f} s", file=sys.stderr, flush=True)
    return results


def judged(results: list[Any], profile: DeviceProfile) -> tuple[np.ndarray, np.ndarray]:
    """Ratios and CIs (sessions x models) with the profile's settings."""
    models = [session.evaluated(profile) for session in results]
    return (np.array([[m.ratio for m in s] for s in models]), np.array([[m.ratio_ci for m in s] for s in models]))


def agreement(ratios: np.ndarray) -> np.ndarray:
    """Each row's |ratio / its subnet's median − 1| once each session's median offset is divided out."""
    offsets = ratios / np.nanmedian(ratios, axis=0)
    corrected = offsets / np.nanmedian(offsets, axis=1, keepdims=True)
    return np.abs(corrected / np.nanmedian(corrected, axis=0) - 1).ravel()


def with_peers(profile: DeviceProfile, on: bool) -> DeviceProfile:
    return dataclasses.replace(profile, protocol=dataclasses.replace(profile.protocol, peer_normalisation=on))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--int8", action="store_true", help="each subnet's INT8 file in the same sessions")
    parser.add_argument("--devices", nargs="+", default=list(DEVICES), choices=list(DEVICES))
    args = parser.parse_args()
    files = subnet_files(args.subnets, args.seed, args.int8)
    print(f"{len(files)} files per session, {args.sessions} sessions of {args.rounds} rounds per device")
    print("\n| device | peer normalisation | median CI | CI within target | median deviation | within ±10% "
          "| within ±5% |\n|---|---|---:|---:|---:|---:|---:|")
    for device in args.devices:
        profile = DeviceProfile.load(REPO / "hwsearch/demo/devices" / DEVICES[device])
        profile = dataclasses.replace(profile, protocol=dataclasses.replace(
            profile.protocol, min_rounds=args.rounds, max_rounds=args.rounds))
        started = time.perf_counter()
        results = record(profile, files, args.sessions)
        for on in (False, True):
            ratios, cis = judged(results, with_peers(profile, on))
            deviation = agreement(ratios)
            print(f"| {device} | {'on' if on else 'off'} | {np.nanmedian(cis):.2%} | "
                  f"{np.mean(cis <= profile.protocol.ci_target):.0%} | {np.nanmedian(deviation):.2%} | "
                  f"{np.mean(deviation <= 0.10):.1%} | {np.mean(deviation <= 0.05):.1%} |", flush=True)
        print(f"  ({device}: {time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
