"""The target-aware acquisition rules, each on cases where the right pick is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hwsearch.acquisition import (
    MAX_BUDGETS,
    LatencyTargets,
    band_hypervolume,
    best_under,
    expected_improvement,
    pick_for_band,
    pick_for_budgets,
)


@pytest.mark.parametrize("budgets, band, fragment", [
    ((-1.0,), None, "above 0"),
    ((float("nan"),), None, "finite"),
    ((True,), None, "number"),
    ((10**400,), None, "finite"),  # past a float's range: an OverflowError before (Y18)
    (("20",), None, "number"),
    ((), (40.0, 15.0), "below high"),
    ((), (15.0, float("inf")), "finite"),
    (tuple(range(1, MAX_BUDGETS + 2)), None, "at most"),
])
def test_bad_targets_are_refused_with_the_field_named(budgets, band, fragment):
    with pytest.raises(ValueError, match=fragment):
        LatencyTargets(budgets, band)


def test_targets_read_out_of_numpy_arrays_are_numbers():
    """Budgets picked from a predictor's output are numpy float32s (XGBoost predicts float32); they were
    refused as no number."""
    latencies = np.array([12.5, 30.0, 18.0], dtype=np.float32)
    targets = LatencyTargets(tuple(latencies[:2]), (latencies[2], latencies[1]))
    assert targets.budgets_ms == (12.5, 30.0) and targets.band_ms == (18.0, 30.0)
    assert all(type(v) is float for v in targets.budgets_ms + targets.band_ms)
    with pytest.raises(ValueError, match="number"):
        LatencyTargets((np.bool_(True),), None)


def test_targets_parse_the_cli_forms_and_round_trip():
    targets = LatencyTargets.parse("30,15,20,20", "10:40")
    assert targets.budgets_ms == (15.0, 20.0, 30.0)
    assert targets.band_ms == (10.0, 40.0)
    assert targets.ceiling_ms == 40.0
    assert LatencyTargets.from_dict(targets.to_dict()) == targets
    assert not LatencyTargets() and LatencyTargets().ceiling_ms == math.inf
    for bad, option in [("15,x", "targets-ms"), (None, "band-ms")]:
        with pytest.raises(ValueError, match=option):
            LatencyTargets.parse(bad, None if bad else "15-40")


def test_expected_improvement_agrees_with_monte_carlo():
    rng = np.random.default_rng(0)
    mean, std = np.array([0.70, 0.75, 0.80]), np.array([0.02, 0.05, 0.01])
    best = 0.76
    draws = rng.normal(mean, std, size=(400_000, 3))
    empirical = np.maximum(draws - best, 0).mean(axis=0)
    np.testing.assert_allclose(expected_improvement(mean, std, best), empirical, rtol=0.03,
                               atol=2e-5)
    assert np.array_equal(expected_improvement(mean, std, -math.inf), mean)


def test_best_under_takes_the_most_accurate_row_within_the_budget():
    acc, lat = np.array([0.7, 0.9, 0.8]), np.array([10.0, 30.0, 20.0])
    assert best_under(acc, lat, 25.0) == 0.8
    assert best_under(acc, lat, 5.0) == -math.inf


def test_budget_rule_spends_the_batch_under_the_budgets_and_not_beyond():
    # Measured: 0.80 at 19 ms (best under 20), 0.85 at 29 ms (best under 30).
    measured_acc, measured_lat = np.array([0.80, 0.85]), np.array([19.0, 29.0])
    #                 improves @20  improves @30  too slow   worse @20   fast, weak
    acc_mean = np.array([0.83, 0.88, 0.95, 0.78, 0.60])
    lat_mean = np.array([18.0, 28.0, 60.0, 15.0, 5.0])
    std = np.full(5, 0.005)
    picks = pick_for_budgets(acc_mean, std, lat_mean, np.full(5, 0.5), measured_acc,
                             measured_lat, (20.0, 30.0), k=5)
    assert set(picks[:2]) == {0, 1}
    assert 2 not in picks, "a candidate far above every budget must never be measured"


def test_budget_rule_believes_its_picks_so_a_batch_spreads_over_budgets():
    # Two near-identical candidates under 20 ms and a better one under 30 ms.
    # The 20 ms one is picked first (it serves both budgets); after it the twin
    # brings almost no expected gain, so the 30 ms one comes second.
    acc_mean = np.array([0.90, 0.899, 0.95])
    lat_mean = np.array([18.0, 18.1, 28.0])
    picks = pick_for_budgets(acc_mean, np.full(3, 0.001), lat_mean, np.full(3, 0.1),
                             np.array([0.80]), np.array([10.0]), (20.0, 30.0), k=2)
    assert picks == [0, 2]


def test_band_hypervolume_ignores_points_outside_the_band():
    worst = -0.5
    inside = np.array([[-0.8, 20.0]])
    assert band_hypervolume(np.vstack([inside, [-0.99, 80.0]]), (10.0, 40.0), worst) == \
        pytest.approx(band_hypervolume(inside, (10.0, 40.0), worst))
    fast = band_hypervolume(np.array([[-0.8, 1.0]]), (10.0, 40.0), worst)
    at_edge = band_hypervolume(np.array([[-0.8, 10.0]]), (10.0, 40.0), worst)
    assert fast == pytest.approx(at_edge) and fast == pytest.approx(0.3 * 30.0)


def test_band_rule_picks_only_rows_that_improve_inside_the_band():
    measured = np.array([[-0.80, 20.0]])
    F_opt = np.array([[-0.99, 90.0], [-0.85, 25.0], [-0.70, 30.0], [-0.82, 12.0]])
    picks = pick_for_band(F_opt, F_opt, measured, (10.0, 40.0), -0.5, k=4)
    assert 0 not in picks and 2 not in picks
    assert set(picks) == {1, 3}
