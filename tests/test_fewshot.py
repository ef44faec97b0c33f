"""Few-shot latency: per-operator features, and transfer vs from-scratch chosen by CV on the shots.

Devices are synthetic but built from the real analytic cost model: a
*compute-bound* device whose latency is a sum of per-kind MAC costs, and an
*overhead-bound* one whose latency is a fixed cost per operator plus memory
traffic (the regime of batch 1, small inputs, fast cores).  Their subnet
orders disagree, which is the case where transferring one device's predictor
to the other goes wrong.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import stats

from hwsearch.costs import OVERHEAD_KINDS
from hwsearch.demo import demo_space
from hwsearch.space import SearchSpace
from predictors.features import ArchFeaturizer
from predictors.fewshot import KEEP_WITHIN_SE, FewShotLatencyPredictor, _average_weights
from predictors.latency import LatencyPredictor

SPACE = demo_space()
_OP_MS = {"ops_dw": 0.004, "ops_pw": 0.003, "ops_se": 0.006, "ops_elem": 0.0015,
          "ops_pool": 0.002}


def _genes(space: SearchSpace, n: int, seed: int) -> np.ndarray:
    xl, xu = space.bounds()
    return space.canonical_genes(np.random.default_rng(seed).integers(xl, xu + 1,
                                                                      size=(n, space.n_var)))


def _noise(n: int, seed: int, sd: float = 0.01) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(0.0, sd, n))


def compute_bound(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Latency (ms) proportional to MACs, depthwise MACs three times dearer."""
    columns = ArchFeaturizer(SPACE).costs(X).columns
    ms = 0.05 + sum((3.0 if "_macs_dw" in k else 1.0) * v for k, v in columns.items()
                    if "_macs" in k) / 2e6
    return ms * _noise(len(X), seed)


def overhead_bound(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Latency (ms) of a fixed cost per operator plus memory traffic, MACs nearly free."""
    columns = ArchFeaturizer(SPACE).costs(X).columns
    ms = np.full(len(X), 0.03)
    for name, value in columns.items():
        kind = name.split("_", 1)[1] if name.startswith("s") and name[1].isdigit() else name
        ms = ms + _OP_MS.get(kind, 0.0) * value
        if kind.startswith("mem_"):
            ms = ms + 2e-8 * value
    return ms * _noise(len(X), seed)


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.kendalltau(a, b).statistic)


@pytest.fixture(scope="module")
def test_rows() -> np.ndarray:
    return _genes(SPACE, 300, 99)


@pytest.fixture(scope="module")
def compute_source() -> LatencyPredictor:
    X = _genes(SPACE, 200, 1)
    return LatencyPredictor(SPACE, cv_folds=0, n_members=0, n_estimators=50).fit(
        X, compute_bound(X, 1))


@pytest.fixture(scope="module")
def overhead_source() -> LatencyPredictor:
    X = _genes(SPACE, 200, 2)
    return LatencyPredictor(SPACE, cv_folds=0, n_members=0, n_estimators=50).fit(
        X, overhead_bound(X, 2))


# --------------------------------------------------------------------------- features


def test_operator_counts_and_traffic_are_features_of_every_stage() -> None:
    featurizer = ArchFeaturizer(SPACE)
    for stage in range(len(SPACE.stages)):
        for kind in OVERHEAD_KINDS:
            assert f"s{stage}_{kind}" in featurizer.cost_names
    X = _genes(SPACE, 50, 3)
    columns = featurizer.costs(X).columns
    blocks = sum(columns[f"s{s}_blocks"] for s in range(len(SPACE.stages)))
    # Every active MBConv runs exactly one depthwise conv and (expand != 1 here) two pointwise.
    np.testing.assert_array_equal(sum(columns[f"s{s}_ops_dw"] for s in range(4)), blocks)
    np.testing.assert_array_equal(sum(columns[f"s{s}_ops_pw"] for s in range(4)), 2 * blocks)
    # Squeeze-excite only where the layout has it (stages 1 and 3 of the demo).
    assert not columns["s0_ops_se"].any() and (columns["s1_ops_se"] == columns["s1_blocks"]).all()


def test_an_overhead_bound_device_is_fitted_with_operator_terms_chosen_by_cv(
        test_rows: np.ndarray) -> None:
    """MACs rank such a device poorly; the CV-chosen base with operator counts fits it."""
    X = _genes(SPACE, 150, 4)
    y, y_test = overhead_bound(X, 4), overhead_bound(test_rows, 5)
    model = LatencyPredictor(SPACE, cv_folds=0, n_members=0, n_estimators=0).fit(X, y)
    assert "overhead" in model.meta.metrics["base"]
    rel = np.abs(model.predict(test_rows) / y_test - 1.0)
    assert np.mean(rel <= 0.10) >= 0.95
    macs_tau = _tau(ArchFeaturizer(SPACE).macs(test_rows), y_test)
    assert _tau(model.predict(test_rows), y_test) > macs_tau + 0.1


# --------------------------------------------------------------------------- choice


def _transfer_weight(few: FewShotLatencyPredictor) -> float:
    """The share of the chosen average carried by transfer-family candidates (not scratch)."""
    assert few.choice is not None
    return sum(w for name, w in few.choice.weights.items() if name != "scratch")


def test_average_weights_are_inverse_cv_error_within_the_band() -> None:
    """Weights are 1 / MSE over the kept candidates; one clearly worse on every shot is dropped."""
    rng = np.random.default_rng(0)
    log_y = rng.normal(0.0, 1.0, 40)
    oof = {"a": log_y + rng.normal(0.0, 0.05, 40), "b": log_y + rng.normal(0.0, 0.07, 40),
           "bad": log_y + 0.5 + rng.normal(0.0, 0.01, 40)}
    weights = _average_weights(oof, log_y, KEEP_WITHIN_SE)
    assert set(weights) == {"a", "b"} and next(iter(weights)) == "a"
    mse = {n: np.mean((oof[n] - log_y) ** 2) for n in ("a", "b")}
    assert weights["a"] / weights["b"] == pytest.approx(mse["b"] / mse["a"])
    assert sum(weights.values()) == pytest.approx(1.0)
    # A band of zero SEs keeps the best alone.
    assert list(_average_weights(oof, log_y, 0.0)) == ["a"]


def test_transfer_carries_the_choice_when_the_new_device_is_a_rescaled_source(
        compute_source: LatencyPredictor, test_rows: np.ndarray) -> None:
    """Same regime, 1.7x slower: transfer-family candidates carry the average and beat scratch."""
    shots = _genes(SPACE, 10, 6)
    few = FewShotLatencyPredictor([compute_source]).fit(shots, 1.7 * compute_bound(shots, 6))
    assert _transfer_weight(few) > 0.75
    y_test = 1.7 * compute_bound(test_rows, 7)
    chosen = _tau(few.predict(test_rows), y_test)
    assert chosen >= _tau(few.predict(test_rows, method="scratch"), y_test)
    assert chosen > 0.85
    rel = np.abs(few.predict(test_rows) / y_test - 1.0)
    assert np.mean(rel <= 0.10) >= 0.9


def test_scratch_carries_the_choice_when_the_source_is_in_another_regime(
        compute_source: LatencyPredictor, test_rows: np.ndarray) -> None:
    """Compute-bound source, overhead-bound target: transfer is anti-correlated, gets no weight."""
    shots = _genes(SPACE, 20, 8)
    few = FewShotLatencyPredictor([compute_source]).fit(shots, overhead_bound(shots, 8))
    assert few.choice is not None and few.choice.method == "scratch"
    assert few.choice.weights == {"scratch": 1.0}
    y_test = overhead_bound(test_rows, 9)
    chosen = _tau(few.predict(test_rows), y_test)
    transfer = _tau(few.predict(test_rows, method="transfer"), y_test)
    assert transfer < 0.5 and chosen > transfer + 0.3
    assert chosen >= _tau(few.predict(test_rows, method="scratch"), y_test) - 0.01


def test_the_right_source_is_picked_among_several(compute_source: LatencyPredictor,
                                                  overhead_source: LatencyPredictor,
                                                  test_rows: np.ndarray) -> None:
    shots = _genes(SPACE, 10, 10)
    few = FewShotLatencyPredictor([compute_source, overhead_source]).fit(
        shots, 0.6 * overhead_bound(shots, 10))
    assert few.choice is not None
    weights = few.choice.weights
    assert weights.get("rescale:1", 0) + weights.get("affine:1", 0) > \
        weights.get("rescale:0", 0) + weights.get("affine:0", 0)
    y_test = 0.6 * overhead_bound(test_rows, 11)
    assert _tau(few.predict(test_rows), y_test) > 0.85


def test_the_report_names_the_choice_and_every_candidates_cv_quality(
        compute_source: LatencyPredictor) -> None:
    shots = _genes(SPACE, 6, 12)
    few = FewShotLatencyPredictor([compute_source]).fit(shots, compute_bound(shots, 12))
    choice = few.choice
    assert choice is not None and choice.n_shots == 6 and choice.folds == 6  # leave-one-out
    candidates = {"rescale:0", "affine:0", "transfer", "scratch"}
    assert candidates <= set(choice.cv) <= candidates | {"average"}
    assert set(choice.weights) <= candidates
    assert sum(choice.weights.values()) == pytest.approx(1.0)
    assert choice.method == ("average" if len(choice.weights) > 1 else next(iter(choice.weights)))
    assert choice.quality == choice.cv[choice.method]
    text = few.report()
    assert f"chose {choice.method}" in text and all(name in text for name in candidates)


def test_a_fitted_few_shot_predictor_pickles_and_predicts_the_same(
        compute_source: LatencyPredictor, overhead_source: LatencyPredictor, test_rows: np.ndarray) -> None:
    """Its fitted candidates were lambdas: pickle refused "Can't pickle local object"."""
    shots = _genes(SPACE, 10, 14)
    few = FewShotLatencyPredictor([compute_source, overhead_source]).fit(shots, 0.6 * overhead_bound(shots, 14))

    loaded = pickle.loads(pickle.dumps(few))

    assert loaded.choice == few.choice
    assert {"chosen", "transfer", "scratch", "best_transfer"} <= set(few._fitted)
    for method in few._fitted:
        np.testing.assert_array_equal(loaded.predict(test_rows, method=method), few.predict(test_rows, method=method))


def test_few_shot_rejects_bad_input(compute_source: LatencyPredictor) -> None:
    few = FewShotLatencyPredictor([compute_source])
    shots = _genes(SPACE, 4, 13)
    with pytest.raises(RuntimeError, match="not fitted"):
        few.predict(shots)
    with pytest.raises(ValueError, match="at least 3"):
        few.fit(shots[:2], np.ones(2))
    with pytest.raises(ValueError, match="positive"):
        few.fit(shots, np.array([1.0, 0.0, 1.0, 1.0]))
    few.fit(shots, compute_bound(shots))
    with pytest.raises(ValueError, match="unknown method"):
        few.predict(shots, method="magic")
