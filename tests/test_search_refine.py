"""Predictor-guided refinement with real predictors and a real (analytic) measurer.

The measurer labels subnets with the deterministic analytic oracle of
``tests/_search_oracle.py`` (roofline cost model for latency, a saturating
capacity function for accuracy) - not a device, but a real function of each
subnet - and records every subnet it is asked to measure, so the tests can
prove the loop's bookkeeping: budgets, no re-measurement, measured-only fronts.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from _search_oracle import OracleMeasurer, small_space, trained_predictors

from hwsearch.acquisition import LatencyTargets
from hwsearch.problem import Limit
from hwsearch.refine import Observation, RefineSettings, refine
from hwsearch.results import non_dominated
from hwsearch.search import SearchSettings

SETTINGS = RefineSettings(max_measurements=30, per_round=10, initial=10, kappa=1.0, seed=1,
                          search=SearchSettings(pop_size=32, n_gen=15))


@pytest.fixture(scope="module")
def space():
    return small_space(n_stages=2, resolutions=(192, 224), depths=(2, 3))


def _run(space, measurer, **kwargs):
    accuracy, latency = trained_predictors(space, n=10, seed=5)
    return refine(space, accuracy, latency, measurer, device="dev-a",
                  **({"settings": SETTINGS} | kwargs))


def test_budget_is_spent_exactly_and_nothing_is_measured_twice(space):
    measurer = OracleMeasurer(space)
    result = _run(space, measurer)
    assert len(measurer.calls) == len(set(measurer.calls)) == 30
    assert [o.arch.key() for o in result.observations] == measurer.calls
    assert result.rounds == 2
    assert {o.round for o in result.observations} == {0, 1, 2}


def test_front_holds_only_measured_subnets_with_predictions_made_before_measuring(space):
    measurer = OracleMeasurer(space)
    result = _run(space, measurer)
    front = result.front
    measured = {o.arch.key(): o for o in result.observations}
    assert front.points and all(p.arch.key() in measured for p in front.points)
    F = np.array([[-p.measured["accuracy"], p.measured["latency_ms"]] for p in front.points])
    assert len(non_dominated(F)) == len(F)
    everything = np.array([[-o.accuracy, o.latency_ms] for o in result.observations])
    assert len(front.points) == len(non_dominated(everything))
    for point in front.points:
        obs = measured[point.arch.key()]
        if obs.round > 0:
            assert set(point.predicted) == set(point.spread) == {"accuracy", "latency_ms"}
        else:
            assert point.predicted == {}
        assert point.macs > 0 and point.params > 0
    assert front.hypervolume > 0 and front.settings["n_new"] == 30


def test_known_measurements_are_reused_and_never_measured_again(space):
    oracle = OracleMeasurer(space)
    archs = space.sample(9, 12)
    archs = list({a.key(): a for a in archs}.values())
    known = [Observation(a, acc, lat) for a, acc, lat in
             zip(archs, oracle.measure_accuracy(archs), oracle.measure_latency(archs))]
    measurer = OracleMeasurer(space)
    result = _run(space, measurer, known=known)
    assert not set(measurer.calls) & {a.key() for a in archs}
    assert len(measurer.calls) == 30  # no cold-start design: known already covers it
    assert len(result.observations) == 30 + len(known)


def test_limits_hold_on_measured_values(space):
    measurer = OracleMeasurer(space)
    budget = float(np.median(measurer.oracle.latency_ms(space.encode_many(space.sample(3, 300)))))
    result = _run(space, OracleMeasurer(space), limits=[Limit("latency_ms", upper=budget),
                                                        Limit("params", upper=3.0e6)])
    assert result.front.points
    for point in result.front.points:
        assert point.measured["latency_ms"] <= budget and point.params <= 3.0e6


@pytest.mark.parametrize("limits, targets, error, message", [
    ([Limit("latncy_ms", upper=1.0)], LatencyTargets(), ValueError,
     "limits name metric(s) ['latncy_ms'] refinement does not have"),
    ([{"metric": "latency_ms", "upper": 1.0}], LatencyTargets(), TypeError,
     "limits must be Limit objects"),
    ([], {"budgets_ms": [15.0]}, TypeError, "targets must be LatencyTargets"),
])
def test_unusable_limits_and_targets_are_refused_before_anything_is_measured(
        space, limits, targets, error, message):
    """A misspelt limit failed only after the initial design had measured 10 subnets, losing them."""
    measurer = OracleMeasurer(space)
    with pytest.raises(error, match=re.escape(message)):
        _run(space, measurer, limits=limits, targets=targets)
    assert measurer.calls == []


def test_time_budget_stops_after_the_cold_start(space):
    measurer = OracleMeasurer(space)
    settings = RefineSettings(max_measurements=500, per_round=10, initial=10, max_seconds=0.0,
                              search=SearchSettings(pop_size=16, n_gen=5))
    result = _run(space, measurer, settings=settings)
    assert len(measurer.calls) == 10 and result.rounds == 0


def test_same_seed_same_measurements(space):
    first = _run(space, OracleMeasurer(space))
    again = _run(space, OracleMeasurer(space))
    assert [o.arch for o in first.observations] == [o.arch for o in again.observations]
    assert first.front.to_dict()["points"] == again.front.to_dict()["points"]


class _MeasuresUnderTheHostLock(OracleMeasurer):
    """Takes the host's measurement session as a local device does: refused inside a compute hold."""

    def measure_latency(self, archs: list) -> list[float]:
        from devices.hostlock import measurement_session

        with measurement_session():
            return super().measure_latency(archs)


def test_fitting_and_searching_hold_the_compute_lock_and_measuring_does_not(space, tmp_path,
                                                                              monkeypatch):
    from contextlib import contextmanager

    from devices.hostlock import compute_unit

    monkeypatch.setenv("DEVICES_LOCK_DIR", str(tmp_path / "locks"))
    rounds_in_compute = []

    @contextmanager
    def counted_compute_unit():
        with compute_unit() as hold:
            rounds_in_compute.append(hold)
            yield hold

    measurer = _MeasuresUnderTheHostLock(space)
    result = _run(space, measurer, compute=counted_compute_unit)
    assert len(rounds_in_compute) == result.rounds == 2
    assert len(measurer.calls) == 30, "every batch was measured, outside the compute hold"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("initial", 1, "initial must be ≥ 2, got 1"),
    ("initial", 2.5, "initial must be a whole number, got 2.5"),
    ("per_round", 0, "per_round must be ≥ 1, got 0"),
    ("max_measurements", True, "max_measurements must be a whole number, got True"),
    ("kappa", float("nan"), "kappa must be a finite number, got nan"),
    ("kappa", -1.0, "kappa must be ≥ 0, got -1.0"),
    ("max_seconds", "60", "max_seconds must be a number, got '60'"),
    ("seed", -3, "seed must be ≥ 0, got -3"),
])
def test_refine_settings_refuse_what_no_loop_can_use(field, value, message):
    """Checked where they are made, as SearchSettings are: ``initial=2.5`` once failed rounds into a run."""
    with pytest.raises(ValueError, match=re.escape(message)):
        RefineSettings(**{field: value})
    with pytest.raises(TypeError, match="search must be SearchSettings"):
        RefineSettings(search={"pop_size": 8})
