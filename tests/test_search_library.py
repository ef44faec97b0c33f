"""hwsearch as a search library: own objectives, sub-spaces, stopping rules, warm starts, operators.

Objectives are the analytic oracle of ``tests/_search_oracle.py`` (exact
per-stage MACs and activation sizes, not a device measurement) called as
plain functions, plus hwsearch's real fitted predictors where a test is
about predictors.  Every search here is a real run of the engine.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from _search_oracle import AnalyticOracle, small_space, trained_predictors
from pymoo.optimize import minimize

from hwsearch.batch import ArchBatch
from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.operators import effective_genes, mutate
from hwsearch.problem import Cost, Limit, Objective, SubnetProblem
from hwsearch.results import Candidate, ParetoFront, non_dominated
from hwsearch.search import SearchSettings, _rank_and_crowd, build_nsga2, search
from predictors.latency import LatencyPredictor


class Recorder:
    """A vectorised objective that remembers every subnet and batch it was asked about."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.batches: list[ArchBatch] = []

    def __call__(self, batch: ArchBatch) -> np.ndarray:
        self.batches.append(batch)
        return self.fn(batch.genes)

    @property
    def rows(self) -> np.ndarray:
        return np.vstack([b.genes for b in self.batches])


@pytest.fixture(scope="module")
def space():
    return small_space(n_stages=2, resolutions=(160, 224), depths=(2, 3))


def oracle_problem(space, limits=(), recorder_for=("latency_ms",)):
    oracle = AnalyticOracle(space)
    fns = {"accuracy": oracle.accuracy, "latency_ms": oracle.latency_ms}
    metrics = {name: Recorder(fn) if name in recorder_for else (lambda b, fn=fn: fn(b.genes))
               for name, fn in fns.items()}
    objectives = (Objective("accuracy", "max"), Objective("latency_ms"))
    return SubnetProblem(space, metrics, objectives, limits), metrics


# --------------------------------------------------------------------------- objectives


def test_function_objectives_share_one_decoded_batch_per_population(space):
    seen: list[tuple[int, int]] = []

    def params_like(batch: ArchBatch) -> np.ndarray:
        seen.append((id(batch), id(batch.archs())))
        return (batch.kernel ** 2 * batch.expand).sum(axis=1) * batch.resolution

    def blocks(batch: ArchBatch) -> np.ndarray:
        seen.append((id(batch), id(batch.archs())))
        return batch.n_active.astype(float)

    problem = SubnetProblem(space, {"cost": params_like, "blocks": blocks},
                            (Objective("cost"), Objective("blocks")))
    result = search(problem, SearchSettings(pop_size=20, n_gen=4, seed=0))
    assert len(seen) == 2 * result.n_gen
    assert all(a == b for a, b in zip(seen[::2], seen[1::2])), "both objectives got one batch"
    archs = [space.decode(x) for x in result.X]
    expected = [sum(k * k * e for k, e in zip(a.kernel, a.expand)) * a.resolution for a in archs]
    np.testing.assert_allclose(result.values["cost"], expected)


def test_a_predictor_needs_only_predict(space):
    oracle = AnalyticOracle(space)

    class OnlyPredict:
        def predict(self, X: np.ndarray) -> np.ndarray:
            return oracle.latency_ms(X)

    problem = SubnetProblem(space, {"accuracy": Cost(oracle.accuracy),
                                    "latency_ms": OnlyPredict()})
    result = search(problem, SearchSettings(pop_size=20, n_gen=5, seed=1))
    np.testing.assert_allclose(result.values["latency_ms"], oracle.latency_ms(result.X))


@pytest.mark.parametrize("shape", [lambda n: 1, lambda n: (n // 2, 2), lambda n: (1, n), lambda n: (n, 2)],
                         ids=["one", "half-rows-of-two", "one-row", "two-columns"])
def test_a_metric_returning_another_shape_is_named(space, shape):
    """Flattened first, an (n/2, 2) array passed as n values, each row scored with another row's."""
    problem = SubnetProblem(space, {"accuracy": lambda b: np.zeros(shape(len(b))), "latency_ms": lambda b:
                                    np.zeros(len(b))})
    says = r"'accuracy' returned shape \(.*\) for 10 rows; expected \(10,\) or \(10, 1\)"
    with pytest.raises(ValueError, match=says):
        search(problem, SearchSettings(pop_size=10, n_gen=2))
    column = SubnetProblem(space, {"accuracy": lambda b: np.zeros((len(b), 1)), "latency_ms": lambda b:
                                   np.zeros(len(b))})
    assert column.predict(space.encode_many(space.sample(0, 3)))["accuracy"].shape == (3,)


def test_a_metric_returning_words_is_named(space):
    problem = SubnetProblem(space, {"accuracy": lambda b: ["a"] * len(b), "latency_ms": lambda b: np.zeros(len(b))})
    with pytest.raises(ValueError, match="metric 'accuracy' returned something other than numbers"):
        problem.predict(space.encode_many(space.sample(0, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_metric_returning_non_finite_values_is_named(space, bad):
    """A NaN accuracy reached the front as [nan, 4.4] (unsorted), an inf one made a one-point front."""
    oracle = AnalyticOracle(space)
    metrics = {"accuracy": lambda b: np.where(b.resolution == 160, bad, oracle.accuracy(b.genes)),
               "latency_ms": lambda b: oracle.latency_ms(b.genes)}
    problem = SubnetProblem(space, metrics, (Objective("accuracy", "max"), Objective("latency_ms")))
    with pytest.raises(ValueError, match=r"'accuracy' returned \d+ non-finite value\(s\) .* for 20 rows"):
        search(problem, SearchSettings(pop_size=20, n_gen=3))


@pytest.mark.parametrize("sense", ["maximize", "MAX", "", None])
def test_an_objective_sense_other_than_min_or_max_is_refused(sense):
    """'maximize' was accepted and silently minimised."""
    with pytest.raises(ValueError, match=f"sense of 'accuracy' must be 'min' or 'max', got {sense!r}"):
        Objective("accuracy", sense)


@pytest.mark.parametrize("kwargs, message", [
    ({"upper": float("nan")}, "Limit upper of 'latency_ms' must be a finite number, got nan"),
    ({"lower": float("inf")}, "Limit lower of 'latency_ms' must be a finite number"),
    ({"upper": "20"}, "Limit upper of 'latency_ms' must be a number, got '20'"),
    ({"upper": True}, "Limit upper of 'latency_ms' must be a number, got True"),
    ({}, "needs an upper or a lower bound"),
    ({"upper": 1.0, "lower": 5.0}, "lower=5 is above upper=1"),
])
def test_a_limit_that_no_search_can_use_is_refused_when_made(kwargs, message):
    """A NaN bound crashed the search in tournament selection; a string failed at the first scoring."""
    with pytest.raises(ValueError, match=re.escape(message)):
        Limit("latency_ms", **kwargs)


def test_a_limit_keeps_its_bounds_as_floats():
    assert Limit("params", upper=np.int64(5), lower=2) == Limit("params", upper=5.0, lower=2.0)
    assert Limit("latency_ms", upper=3.0, lower=3.0).n_constr == 2


def test_survival_ranks_a_nan_violation_as_infeasible_instead_of_dropping_the_row():
    """A NaN violation is neither <= 0 nor > 0: such rows used to vanish, and a population of
    them left no parent to select (``high <= 0`` in the tournament)."""
    F = np.array([[1.0, 2.0], [2.0, 1.0], [0.5, 0.5], [3.0, 3.0]])
    CV = np.array([0.0, np.nan, np.nan, 0.5])
    keep, rank, _ = _rank_and_crowd(F, CV, n_survive=4)
    assert sorted(keep.tolist()) == [0, 1, 2, 3]
    assert keep[0] == 0 and keep[1] == 3, "feasible first, then by violation, NaN last"
    keep, _, _ = _rank_and_crowd(F[1:3], CV[1:3], n_survive=2)
    assert sorted(keep.tolist()) == [0, 1]


# --------------------------------------------------------------------------- sub-spaces


def test_full_space_predictor_scores_a_sub_space_through_mapped_genes(space, tmp_path):
    _, latency = trained_predictors(space, n=120)
    sub = space.restrict(resolutions=(224,), kernels=(7,))
    oracle = AnalyticOracle(space)
    problem = SubnetProblem(sub, {"accuracy": lambda b: oracle.accuracy(sub.genes_in(space, b.genes)),
                                  "latency_ms": latency})
    result = search(problem, SearchSettings(pop_size=20, n_gen=6, seed=2))
    archs = [sub.decode(x) for x in result.X]
    assert {a.resolution for a in archs} == {224} and {k for a in archs for k in a.kernel} == {7}
    np.testing.assert_allclose(result.values["latency_ms"],
                               latency.predict(space.encode_many(archs)), rtol=1e-6)


def test_a_saved_predictor_refuses_a_sub_space_and_a_sub_space_predictor_the_full_space(
        space, tmp_path):
    sub = space.restrict(resolutions=(224,))
    oracle = AnalyticOracle(space)
    X = sub.encode_many(sub.sample(0, 80))
    fitted = LatencyPredictor(sub, n_estimators=20, n_members=2, cv_folds=1, seed=0).fit(
        X, oracle.latency_ms(sub.genes_in(space, X)))
    fitted.save(tmp_path / "sub")
    assert LatencyPredictor.load(tmp_path / "sub", space=sub).predict(X).shape == (80,)
    with pytest.raises(ValueError, match="space"):
        LatencyPredictor.load(tmp_path / "sub", space=space)
    with pytest.raises(ValueError, match="cannot score"):
        SubnetProblem(space, {"accuracy": Cost(oracle.accuracy), "latency_ms": fitted})


# --------------------------------------------------------------------------- stopping


def test_max_evals_is_exact_and_counts_every_evaluation(space):
    problem, metrics = oracle_problem(space)
    result = search(problem, SearchSettings(pop_size=40, n_gen=1000, max_evals=250, seed=0))
    assert result.n_evals == 250 == len(metrics["latency_ms"].rows)
    assert result.stopped_by == "max_evals"


def test_max_seconds_stops_a_long_run():
    space = ofa_mbv3_space()  # 10^19 subnets: only the clock can end this run
    problem = SubnetProblem(space, {"macs": lambda b: (b.kernel ** 2 * b.expand).sum(axis=1),
                                    "res": lambda b: -b.resolution.astype(float)},
                            (Objective("macs"), Objective("res")))
    result = search(problem, SearchSettings(pop_size=20, n_gen=10**6, max_seconds=0.3))
    assert result.stopped_by == "max_seconds"
    assert 0.3 <= result.seconds < 5.0 and result.n_evals > 20


def test_callback_sees_progress_and_stops_the_run(space):
    problem, _ = oracle_problem(space)
    calls = []

    def stop_at_three(progress) -> bool:
        calls.append((progress.n_gen, progress.n_evals, len(progress.front_X)))
        return progress.n_gen == 3

    result = search(problem, SearchSettings(pop_size=20, n_gen=50, seed=0), callback=stop_at_three)
    assert result.stopped_by == "callback" and result.n_gen == 3
    assert [c[0] for c in calls] == [1, 2, 3]
    assert [c[1] for c in calls] == [20, 40, 60]
    assert all(c[2] > 0 for c in calls)


def test_a_small_space_is_searched_without_evaluating_any_subnet_twice():
    space = small_space(n_stages=1)
    problem, metrics = oracle_problem(space)
    result = search(problem, SearchSettings(pop_size=40, n_gen=200, seed=0))
    keys = [row.tobytes() for row in metrics["latency_ms"].rows]
    assert len(keys) == len(set(keys)) == result.n_evals
    assert result.n_evals <= space.size() == 672
    every = space.encode_many(list(space.enumerate()))
    values = problem.predict(every)
    F = np.column_stack([-values["accuracy"], values["latency_ms"]])
    assert len(result.X) >= 0.9 * len(non_dominated(F))


# --------------------------------------------------------------------------- warm start


def test_warm_start_evaluates_every_given_subnet_first(space):
    problem, metrics = oracle_problem(space)
    given = space.sample(42, 60)  # more than a population
    result = search(problem, SearchSettings(pop_size=20, n_gen=3, seed=0), initial=given)
    first = {row.tobytes() for row in metrics["latency_ms"].batches[0].genes}
    assert {x.tobytes() for x in space.encode_many(given)} <= first
    assert result.n_evals == len(first) + 2 * 20


def test_warm_start_from_a_previous_result_and_a_measured_front(space):
    problem, _ = oracle_problem(space)
    first = search(problem, SearchSettings(pop_size=20, n_gen=5, seed=0))
    again, metrics = oracle_problem(space)
    search(again, SearchSettings(pop_size=20, n_gen=2, seed=1), initial=first)
    batch = {row.tobytes() for row in metrics["latency_ms"].batches[0].genes}
    assert {x.tobytes() for x in first.X} <= batch
    front = ParetoFront.build(device="x", space_name=space.name, candidates=first.candidates(),
                              objectives=first.objectives, reference_point=(0.0, 100.0),
                              seed=0, source="predicted")
    third, metrics = oracle_problem(space)
    search(third, SearchSettings(pop_size=20, n_gen=2, seed=1), initial=front)
    batch = {row.tobytes() for row in metrics["latency_ms"].batches[0].genes}
    assert {x.tobytes() for x in space.encode_many([p.arch for p in front.points])} <= batch


def test_a_sub_space_front_warm_starts_the_full_space(space):
    sub = space.restrict(resolutions=(224,))
    narrow, _ = oracle_problem(sub)
    first = search(narrow, SearchSettings(pop_size=20, n_gen=4, seed=0))
    wide, metrics = oracle_problem(space)
    search(wide, SearchSettings(pop_size=20, n_gen=2, seed=0), initial=first)
    batch = [space.decode(x) for x in metrics["latency_ms"].batches[0].genes]
    assert {a.key() for a in batch} >= {sub.decode(x).key() for x in first.X}


def test_warm_start_takes_subnets_as_dicts_native_forms_included(space):
    """The docs say from_dict's forms are read everywhere; a dict in initial raised an AttributeError."""
    mbv3 = ofa_mbv3_space()
    problem = SubnetProblem(mbv3, {"macs": Cost(lambda X: X.sum(axis=1).astype(float)),
                                   "res": lambda b: -b.resolution.astype(float)},
                            (Objective("macs"), Objective("res")))
    chosen = [mbv3.largest(160), mbv3.smallest(192)]
    result = search(problem, SearchSettings(pop_size=4, n_gen=1, max_evals=2),
                    initial=[mbv3.to_native(chosen[0]), chosen[1].to_dict()])
    assert {mbv3.decode(x).key() for x in result.X} <= {a.key() for a in chosen} and result.n_evals == 2


def test_fractional_genes_are_refused_not_truncated_or_rounded(space):
    """decode truncated gene 0.6 to 0 while a problem's predict rounded it to 1: one row, two subnets."""
    problem, _ = oracle_problem(space)
    genes = space.encode(space.smallest(160)).astype(float)
    genes[0] = 0.6
    says = r"gene [01]=0.6 is not a whole number \(an index into the choices\)"
    sub = space.restrict(resolutions=(160, 224))
    sub_genes = sub.encode(sub.smallest(160)).astype(float)
    sub_genes[1] = 0.6
    earlier = search(problem, SearchSettings(pop_size=4, n_gen=1, max_evals=4))
    for call in (lambda: space.decode(genes), lambda: space.decode_batch(genes[None]),
                 lambda: problem.predict(genes[None]),
                 lambda: search(problem, SearchSettings(pop_size=4, n_gen=1), initial=genes[None]),
                 lambda: search(problem, SearchSettings(pop_size=4, n_gen=1),
                                initial=dataclasses.replace(earlier, X=genes[None])),
                 lambda: sub.genes_in(space, sub_genes[None])):
        with pytest.raises(ValueError, match=says):
            call()
    top = space.encode(space.largest(224)).astype(float) + 0.4
    with pytest.raises(ValueError, match=rf"gene 0={float(top[0])!r} is outside 0..{top[0]:.0f}"):
        space.decode(top)
    for bad, says in ((np.full(space.n_var, np.nan), "gene 0=nan is outside"),
                      (np.array(["0"] * space.n_var), "genes must be whole numbers")):
        with pytest.raises(ValueError, match=says):
            space.decode(bad)
    assert space.decode(genes.round()) == space.decode(genes.round().astype(int))  # whole floats are genes


@pytest.mark.parametrize("call, says", [
    (lambda s, m: SubnetProblem(s, m, ("accuracy",)), "objectives must hold Objective objects"),
    (lambda s, m: SubnetProblem(s, m, Objective("accuracy")), "objectives must be a sequence of Objective"),
    (lambda s, m: SubnetProblem(s, m, limits=[("latency_ms", 3)]), "limits must hold Limit objects"),
    (lambda s, m: SubnetProblem(None, m), "space must be a SearchSpace, got NoneType"),
    (lambda s, m: SubnetProblem(s, [m]), "metrics must map names"),
    (lambda s, m: search(None), "problem must be a SubnetProblem, got NoneType"),
    (lambda s, m: search(SubnetProblem(s, m), {"pop_size": 4}), r"settings must be SearchSettings"),
], ids=["objective-names", "one-objective", "limit-tuples", "no-space", "metric-list", "no-problem",
        "settings-dict"])
def test_arguments_of_the_wrong_kind_are_named(space, call, says):
    """Each raised an AttributeError from inside ('str' object has no attribute 'metric')."""
    oracle = AnalyticOracle(space)
    metrics = {"accuracy": lambda b: oracle.accuracy(b.genes), "latency_ms": lambda b: oracle.latency_ms(b.genes)}
    with pytest.raises(TypeError, match=says):
        call(space, metrics)


def test_a_cost_made_for_another_network_with_the_same_genes_is_refused():
    """MACs of w1.0 scored w1.2's largest subnet at 566 M (it has 843 M), and a 10-class head's at 1,000 classes'."""
    from hwsearch.problem import analytic_costs

    full = ofa_mbv3_space(1.0)
    macs = analytic_costs(full)["macs"]
    for other in (ofa_mbv3_space(1.2), ofa_mbv3_space(1.0, n_classes=10)):
        assert other.encode(other.largest(224)).shape == full.encode(full.largest(224)).shape
        with pytest.raises(ValueError, match=r"metric 'm' .* are other networks \(their fixed layouts"):
            SubnetProblem(other, {"m": macs}, (Objective("m"),))
        result = search(SubnetProblem(other, {"m": analytic_costs(other)["macs"]}, (Objective("m"),)),
                        SearchSettings(pop_size=4, n_gen=1, max_evals=4))
        # Its front still seeds this network's search, as subnets each scored again by this problem.
        seeded = search(SubnetProblem(full, {"m": macs}, (Objective("m"),)),
                        SearchSettings(pop_size=4, n_gen=1, max_evals=len(result.X)), initial=result)
        assert {full.decode(x).key() for x in seeded.X} <= {other.decode(x).key() for x in result.X}
    sub = full.restrict(resolutions=(160, 176))
    mapped = SubnetProblem(sub, {"m": macs}, (Objective("m"),)).predict(sub.encode_many([sub.largest(176)]))["m"]
    np.testing.assert_array_equal(mapped, macs.predict(full.encode_many([full.largest(176)])))


def test_warm_start_refuses_subnets_outside_the_space(space):
    problem, _ = oracle_problem(space.restrict(resolutions=(224,)))
    with pytest.raises(ValueError, match="160"):
        search(problem, SearchSettings(pop_size=10, n_gen=2), initial=[space.largest(160)])


@pytest.mark.parametrize("initial, message", [
    ("abc", r"initial must be a list of subnets \(ArchConfig or dicts\).*got str"),
    (7, "initial must be a list of subnets.*got int"),
    ({"r": 160}, "got a single one: wrap it in a list"),
    ([1, 2, 3], r"initial\[0\] must be an ArchConfig or a dict, got int"),
    ([None], r"initial\[0\] must be an ArchConfig or a dict, got NoneType"),
])
def test_a_warm_start_of_the_wrong_type_is_refused_naming_initial(space, initial, message):
    """Each failed with AttributeError: '<type>' object has no attribute 'resolution', deep in space.py."""
    problem, _ = oracle_problem(space)
    with pytest.raises(TypeError, match=message):
        search(problem, SearchSettings(pop_size=10, n_gen=2), initial=initial)
    with pytest.raises(TypeError, match="expected an ArchConfig, got str"):
        space.encode("x")


def test_warm_start_genes_of_another_width_are_refused_not_reshaped(space):
    """Rows of twice the width were reshaped into twice the rows: subnets nobody chose."""
    problem, _ = oracle_problem(space)
    rows = space.encode_many(space.sample(3, 2))
    doubled = np.concatenate([rows, rows], axis=1)  # 2 rows of 2 * n_var genes
    for bad in (doubled, np.zeros((3, 5), dtype=np.int64), rows[:, :-1]):
        with pytest.raises(ValueError, match=f"rows of {space.n_var} genes"):
            search(problem, SearchSettings(pop_size=10, n_gen=2), initial=bad)
    search(problem, SearchSettings(pop_size=10, n_gen=2), initial=rows[0])  # one row on its own is a row


# --------------------------------------------------------------------------- operators


def test_mutation_always_changes_the_subnet_and_only_through_effective_genes():
    rng = np.random.default_rng(0)
    for space in (ofa_mbv3_space(), ofa_mbv3_space().restrict(kernels=(5,), resolutions=(224,))):
        xl, xu = space.bounds()
        X = space.canonical_genes(rng.integers(xl, xu + 1, size=(3000, space.n_var)))
        Y = mutate(space, X, 1.0 / space.n_var, rng)
        changed = Y != X
        assert (space.canonical_genes(Y) != X).any(axis=1).all()
        assert not (changed & ~effective_genes(space, X)).any()
        assert (Y >= xl).all() and (Y <= xu).all()
        assert 1.0 <= changed.sum(axis=1).mean() <= 2.0


@pytest.mark.parametrize("kind", ["uniform", "two_point", "sbx"])
def test_every_crossover_gives_a_valid_front(space, kind):
    problem, _ = oracle_problem(space, limits=[Limit("latency_ms", upper=5.0)])
    result = search(problem, SearchSettings(pop_size=24, n_gen=8, crossover=kind, seed=0))
    assert len(result.X) > 0 and result.values["latency_ms"].max() <= 5.0
    F = np.column_stack([-result.values["accuracy"], result.values["latency_ms"]])
    assert len(non_dominated(F)) == len(F)


def test_unknown_crossover_is_refused(space):
    with pytest.raises(ValueError, match="crossover"):
        SearchSettings(pop_size=10, n_gen=2, crossover="one_point")


@pytest.mark.parametrize("kwargs, message", [
    ({"pop_size": 10.5}, "pop_size must be a whole number, got 10.5"),  # a slicing TypeError mid-run
    ({"pop_size": True}, "pop_size must be a whole number, got True"),
    ({"pop_size": 1}, "pop_size must be ≥ 2, got 1"),
    ({"n_gen": 0}, "n_gen must be ≥ 1, got 0"),
    ({"n_gen": "5"}, "n_gen must be a whole number, got '5'"),
    ({"seed": -1}, "seed must be ≥ 0, got -1"),
    ({"seed": 1.5}, "seed must be a whole number, got 1.5"),
    ({"crossover_prob": 5}, "crossover_prob must be in [0, 1], got 5"),  # accepted: always crossed
    ({"crossover_prob": float("nan")}, "crossover_prob must be a finite number, got nan"),
    ({"crossover_eta": -1.0}, "crossover_eta must be ≥ 0, got -1.0"),
    ({"mutation_rate": 0.0}, "mutation_rate must be in (0, 1], got 0.0"),
    ({"mutation_rate": float("nan")}, "mutation_rate must be a finite number, got nan"),
    ({"max_evals": 2.5}, "max_evals must be a whole number, got 2.5"),
    ({"max_seconds": -1}, "max_seconds must be ≥ 0, got -1"),
    ({"max_seconds": float("nan")}, "max_seconds must be a finite number, got nan"),
])
def test_search_settings_are_checked_when_made(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SearchSettings(**kwargs)


def test_search_settings_take_numpy_numbers_and_record_plain_ones(space):
    settings = SearchSettings(pop_size=np.int64(12), n_gen=np.int32(2), crossover_prob=np.float32(0.5),
                              max_seconds=10)
    assert type(settings.pop_size) is int and type(settings.crossover_prob) is float
    json.dumps(settings.to_dict())
    problem, _ = oracle_problem(space)
    assert len(search(problem, settings)) > 0


def test_pymoo_minimize_still_runs_the_same_operators(space):
    problem, _ = oracle_problem(space)
    res = minimize(problem, build_nsga2(space, SearchSettings(pop_size=20)), ("n_gen", 5), seed=0)
    assert res.F.shape[1] == 2 and len(res.F) > 0


# --------------------------------------------------------------------------- results


def test_predicted_front_answers_like_a_measured_one(space):
    problem, _ = oracle_problem(space)
    result = search(problem, SearchSettings(pop_size=30, n_gen=10, seed=0))
    lat, acc = result.values["latency_ms"], result.values["accuracy"]
    budget = float(np.median(lat))
    best = result.best_under(budget)
    assert isinstance(best, Candidate)
    assert best.predicted["accuracy"] == acc[lat <= budget].max()
    fastest = result.fastest_above(float(np.median(acc)))
    assert fastest.predicted["latency_ms"] == lat[acc >= np.median(acc)].min()
    knee = result.knee()
    assert knee.arch in [space.decode(x) for x in result.X]
    assert result.best_under(lat.min() / 2) is None


def test_query_helpers_compare_the_results_own_objectives(space):
    """A result without a metric named 'accuracy' answered best_under with KeyError: 'accuracy'."""
    oracle = AnalyticOracle(space)
    problem = SubnetProblem(space, {"top1": lambda b: oracle.accuracy(b.genes),
                                    "latency_ms@phone": lambda b: oracle.latency_ms(b.genes)},
                            (Objective("top1", "max"), Objective("latency_ms@phone")))
    result = search(problem, SearchSettings(pop_size=30, n_gen=5, seed=0))
    lat, acc = result.values["latency_ms@phone"], result.values["top1"]
    budget, floor = float(np.median(lat)), float(np.median(acc))
    assert result.best_under(budget).predicted["top1"] == acc[lat <= budget].max()
    assert result.fastest_above(floor).predicted["latency_ms@phone"] == lat[acc >= floor].min()
    named = result.best_under(budget, latency="latency_ms@phone", accuracy="top1")
    assert named == result.best_under(budget)


def test_query_helpers_name_the_metric_they_cannot_choose(space):
    problem = SubnetProblem(space, {"cost": lambda b: b.resolution * 1.0,
                                    "blocks": lambda b: b.n_active * 1.0},
                            (Objective("cost"), Objective("blocks")))
    result = search(problem, SearchSettings(pop_size=10, n_gen=2, seed=0))
    with pytest.raises(ValueError, match="no 'latency_ms' metric and 2 minimised objectives"):
        result.best_under(200.0)
    with pytest.raises(ValueError, match="no 'accuracy' metric and no maximised objectives"):
        result.fastest_above(1.0, latency="cost")
    with pytest.raises(ValueError, match="accuracy metric 'acc' is not on this front"):
        result.best_under(200.0, latency="cost", accuracy="acc")
    assert result.best_under(200.0, latency="cost", accuracy="blocks") is not None
    with pytest.raises(ValueError, match="latency_ms must be a number, got '20'"):
        result.best_under("20", latency="cost", accuracy="blocks")


def test_search_and_space_import_without_torch():
    code = ("import sys, numpy as np\n"
            "import hwsearch.search, hwsearch.problem, hwsearch.batch\n"
            "from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space\n"
            "s = ofa_mbv3_space().restrict(resolutions=(160, 224))\n"
            "s.decode_batch(s.encode_many(s.sample(0, 4))).native()\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'ray') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr
