"""NSGA-II through real predictors: vectorised evaluation, reproducibility, limits, duplicates.

Ground truth: the predictors are hwsearch's real XGBoost predictors
(``predictors.latency``/``predictors.accuracy``) trained on an analytic,
deterministic target computed from the space's layout (exact MACs and
activation sizes; see ``tests/_search_oracle.py``).  That target is not a
device measurement; it is a real function of the subnet, which is what
search-correctness tests need.
"""

from __future__ import annotations

import numpy as np
import pytest
from _search_oracle import small_space, trained_predictors
from pymoo.core.population import Population

from hwsearch.problem import Limit, Objective, SubnetProblem, accuracy_latency, analytic_costs
from hwsearch.results import hypervolume, non_dominated
from hwsearch.search import CanonicalDuplicates, SearchSettings, search

SETTINGS = SearchSettings(pop_size=40, n_gen=25, seed=3)


@pytest.fixture(scope="module")
def space():
    return small_space(n_stages=2, resolutions=(224,), depths=(2, 3))


@pytest.fixture(scope="module")
def predictors(space):
    return trained_predictors(space, n=150)


@pytest.fixture(scope="module")
def problem(space, predictors):
    accuracy, latency = predictors
    return SubnetProblem(space, {"accuracy": accuracy, "latency_ms": latency})


def test_population_is_scored_in_one_batch_exactly_as_row_by_row(space, predictors, problem):
    accuracy, latency = predictors
    X = space.encode_many(space.sample(1, 64))
    out = problem.evaluate(X, return_as_dictionary=True)
    rows = np.array([[-accuracy.predict(x[None])[0], latency.predict(x[None])[0]] for x in X])
    np.testing.assert_allclose(out["F"], rows, rtol=1e-6)


def test_stale_genes_of_switched_off_blocks_do_not_change_the_score(space, problem):
    X = space.encode_many(space.sample(2, 32))
    noisy = X.copy()
    inactive = ~space.active_block_mask(X)
    start = 1 + len(space.stages)
    for k in range(len(space.block_knobs)):
        cols = slice(start + k * space.n_blocks, start + (k + 1) * space.n_blocks)
        noisy[:, cols] = np.where(inactive, 1, X[:, cols])
    assert not np.array_equal(noisy, X)
    np.testing.assert_array_equal(problem.evaluate(noisy), problem.evaluate(X))


def test_same_seed_same_front_and_another_seed_runs_independently(problem):
    first, again = search(problem, SETTINGS), search(problem, SETTINGS)
    np.testing.assert_array_equal(first.X, again.X)
    for metric in first.values:
        np.testing.assert_array_equal(first.values[metric], again.values[metric])
    other = search(problem, SearchSettings(pop_size=40, n_gen=25, seed=4))
    assert len(other.X) > 0


def test_front_has_no_duplicate_subnets_and_is_non_dominated(space, problem):
    result = search(problem, SETTINGS)
    keys = [space.decode(x).key() for x in result.X]
    assert len(keys) == len(set(keys))
    np.testing.assert_array_equal(result.X, space.canonical_genes(result.X))
    F = np.column_stack([-result.values["accuracy"], result.values["latency_ms"]])
    assert len(non_dominated(F)) == len(F)


def test_duplicate_elimination_judges_canonical_genes(space):
    x = space.encode(space.smallest())
    stale = x.copy()
    inactive = np.flatnonzero(~space.active_block_mask(x[None])[0])
    stale[1 + len(space.stages) + inactive[0]] = 1  # kernel gene of a switched-off block
    assert not np.array_equal(stale, x)
    other = space.encode(space.largest())
    kept = CanonicalDuplicates(space).do(Population.new(X=np.stack([x, stale, other])))
    assert len(kept) == 2


def test_every_front_point_satisfies_every_limit(space, predictors):
    accuracy, latency = predictors
    costs = analytic_costs(space)
    everything = space.encode_many(space.sample(7, 2000))
    lat = latency.predict(everything)
    budget = float(np.quantile(lat, 0.5))
    params_limit = float(np.quantile(costs["params"].predict(everything), 0.7))
    floor = float(np.quantile(accuracy.predict(everything), 0.2))
    limits = [Limit("latency_ms", upper=budget), Limit("params", upper=params_limit),
              Limit("accuracy", lower=floor)]
    problem = SubnetProblem(space, {"accuracy": accuracy, "latency_ms": latency, **costs},
                            limits=limits)
    result = search(problem, SETTINGS)
    assert len(result.X) > 0
    assert result.values["latency_ms"].max() <= budget
    assert result.values["params"].max() <= params_limit
    assert result.values["accuracy"].min() >= floor
    G = problem.evaluate(result.X, return_values_of=["G"])
    assert (G <= 0).all()


def test_params_or_second_device_latency_as_third_objective(space, predictors):
    accuracy, latency = predictors
    _, other_device = trained_predictors(space, n=120, seed=11)
    metrics = {"accuracy": accuracy, "latency_ms": latency, "latency_ms@b": other_device,
               **analytic_costs(space)}
    for third in ("params", "latency_ms@b"):
        objectives = (*accuracy_latency(), Objective(third, "min"))
        result = search(SubnetProblem(space, metrics, objectives), SETTINGS)
        F = np.column_stack([o.to_min(result.values[o.metric]) for o in objectives])
        assert F.shape[1] == 3 and len(non_dominated(F)) == len(F)


def test_a_metric_without_a_predictor_is_refused(space, predictors):
    accuracy, latency = predictors
    with pytest.raises(ValueError, match="params"):
        SubnetProblem(space, {"accuracy": accuracy, "latency_ms": latency},
                      limits=[Limit("params", upper=1e6)])


def test_nsga2_front_matches_the_exhaustive_front_on_a_tiny_space():
    """Every one of the 672 subnets is scored through the same predictors; NSGA-II must
    recover ≥99% of the exhaustive front's hypervolume."""
    space = small_space(n_stages=1)
    accuracy, latency = trained_predictors(space, n=150)
    problem = SubnetProblem(space, {"accuracy": accuracy, "latency_ms": latency})
    every = space.encode_many(list(space.enumerate()))
    assert len(every) == space.size() == 672
    values = problem.predict(every)
    F_all = np.column_stack([-values["accuracy"], values["latency_ms"]])
    ref = F_all.max(axis=0) + 0.05 * np.ptp(F_all, axis=0)
    result = search(problem, SearchSettings(pop_size=40, n_gen=30, seed=0))
    F = np.column_stack([-result.values["accuracy"], result.values["latency_ms"]])
    assert hypervolume(F, ref) / hypervolume(F_all[non_dominated(F_all)], ref) >= 0.99
