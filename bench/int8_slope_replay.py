"""Does a size slope fitted on INT8 rows bring them closer?  A replay of a contention comparison's kept rows.

FP32 rows read now are divided by their session's offset leaned by the
subnet's size (:mod:`hwsearch.shift_slope`); INT8 rows by the INT8 files'
own offset, leaned since 2026-12-04 by a slope fitted at INT8 from the
host's kept sessions' ``subnets_at``, which comparisons kept before then
lack.  This replay asks what an INT8 slope does on any kept comparison.
It reads every job of one ``bench/contention.py --int8 --keep FOLDER``
comparison as the bench does (rows read now, against that comparison's
kept calibration), fits per INT8 target one slope with the product's own
:func:`hwsearch.shift_slope.fit_shift_slope`, over every session of every
run of the comparison (each session's INT8 rows at their own offset), and
prints each cell's median deviation and share within ±10% with the rows
divided by their own offset alone (``unleaned``) and leaned by that slope;
``--slopes`` adds rows leaned by given slopes, to see where the fitted one
lands among them.

    python bench/int8_slope_replay.py KEEP/comparison-1 [--slopes -0.1,-0.05,0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # bench/predictors.py would shadow the predictors package

from bench import contention  # noqa: E402
from hwsearch.shift_slope import ShiftSlope, fit_shift_slope  # noqa: E402

Runs = dict[str, list[contention.Run]]  # "scenario|target" -> that target's runs


def read_comparison(folder: Path) -> Runs:
    """Every job's rows in ``folder``, per scenario and target, read now against the folder's calibration."""
    os.environ[contention.CALIBRATION_DIR_ENV] = str(folder / "calibration")
    runs: Runs = {}
    for path in sorted(folder.glob("*.json")):
        scenario, job = path.stem.split("-")[0], int(path.stem.split("-")[-1])
        for target, run in json.loads(path.read_text()).items():
            stored = contention.Run(target, run["rows"], run["key"], run["network_id"], job=job)
            runs.setdefault(f"{scenario}|{target}", []).append(stored.read_now())
    return runs


def _own_offset_rows(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows divided by their own precision's offset, whose size is known: the ones a slope could lean."""
    return {key: row for key, row in rows.items() if row.get("offset_precision") == row["precision"]
            and row.get("session_offset") and row.get("macs")}


def fit_slope(runs: list[contention.Run], anchor_log_macs: float) -> ShiftSlope:
    """The slope :func:`fit_shift_slope` finds over the runs' sessions, each with its INT8 rows at their own offset."""
    sessions: dict[str, tuple[float, dict[str, tuple[float, float]]]] = {}
    for run in runs:
        for key, row in _own_offset_rows(run.rows).items():
            _, members = sessions.setdefault(str(row["session_id"]), (row["session_offset"], {}))
            members[key] = (row["uncorrected_latency_ms"], row["macs"])
    return fit_shift_slope(sessions.values(), anchor_log_macs)


def leaned(run: contention.Run, b: float, anchor_log_macs: float) -> contention.Run:
    """The run's rows divided by ``offset ** (1 + b × size)`` where their own offset divides them."""
    rows = dict(run.rows)
    for key, row in _own_offset_rows(run.rows).items():
        size = np.log(row["macs"]) - anchor_log_macs
        rows[key] = row | {"latency_ms": row["uncorrected_latency_ms"] / row["session_offset"] ** (1.0 + b * size)}
    return contention.Run(run.device, rows, run.key, run.network_id, job=run.job)


def cells(runs: Runs, target: str, b: float, anchor_log_macs: float) -> dict[str, dict[str, float]]:
    """Median deviation and share within ±10% of the solo runs (against each other) and of each contended scenario."""
    solo = contention.Solo([leaned(run, b, anchor_log_macs) for run in runs[f"a|{target}"]], [1.0])
    out = {"solo": contention.summary(np.concatenate([d for _, d in contention.solo_noise(solo)]))}
    for scenario in ("b", "c"):
        if f"{scenario}|{target}" in runs:
            out[scenario] = contention.summary(np.concatenate(
                [contention.contended(leaned(run, b, anchor_log_macs), solo) for run in runs[f"{scenario}|{target}"]]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comparison", type=Path, help="one comparison folder of bench/contention.py --keep")
    parser.add_argument("--slopes", type=_slopes, default=[], help="also lean by these slopes (comma-separated)")
    args = parser.parse_args()
    if not (args.comparison / "calibration").is_dir():
        parser.error(f"{args.comparison} holds no kept calibration: not a bench/contention.py --keep comparison")
    runs = read_comparison(args.comparison)
    for target in sorted({name.split("|")[1] for name in runs if name.endswith("-int8")}):
        every = [run for name, target_runs in runs.items() if name.endswith("|" + target) for run in target_runs]
        a_row = next(iter(every[0].rows.values()))
        macs = {key: row["macs"] for run in every for key, row in run.rows.items()}
        anchor_log_macs = float(np.mean(np.log([macs[key] for key in a_row["anchor_keys"]])))
        found = fit_slope(every, anchor_log_macs)
        print(f"\n{target}: slope {found.slope:+.3f} ({found.pairs} pairs)")
        for label, slope in (("unleaned", 0.0), ("leaned", found.slope), *((f"{b:+.3f}", b) for b in args.slopes)):
            read = cells(runs, target, slope, anchor_log_macs)
            print(f"  {label:9s}" + "  ".join(f"{name}: {cell['median']:.2%} {cell['within_10']:.1%}"
                                              for name, cell in read.items()))


def _slopes(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


if __name__ == "__main__":
    main()
