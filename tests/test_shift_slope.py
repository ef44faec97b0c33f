"""The slope of a session's shift by subnet size: fitted from subnets measured twice, applied at read time.

Sessions are generated from a known model (each subnet's true ratio, its
session's offset raised to ``1 + slope × size``, and noise of the host's
size), so the fit can be held to the slope that made them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hwsearch.shift_slope import MIN_PAIRS, fit_shift_slope

ANCHOR_LOG_MACS = math.log(2e7)


def sessions_of(slope: float, offsets: list[float], *, subnets: int = 30, noise: float = 0.015, seed: int = 0,
                prefix: str = "s"
                ) -> tuple[list[tuple[float, dict[str, tuple[float, float]]]], dict[str, tuple[float, float]]]:
    """Sessions measuring every subnet, one per offset, and each subnet's (true ratio, MACs)."""
    rng = np.random.default_rng(seed)
    truth = {f"{prefix}{i}": (float(rng.uniform(0.5, 3.0)), float(math.exp(ANCHOR_LOG_MACS + rng.uniform(-1.2, 1.2))))
             for i in range(subnets)}
    sessions = []
    for offset in offsets:
        members = {}
        for key, (ratio, macs) in truth.items():
            size = math.log(macs) - ANCHOR_LOG_MACS
            members[key] = (ratio * offset ** (1 + slope * size) * math.exp(rng.normal(0, noise)), macs)
        sessions.append((offset, members))
    return sessions, truth


@pytest.mark.parametrize("slope", [-0.3, 0.0, 0.2])
def test_the_slope_that_made_the_sessions_is_found(slope: float) -> None:
    sessions, _ = sessions_of(slope, [1.0, 1.02, 0.97, 1.35, 1.5, 0.8])
    found = fit_shift_slope(sessions, ANCHOR_LOG_MACS)
    assert found.slope == pytest.approx(slope, abs=0.05) and found.pairs >= MIN_PAIRS


def test_sessions_at_one_offset_or_too_few_pairs_say_nothing() -> None:
    same, _ = sessions_of(-0.3, [1.2, 1.2, 1.2])
    assert fit_shift_slope(same, ANCHOR_LOG_MACS).slope == 0.0
    few, _ = sessions_of(-0.3, [1.0, 1.5], subnets=MIN_PAIRS - 1)
    assert fit_shift_slope(few, ANCHOR_LOG_MACS) == (0.0, MIN_PAIRS - 1)
    assert fit_shift_slope(sessions_of(-0.3, [1.5])[0], ANCHOR_LOG_MACS) == (0.0, 0)  # measured once each


def test_a_wild_measurement_does_not_move_the_slope() -> None:
    sessions, _ = sessions_of(-0.3, [1.0, 1.4, 0.9])
    clean = fit_shift_slope(sessions, ANCHOR_LOG_MACS).slope
    ratio, macs = sessions[1][1]["s0"]
    sessions[1][1]["s0"] = (3.0 * ratio, macs)  # one subnet read 3x in one session
    assert fit_shift_slope(sessions, ANCHOR_LOG_MACS).slope == pytest.approx(clean, abs=0.02)


def test_a_few_pairs_move_the_slope_only_part_of_the_way() -> None:
    """The ridge: a slope standing on little evidence is pulled towards 0, never past it."""
    many, _ = sessions_of(-0.5, [1.0, 1.3, 0.8, 1.5], noise=0.0)
    few, _ = sessions_of(-0.5, [1.0, 1.05], subnets=MIN_PAIRS, noise=0.0)
    assert fit_shift_slope(many, ANCHOR_LOG_MACS).slope == pytest.approx(-0.5, abs=0.01)
    assert -0.5 < fit_shift_slope(few, ANCHOR_LOG_MACS).slope < 0.0


def _row(key: str, session: str, ended: float, anchor_ratios: list[float], ratio: float, macs: float,
         precision: str = "fp32") -> dict[str, Any]:
    """A stored row of the anchor ("a", "b", "c") as a run stores it, uncorrected (its run had no verdict)."""
    return {"anchor_keys": ["a", "b", "c"], "anchor_ratios": anchor_ratios, "anchor_precision": "fp32",
            "anchor_shas": ["1", "2", "3"], "anchor_tolerance": 0.05, "session_id": session, "precision": precision,
            "ratio": ratio, "latency_ms": 2.0 * ratio, "ratio_ci": 0.01, "macs": macs, "stable": True,
            "session_stable": True, "env": {"session_end": ended, "session_reference_ms": 1.0,
                                            "unstable_reasons": []}}


def test_rows_read_now_are_leaned_by_the_slope_the_hosts_sessions_show(calibration_dir: Path) -> None:
    """A slow session's small and large subnets read right once the slope fitted from the host's sessions leans them.

    The host kept, from runs with other stores, sessions measuring the same
    subnets at offsets 1.0-1.5; this store holds one run: three calm
    sessions of the anchor and one 1.5x-slow session whose subnets shifted
    by ``1.5 ** (1 - 0.3 × size)``.  INT8 rows of that session are corrected by the offset alone.
    """
    from hwsearch.anchor import Anchor, FileLabel, HostRecord, in_current_norm

    slope = -0.3
    sessions, truth = sessions_of(slope, [1.0, 1.02, 0.98, 1.3, 1.5, 1.25], noise=0.005)
    anchor_macs = (2e7, 2e7, 2e7)
    record = Anchor(("a", "b", "c"), [Path("a"), Path("b"), Path("c")], archs=({}, {}, {}), shas=("1", "2", "3"),
                    macs=anchor_macs)
    labels = {Path(key): FileLabel(key, int(macs), "fp32") for key, (_, macs) in truth.items()}
    for index, (offset, members) in enumerate(sessions):
        anchor_ratios = [offset * r for r in (1.0, 2.0, 3.0)]
        record.observe(f"kept{index}", [_measured(r) for r in anchor_ratios],
                       members={Path(key): ratio for key, (ratio, _) in members.items()})
    HostRecord("device", "network").remember(record, "fp32", labels)

    rows = {}
    for index in range(3):
        rows[f"calm{index}"] = _row("calm", f"calm{index}", 100.0 + index, [1.0, 2.0, 3.0], 1.0, 2e7)
    slow = sessions_of(slope, [1.5], seed=1, prefix="t")[0][0][1]  # other subnets, measured once, slow
    rows |= {key: _row(key, "slow", 200.0, [1.5, 3.0, 4.5], ratio, macs) for key, (ratio, macs) in slow.items()}
    rows["int8"] = _row("int8", "slow", 200.0, [1.5, 3.0, 4.5], 1.5 * 2.0, 4e7, precision="int8")
    truth_slow = sessions_of(slope, [1.0], seed=1, noise=0.0, prefix="t")[0][0][1]

    now = in_current_norm(rows, "device", "network")
    plain = [abs(now[k]["uncorrected_ratio"] / 1.5 / truth_slow[k][0] - 1) for k in slow]
    leaned = [abs(now[k]["ratio"] / truth_slow[k][0] - 1) for k in slow]
    assert now["t0"]["offset_slope"] == pytest.approx(slope, abs=0.05)
    assert np.median(leaned) < 0.02 < np.median(plain)
    assert max(leaned) < 0.05 < max(plain)
    assert now["int8"]["ratio"] == pytest.approx(2.0) and now["int8"]["row_offset"] == pytest.approx(1.5)
    assert now["int8"]["offset_slope"] == 0.0  # what it was leaned by: nothing
    assert now["calm0"]["ratio"] == pytest.approx(1.0)  # a calm session is not leaned, whatever the slope


def test_int8_rows_read_now_are_leaned_by_the_slope_fitted_on_the_int8_files_own_offsets(calibration_dir: Path) -> None:
    """At INT8 the host's sessions shifted by their own offsets and leaned with size; INT8 rows read now follow suit.

    The kept sessions measured each subnet at FP32, shifted by the session's
    offset alone, and at INT8, shifted by the INT8 files' own offset
    (``1 + (offset - 1) / 2``) raised to ``1 - 0.3 × size``.  A slow session
    of this store (offsets 1.5 and 1.25) measured other subnets once: its
    INT8 rows read right once leaned by the INT8 slope, and its FP32 row is
    leaned by the FP32 slope (about 0), not by the INT8 one.
    """
    from hwsearch.anchor import Anchor, FileLabel, HostRecord, host_spreads, in_current_norm

    slope, precisions = -0.3, ("fp32", "int8")
    offsets = [1.0, 1.02, 0.98, 1.3, 1.5, 1.25]
    fp32_sessions, truth = sessions_of(0.0, offsets, noise=0.005)
    int8_sessions, _ = sessions_of(slope, [1 + (offset - 1) / 2 for offset in offsets], noise=0.005)
    record = Anchor(("a", "b", "c"), [Path(f"{key}.{p}") for key in "abc" for p in precisions], archs=({}, {}, {}),
                    shas=("1", "2", "3"), macs=(20_000_000,) * 3, precisions=precisions)
    labels = {Path(f"{key}.{p}"): FileLabel(key, int(macs), p) for key, (_, macs) in truth.items() for p in precisions}
    for index, ((offset, fp32), (int8_offset, int8)) in enumerate(zip(fp32_sessions, int8_sessions)):
        anchor_files = [_measured(ratio) for base in (1.0, 2.0, 3.0)
                        for ratio in (offset * base, int8_offset * base / 2)]
        members = {Path(f"{key}.{p}"): ratio for p, measured in zip(precisions, (fp32, int8))
                   for key, (ratio, _) in measured.items()}
        record.observe(f"kept{index}", anchor_files, members=members)
    HostRecord("device", "network").remember(record, "fp32", labels)

    calm_int8 = {"anchor_ratios_at": {"int8": [0.5, 1.0, 1.5]}}
    rows = {f"calm{index}": _row("calm", f"calm{index}", 100.0 + index, [1.0, 2.0, 3.0], 1.0, 2e7) | calm_int8
            for index in range(3)}
    slow_int8 = {"anchor_ratios_at": {"int8": [0.625, 1.25, 1.875]}}
    slow = sessions_of(slope, [1.25], seed=1, prefix="t")[0][0][1]  # other subnets, measured once, at INT8
    rows |= {key: _row(key, "slow", 200.0, [1.5, 3.0, 4.5], ratio, macs, precision="int8") | slow_int8
             for key, (ratio, macs) in slow.items()}
    rows["fp32"] = _row("fp32", "slow", 200.0, [1.5, 3.0, 4.5], 1.5 * 2.0, 4e7) | slow_int8
    truth_slow = sessions_of(slope, [1.0], seed=1, noise=0.0, prefix="t")[0][0][1]

    now = in_current_norm(rows, "device", "network")
    assert {now[key]["offset_precision"] for key in slow} == {"int8"}
    assert now["t0"]["session_offset"] == pytest.approx(1.25, rel=0.01)
    assert now["t0"]["offset_slope"] == pytest.approx(slope, abs=0.05)
    plain = [abs(now[k]["uncorrected_ratio"] / now[k]["session_offset"] / truth_slow[k][0] - 1) for k in slow]
    leaned = [abs(now[k]["ratio"] / truth_slow[k][0] - 1) for k in slow]
    assert np.median(leaned) < 0.02 < np.median(plain)
    assert max(leaned) < 0.05 < max(plain)
    assert now["fp32"]["offset_slope"] == pytest.approx(0.0, abs=0.05)
    assert now["fp32"]["ratio"] == pytest.approx(2.0, rel=0.02)
    [shown] = host_spreads("device")  # what `hwsearch devices show` prints, from the kept sessions alone
    assert shown["offset_slope"] == pytest.approx(0.0, abs=0.05)
    assert shown["offset_slopes_at"]["int8"]["offset_slope"] == pytest.approx(slope, abs=0.05)


def _measured(ratio: float) -> Any:
    from devices.measure import Measurement

    return Measurement(model_sha256="0" * 64, latency_ms=ratio, ratio=ratio, ratio_ci=0.01, median_ms=ratio,
                       p10_ms=ratio, p90_ms=ratio, p99_ms=ratio, min_ms=ratio, mad_ms=0.0, n_runs=10,
                       stable=True, device_hash="d", env={"session_reference_ms": 1.0})
