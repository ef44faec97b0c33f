"""Refinement aimed at latency targets, on the analytic oracle where the answer is known.

The oracle's latencies on this space run from about 0.8 to 6.8 (its units);
budgets of 1.6 and 2.0 sit in the fast quarter of the space, where a
whole-front run spends few of its measurements.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _search_oracle import OracleMeasurer, small_space, trained_predictors

from hwsearch.acquisition import LatencyTargets, best_under
from hwsearch.refine import RefineSettings, refine
from hwsearch.search import SearchSettings
from predictors.features import ArchFeaturizer

SETTINGS = RefineSettings(max_measurements=40, per_round=10, initial=10, kappa=1.0, seed=1,
                          search=SearchSettings(pop_size=32, n_gen=15))
BUDGETS = (1.6, 2.0)


@pytest.fixture(scope="module")
def space():
    return small_space(n_stages=2, resolutions=(160, 192, 224), depths=(2, 3, 4))


def _run(space, targets: LatencyTargets, seed: int = 1):
    accuracy, latency = trained_predictors(space, n=10, seed=5)
    measurer = OracleMeasurer(space)
    result = refine(space, accuracy, latency, measurer, device="dev",
                    settings=dataclasses.replace(SETTINGS, seed=seed), targets=targets)
    return result, measurer


def _chosen_latencies(result) -> np.ndarray:
    return np.array([o.latency_ms for o in result.observations if o.round > 0])


@pytest.mark.parametrize("targets", [LatencyTargets(BUDGETS), LatencyTargets(band_ms=(1.4, 2.0))],
                         ids=["budgets", "band"])
def test_targets_move_the_measurements_to_the_latencies_that_matter(space, targets):
    limit = 1.1 * targets.ceiling_ms
    aimed, _ = _run(space, targets)
    whole, _ = _run(space, LatencyTargets())
    share_aimed = np.mean(_chosen_latencies(aimed) <= limit)
    share_whole = np.mean(_chosen_latencies(whole) <= limit)
    assert share_aimed >= 0.9, share_aimed
    assert share_whole <= 0.5, share_whole


def test_front_answers_each_budget_with_the_best_measured_subnet_under_it(space):
    result, measurer = _run(space, LatencyTargets(BUDGETS), seed=2)
    assert len(measurer.calls) == len(set(measurer.calls)) == 40
    acc = np.array([o.accuracy for o in result.observations])
    lat = np.array([o.latency_ms for o in result.observations])
    picks = result.front.target_picks()
    assert [p["budget_ms"] for p in picks] == list(BUDGETS)
    for pick in picks:
        point = result.front.points[pick["index"]]
        assert point.measured["latency_ms"] <= pick["budget_ms"]
        assert point.measured["accuracy"] == best_under(acc, lat, pick["budget_ms"])
    assert result.front.settings["targets"]["budgets_ms"] == list(BUDGETS)


def test_cold_start_sample_spans_the_space_in_macs(space):
    result, _ = _run(space, LatencyTargets())
    first = [o.arch for o in result.observations if o.round == 0]
    macs = ArchFeaturizer(space).macs(space.encode_many(first))
    extremes = ArchFeaturizer(space).macs(space.encode_many([space.smallest(), space.largest()]))
    assert macs.min() == extremes[0] and macs.max() == extremes[1]
