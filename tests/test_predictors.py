"""Predictors on targets from the analytic cost model: features, metrics, fit, save/load, few-shot.

The latency targets here are a per-layer-kind cost model with a memory-bound
term (max of compute and traffic per stage) and multiplicative noise, i.e.
additive but not linear in any single feature; accuracy targets saturate in
capacity.  Real measured latencies are covered in ``test_predictors_real.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.families.ofa_resnet.layout import ofa_resnet50_space
from hwsearch.space import SearchSpace
from hwsearch.store import MemoryStore
from predictors.accuracy import AccuracyPredictor, interval_coverage
from predictors.base import PredictorMismatchError, arch_groups, group_folds, ridge_by_subnet, xgb_cv_folds
from predictors.dataset import MeasurementSet, calibrated_latencies, parse_key
from predictors.features import FEATURE_VERSION, ArchFeaturizer
from predictors.fewshot import FewShotLatencyPredictor
from predictors.latency import LatencyPredictor
from predictors.metrics import format_report, regression_report

MBV3 = ofa_mbv3_space()
RESNET = ofa_resnet50_space()
SMALL = ofa_mbv3_space(resolutions=(32, 40), n_classes=10)
"""MBV3's name, other choices and head: a 32/40 px, 10-class supernet."""


def _genes(space: SearchSpace, n: int, seed: int) -> np.ndarray:
    xl, xu = space.bounds()
    return np.random.default_rng(seed).integers(xl, xu + 1, size=(n, space.n_var))


def _device_latency(space: SearchSpace, X: np.ndarray, *, dw_rate: float, pw_rate: float,
                    seed: int, noise: float = 0.02) -> np.ndarray:
    """A device whose depthwise convs are memory-bound: per stage max(compute, traffic)."""
    table = ArchFeaturizer(space).costs(X).columns
    ms = np.full(len(X), 0.4)
    for name, value in table.items():
        if "_macs_dw" in name:
            kernel = int(name.rsplit("k", 1)[1])
            act = table[name.split("_macs")[0] + "_act"]
            ms += np.maximum(dw_rate * value / kernel**1.5, 0.02 * act / 1e3) / 1e6
        elif "_macs" in name:
            ms += pw_rate * value / 1e6
        elif name.endswith("_blocks"):
            ms += 0.05 * value
    return ms * np.exp(np.random.default_rng(seed).normal(0.0, noise, len(X)))


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("space", [MBV3, RESNET], ids=lambda s: s.name)
def test_switched_off_blocks_contribute_nothing(space: SearchSpace) -> None:
    X = _genes(space, 200, 1)
    featurizer = ArchFeaturizer(space)
    scrambled = X.copy()
    inactive = ~space.active_block_mask(X)
    start = 1 + len(space.stages)
    for k in range(len(space.block_knobs)):
        cols = scrambled[:, start + k * space.n_blocks:start + (k + 1) * space.n_blocks]
        cols[inactive] = np.random.default_rng(k).integers(0, 2, size=int(inactive.sum()))
    np.testing.assert_array_equal(featurizer.transform(X), featurizer.transform(scrambled))
    np.testing.assert_array_equal(featurizer.transform(X),
                                  featurizer.transform(space.canonical_genes(X)))


@pytest.mark.parametrize("space", [MBV3, RESNET], ids=lambda s: s.name)
def test_costs_grow_with_every_choice(space: SearchSpace) -> None:
    """Raising any gene (bigger resolution, depth, kernel, expand, width) never lowers MACs."""
    featurizer = ArchFeaturizer(space)
    X = space.canonical_genes(_genes(space, 100, 2))
    base = featurizer.costs(X)
    _, xu = space.bounds()
    for gene in range(space.n_var):
        up = X.copy()
        up[:, gene] = np.minimum(up[:, gene] + 1, xu[gene])
        grown = featurizer.costs(up)
        assert np.all(grown.macs >= base.macs), gene
        assert np.all(grown.params >= base.params), gene
    assert np.all(featurizer.macs(space.encode_many([space.largest()]))
                  > featurizer.macs(space.encode_many([space.smallest()])))


def test_feature_layout_is_stable_and_named() -> None:
    featurizer = ArchFeaturizer(MBV3)
    F = featurizer.transform(_genes(MBV3, 7, 3))
    assert F.dtype == np.float32 and F.shape == (7, len(featurizer.names))
    assert len(set(featurizer.names)) == len(featurizer.names)
    with pytest.raises(ValueError, match="encoded genes of shape"):
        featurizer.transform(np.zeros((3, MBV3.n_var + 1), dtype=np.int64))


def test_analytic_macs_match_the_torch_supernets() -> None:
    supernets = pytest.importorskip("hwsearch.supernets")
    for name in ["ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_d234_e346_k357_w1.2", "ofa_resnet50"]:
        net = supernets.create_supernet(name)
        space = net.space
        archs = space.sample(np.random.default_rng(4), 25) + [space.smallest(), space.largest()]
        ours = ArchFeaturizer(net.space).costs(net.space.encode_many(archs))
        theirs = [net.count(a) for a in archs]
        np.testing.assert_array_equal(ours.macs, [c.macs for c in theirs])
        np.testing.assert_array_equal(ours.params, [c.params for c in theirs])


# --------------------------------------------------------------------------- metrics


def test_regression_report() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    perfect = regression_report(y, y)
    assert perfect["tau"] == pytest.approx(1.0) and perfect["mape"] == 0.0
    assert perfect["within_5"] == 1.0 and perfect["rmse"] == 0.0
    off = regression_report(y, np.array([1.04, 2.0, 3.3, 3.0]))
    assert off["within_5"] == 0.5 and off["within_10"] == 0.75
    assert off["mape"] == pytest.approx(100 * (0.04 + 0 + 0.1 + 0.25) / 4)
    assert off["rmse"] == pytest.approx(np.sqrt((0.04**2 + 0.3**2 + 1.0) / 4))
    assert "tau=" in format_report(off)
    with pytest.raises(ValueError):
        regression_report(y, y[:3])


# --------------------------------------------------------------------------- latency


@pytest.fixture(scope="module")
def latency_data() -> tuple[np.ndarray, np.ndarray]:
    X = MBV3.canonical_genes(_genes(MBV3, 500, 5))
    return X, _device_latency(MBV3, X, dw_rate=3.0, pw_rate=1.0, seed=6)


@pytest.fixture(scope="module")
def latency_model(latency_data: tuple[np.ndarray, np.ndarray]) -> LatencyPredictor:
    X, y = latency_data
    return LatencyPredictor(MBV3, device_hash="dev-a", n_members=4).fit(
        X[:200], y[:200], X_test=X[200:], y_test=y[200:])


def test_latency_predictor_quality_on_held_out(latency_model: LatencyPredictor) -> None:
    test, cv = latency_model.meta.metrics["test"], latency_model.meta.metrics["cv"]
    assert test["n"] == 300 and cv["n"] == 200
    assert test["tau"] > 0.85 and test["within_10"] > 0.95 and test["mape"] < 5
    assert cv["within_10"] > 0.9
    assert "test" in latency_model.report() and "within10" in latency_model.report()


def test_latency_predictor_beats_macs_only_at_fifty_samples(
    latency_data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = latency_data
    model = LatencyPredictor(MBV3, n_members=0, cv_folds=0).fit(X[:50], y[:50])
    ours = regression_report(y[50:], model.predict(X[50:]))
    macs = ArchFeaturizer(MBV3).macs(X)
    slope = np.polyfit(macs[:50], y[:50], 1)
    flops_only = regression_report(y[50:], np.polyval(slope, macs[50:]))
    assert ours["mape"] < flops_only["mape"] and ours["tau"] > flops_only["tau"]


def test_predict_dist_spread(latency_model: LatencyPredictor,
                             latency_data: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = latency_data
    mean, std = latency_model.predict_dist(X[200:260])
    np.testing.assert_allclose(mean, latency_model.predict(X[200:260]))
    assert np.all(std >= 0) and np.all(std > 0)
    assert np.median(std / mean) < 0.1


def test_save_load_round_trip_and_refusals(latency_model: LatencyPredictor, tmp_path: Path,
                                           latency_data: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = latency_data
    latency_model.save(tmp_path / "p")
    files = {p.name for p in (tmp_path / "p").iterdir()}
    assert {"meta.json", "base.json", "model.json", "member_0.json"} <= files
    json.loads((tmp_path / "p" / "model.json").read_text())  # XGBoost JSON
    loaded = LatencyPredictor.load(tmp_path / "p", space=MBV3, device_hash="dev-a")
    np.testing.assert_allclose(loaded.predict(X), latency_model.predict(X), rtol=1e-6)
    np.testing.assert_allclose(loaded.predict_dist(X)[1], latency_model.predict_dist(X)[1],
                               rtol=1e-5)
    assert loaded.meta.metrics == latency_model.meta.metrics
    assert loaded.meta.n_train == 200 and loaded.meta.feature_version == FEATURE_VERSION
    with pytest.raises(PredictorMismatchError, match="device 'dev-a', not 'dev-b'"):
        LatencyPredictor.load(tmp_path / "p", space=MBV3, device_hash="dev-b")
    with pytest.raises(PredictorMismatchError, match="trained for space"):
        LatencyPredictor.load(tmp_path / "p", space=ofa_mbv3_space(1.2), device_hash="dev-a")
    with pytest.raises(PredictorMismatchError, match="predicts 'latency_ms'"):
        AccuracyPredictor.load(tmp_path / "p", space=MBV3)
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    (tmp_path / "p" / "meta.json").write_text(json.dumps(meta | {"feature_version": "0"}))
    with pytest.raises(PredictorMismatchError, match="feature version '0'.*retrain"):
        LatencyPredictor.load(tmp_path / "p", space=MBV3, device_hash="dev-a")


def test_fit_rejects_bad_labels() -> None:
    X = _genes(MBV3, 5, 7)
    with pytest.raises(ValueError, match="positive"):
        LatencyPredictor(MBV3).fit(X, [1.0, 2.0, -1.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="rows"):
        LatencyPredictor(MBV3).fit(X, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AccuracyPredictor(MBV3).fit(X, [71.0, 72.0, 73.0, 74.0, 75.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        LatencyPredictor(MBV3).predict(X)
    # Constant latencies fitted, and scored CV MAPE 0% with 100% within 10%.
    X30 = _genes(MBV3, 30, 8)
    with pytest.raises(ValueError, match="all 30 latency_ms labels are 5: labels without spread"):
        LatencyPredictor(MBV3).fit(X30, np.full(30, 5.0))
    # Accuracies can tie on a small validation set (a job's 3 subnets all at 10/96): fitted, with no CV figure.
    tied = AccuracyPredictor(MBV3, n_estimators=20, n_members=2).fit(X30, np.full(30, 0.9))
    assert "cv" not in tied.meta.metrics and tied.meta.metrics["labels_without_spread"]
    np.testing.assert_allclose(tied.predict(X30), 0.9, atol=1e-3)  # the soft ceiling keeps them just below


def test_one_subnet_measured_again_and_again_is_not_a_training_set() -> None:
    """20 repeats of one subnet fitted, then predicted other subnets at 0.77-1.31 with a 0.7-1.2% sd."""
    X = _genes(MBV3, 20, 9)
    for model in (LatencyPredictor(MBV3), AccuracyPredictor(MBV3)):
        with pytest.raises(ValueError, match="all 20 labelled rows are one subnet"):
            model.fit(np.repeat(X[:1], 20, axis=0), 0.5 + 0.01 * np.arange(20))
    assert LatencyPredictor(MBV3, n_members=2).fit(np.repeat(X[:2], 10, axis=0), 1 + 0.01 * np.arange(20))


@pytest.mark.parametrize("setting, value, says", [
    ("n_estimators", -1, "n_estimators must be ≥ 0"), ("max_depth", 0, "max_depth must be ≥ 1"),
    ("learning_rate", 0, r"learning_rate must be in \(0, 1\]"), ("learning_rate", float("nan"), "learning_rate"),
    ("n_members", 2.5, "n_members must be a whole number"), ("cv_folds", True, "cv_folds must be a whole number"),
    ("seed", -3, "seed must be ≥ 0")])
def test_model_settings_that_fit_nothing_are_refused_by_name(setting: str, value: object, says: str) -> None:
    """n_estimators=-1, learning_rate=0 and max_depth=0 fitted without a word, with no trees."""
    for kind in (LatencyPredictor, AccuracyPredictor):
        with pytest.raises(ValueError, match=says):
            kind(MBV3, **{setting: value})
    assert LatencyPredictor(MBV3, n_estimators=np.int64(3), learning_rate=1).settings["n_estimators"] == 3


def test_a_model_without_members_has_no_spread_to_give() -> None:
    """n_members=0 answered sd 0 for every subnet, which refinement's optimistic bounds read as certainty."""
    X, y = _genes(MBV3, 40, 10), 1 + np.arange(40) / 40
    bare = LatencyPredictor(MBV3, n_members=0, n_estimators=5).fit(X, y)
    assert bare.predict(X[:2]).shape == (2,)
    with pytest.raises(ValueError, match=r"fitted with n_members=0, so it has no spread: fit it with n_members >= 2"):
        bare.predict_dist(X[:2])
    calibrated = AccuracyPredictor(MBV3, n_members=0, n_estimators=5).fit(X, 0.5 + 0.4 * np.arange(40) / 40)
    assert (calibrated.predict_dist(X[:2])[1] > 0).all()  # its CV error is a spread without members


def _repeated_subnets(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """40 subnets with structureless labels, each measured 4 times (0.2% noise), and 40 new ones.

    Nothing about a subnet predicts its label, so an honest CV scores about
    as badly as the new subnets do; one that leaves a subnet's repeats on
    both sides of a fold scores its memory instead.
    """
    rng = np.random.default_rng(seed)
    X = SMALL.encode_many(SMALL.sample(rng, 80))
    true = 0.7 + rng.normal(0.0, 0.03, 80)
    y = np.repeat(true[:40], 4) + rng.normal(0.0, 0.002, 160)
    return np.repeat(X[:40], 4, axis=0), y, X[40:], true[40:]


def test_grouped_folds_are_the_row_folds_when_no_subnet_repeats() -> None:
    """So predictors fitted on distinct subnets keep the figures they had before grouping."""
    groups = arch_groups(ArchFeaturizer(MBV3).transform(MBV3.canonical_genes(_genes(MBV3, 37, 17))))
    np.testing.assert_array_equal(groups, np.arange(37))
    order = np.random.default_rng(4).permutation(37)
    assert [sorted(f) for f in group_folds(groups, 5, 4)] == [sorted(order[k::5]) for k in range(5)]
    # xgb.cv's own shuffled split: np.random.seed(seed), a permutation, array_split.
    chunks = np.array_split(np.random.RandomState(4).permutation(37), 5)
    for k, (train, test) in enumerate(xgb_cv_folds(groups, 5, 4)):
        np.testing.assert_array_equal(test, chunks[k])
        np.testing.assert_array_equal(train, np.concatenate(chunks[:k] + chunks[k + 1:]))


def test_cv_keeps_the_repeats_of_a_subnet_in_one_fold() -> None:
    X, y, X_new, y_new = _repeated_subnets(1)
    model = LatencyPredictor(SMALL, n_estimators=100, n_members=0).fit(
        X, y, X_test=X_new, y_test=y_new)
    cv, test = model.meta.metrics["cv"], model.meta.metrics["test"]
    # Split row by row: CV tau 0.89, MAPE 0.6% and 100 trees; on new subnets tau 0, MAPE 3.8%.
    assert cv["tau"] < 0.3 and cv["mape"] > 0.5 * test["mape"]
    assert model.meta.metrics["residual_trees"] < 20  # the tree count's CV sees no memory either


def test_ridge_penalty_is_the_one_leaving_out_whole_subnets_best() -> None:
    """Measured three times, a subnet's copies must not score each other when one is left out.

    The penalty is checked against its definition, refitted by brute force:
    on the old row-wise leave-one-out it differed in every one of these
    draws, always weaker.
    """
    alphas = np.logspace(-3, 3, 13)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        X_subnets = rng.normal(size=(12, 8))
        y_subnets = 0.3 * X_subnets @ rng.normal(size=8) + rng.normal(size=12)
        X, y = np.repeat(X_subnets, 3, axis=0), np.repeat(y_subnets, 3) + 0.2 * rng.normal(size=36)
        subnet = np.repeat(np.arange(12), 3)

        def left_out_error(alpha: float) -> float:
            return sum(float(np.sum((Ridge(alpha=alpha).fit(X[subnet != k], y[subnet != k])
                                     .predict(X[subnet == k]) - y[subnet == k]) ** 2)) for k in range(12))

        model = ridge_by_subnet(X, y, alphas)
        assert model.alpha_ == alphas[np.argmin([left_out_error(a) for a in alphas])]
        on_every_row = Ridge(alpha=model.alpha_).fit(X, y)  # the coefficients are a fit on every row
        np.testing.assert_allclose(model.coef_, on_every_row.coef_, rtol=1e-9, atol=1e-12)
        assert model.intercept_ == pytest.approx(on_every_row.intercept_)
        # Rows that are each their own subnet (a bootstrap member's draws) keep RidgeCV's own choice.
        own = RidgeCV(alphas=alphas).fit(X, y)
        assert ridge_by_subnet(X, y, alphas, np.arange(36)).alpha_ == own.alpha_


def test_accuracy_sd_from_cv_covers_new_subnets_when_subnets_repeat() -> None:
    X, y, X_new, y_new = _repeated_subnets(2)
    model = AccuracyPredictor(SMALL, n_estimators=100, n_members=2).fit(X, y)
    mean, sd = model.predict_dist(X_new)
    # Split row by row, the sd was 0.0024 (the repeats' noise) and covered 10% and 12%.
    assert interval_coverage(y_new, mean, sd, k=1.0) > 0.45
    assert interval_coverage(y_new, mean, sd, k=2.0) > 0.85


def test_few_shot_cv_leaves_out_every_repeat_of_a_subnet(latency_model: LatencyPredictor) -> None:
    X = MBV3.canonical_genes(_genes(MBV3, 8, 21))
    y = _device_latency(MBV3, X, dw_rate=8.0, pw_rate=0.6, seed=22)
    shot = FewShotLatencyPredictor([latency_model]).fit(np.repeat(X, 3, axis=0), np.repeat(y, 3))
    assert shot.choice is not None and shot.choice.folds == 8 and shot.choice.n_shots == 24
    with pytest.raises(ValueError, match="3 distinct subnets"):
        FewShotLatencyPredictor([latency_model]).fit(np.repeat(X[:2], 3, axis=0), np.repeat(y[:2], 3))
    with pytest.raises(ValueError, match="all 8 latencies are 3 ms: measurements without spread"):
        FewShotLatencyPredictor([latency_model]).fit(X, np.full(8, 3.0))  # scored CV MAPE 0%, 100% within 10%


def test_load_refuses_a_space_of_the_same_name_with_other_choices_or_head(tmp_path: Path) -> None:
    X = SMALL.encode_many(SMALL.sample(np.random.default_rng(14), 30))
    y = 1.0 + X[:, 0]
    LatencyPredictor(SMALL, n_estimators=10, n_members=0, cv_folds=0).fit(X, y).save(tmp_path)
    same_name = [MBV3, ofa_mbv3_space(resolutions=(32, 40))]  # other head; other choices only
    assert {s.name for s in same_name} == {SMALL.name}
    assert same_name[1].network_id == MBV3.network_id != SMALL.network_id
    for space in same_name:
        with pytest.raises(PredictorMismatchError, match="same name, other choices or head"):
            LatencyPredictor.load(tmp_path, space=space)
    assert LatencyPredictor.load(tmp_path, space=SMALL).meta.space_id is not None
    # Saved before the identity was recorded: the name is all there is to check.
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["space_id"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert LatencyPredictor.load(tmp_path, space=MBV3).meta.space_id is None


def test_few_shot_refuses_sources_of_same_named_spaces() -> None:
    X = SMALL.encode_many(SMALL.sample(np.random.default_rng(15), 30))
    other = ofa_mbv3_space(resolutions=(32, 48), n_classes=10)
    fit = {"n_estimators": 10, "n_members": 0, "cv_folds": 0}
    sources = [LatencyPredictor(s, **fit).fit(X, 1.0 + X[:, 0]) for s in (SMALL, other)]
    with pytest.raises(ValueError, match="different spaces"):
        FewShotLatencyPredictor(sources)


@pytest.mark.parametrize("change", ["-1", "-4", "+100", "nan", "+0.7"])
def test_predict_and_fit_refuse_genes_that_index_no_choice(
    latency_model: LatencyPredictor, change: str
) -> None:
    X = MBV3.canonical_genes(_genes(MBV3, 3, 16))
    bad = X.astype(np.float64)
    bad[1, 7] = bad[1, 7] + float(change) if change.startswith("+") else float(change)
    message = r"gene 7 \(kernel of block slot 1\) of row 1 .* 0\.\.2"
    for call in (latency_model.predict, lambda g: latency_model.predict_dist(g),
                 lambda g: LatencyPredictor(MBV3).fit(g, np.ones(len(g)))):
        with pytest.raises(ValueError, match=message):
            call(bad)
    np.testing.assert_array_equal(latency_model.predict(X.astype(np.float64)), latency_model.predict(X))


# --------------------------------------------------------------------------- accuracy


def test_accuracy_predictor_ranks_held_out_subnets() -> None:
    X = RESNET.canonical_genes(_genes(RESNET, 400, 8))
    log_macs = np.log(ArchFeaturizer(RESNET).macs(X))
    y = 0.80 - 0.25 * np.exp(-(log_macs - log_macs.min()))
    y = y + np.random.default_rng(9).normal(0, 0.003, len(y))
    model = AccuracyPredictor(RESNET, n_members=2).fit(X[:150], y[:150], X_test=X[150:],
                                                       y_test=y[150:])
    assert model.meta.metrics["test"]["tau"] > 0.75
    assert model.meta.device_hash is None and model.meta.target == "accuracy"
    pred = model.predict(X[150:])
    assert np.all((pred >= 0) & (pred <= 1))


def test_accuracy_means_stay_in_range_when_extrapolating() -> None:
    X = RESNET.canonical_genes(_genes(RESNET, 300, 12))
    log_macs = np.log(ArchFeaturizer(RESNET).macs(X))
    order = np.argsort(log_macs)
    small, large = order[:150], order[-50:]
    # Steeply rising accuracy on the small subnets: a linear base extrapolates past 1.
    y = np.clip(0.5 + 0.6 * (log_macs - log_macs.min()) / np.ptp(log_macs[small]), 0, 1)
    model = AccuracyPredictor(RESNET, n_members=2).fit(X[small], np.minimum(y[small], 0.99))
    mean, std = model.predict_dist(X[large])
    assert np.all((mean >= 0) & (mean <= 1)) and np.all(std >= 0)
    assert np.array_equal(mean, model.predict(X[large]))


# --------------------------------------------------------------------------- dataset


@pytest.mark.parametrize("space", [MBV3, RESNET], ids=lambda s: s.name)
def test_parse_key_round_trips(space: SearchSpace) -> None:
    for arch in space.sample(np.random.default_rng(10), 50):
        assert parse_key(space, arch.key()) == arch
    with pytest.raises(ValueError):
        parse_key(space, "q3-d2")


@pytest.mark.parametrize("ruler", [float("nan"), "fast", None])
def test_one_implausible_ruler_neither_empties_nor_rescales_the_calibrated_latencies(ruler: object) -> None:
    """The scale is the median of the rows' rulers: one NaN made it NaN and emptied all 40 rows; "fast" raised."""
    rows = {f"k{i}": {"latency_ms": 0.1 * (i + 1) * 5.0, "ratio": 0.1 * (i + 1), "env": {"reference_ms": 5.0}}
            for i in range(40)}
    rows["k0"]["env"]["reference_ms"] = ruler
    values = calibrated_latencies(rows)
    assert set(values) == set(rows)
    assert values["k9"] == pytest.approx(5.0)


def test_measurement_set_from_store_and_stable_split() -> None:
    store = MemoryStore()
    archs = MBV3.sample(np.random.default_rng(11), 60)
    for i, arch in enumerate(archs):
        store.put_latency("d", MBV3.name, arch.key(), {"latency_ms": 1.0 + i})
    data = MeasurementSet.from_latencies(MBV3, store.get_latencies("d", MBV3.name))
    assert len(data) == len({a.key() for a in archs})
    train, test = data.split(0.25, seed=3)
    assert not set(train.keys) & set(test.keys) and len(train) + len(test) == len(data)
    bigger = MeasurementSet.from_archs(MBV3, archs + MBV3.sample(np.random.default_rng(12), 20),
                                       np.ones(80))
    _, test2 = bigger.split(0.25, seed=3)
    assert set(test.keys) <= set(test2.keys)  # adding rows never moves old ones across
    for key, genes in zip(data.keys, data.X):
        assert MBV3.decode(genes).key() == key


# --------------------------------------------------------------------------- few-shot


def test_few_shot_corrects_another_devices_predictor_from_twenty_measurements(
    latency_model: LatencyPredictor, latency_data: tuple[np.ndarray, np.ndarray]
) -> None:
    """A device with other per-layer rates: the source alone is off, twenty shots fix it."""
    X, _ = latency_data
    y_new = _device_latency(MBV3, X, dw_rate=8.0, pw_rate=0.6, seed=13)
    shot = FewShotLatencyPredictor([latency_model]).fit(X[:20], y_new[:20])
    few = regression_report(y_new[200:], shot.predict(X[200:]))
    unchanged = regression_report(y_new[200:], latency_model.predict(X[200:]))
    scratch = LatencyPredictor(MBV3, n_members=0, cv_folds=0).fit(X[:20], y_new[:20])
    base = regression_report(y_new[200:], scratch.predict(X[200:]))
    assert unchanged["within_10"] < 0.5 < few["within_10"]
    assert few["tau"] > 0.85 and few["mape"] < 5
    assert few["mape"] < 1.5 * base["mape"]
    with pytest.raises(ValueError, match="at least 3"):
        FewShotLatencyPredictor([latency_model]).fit(X[:2], y_new[:2])
