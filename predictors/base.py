"""Shared machinery of the latency and accuracy predictors.

Each predictor is a small **linear base model** on the analytic features plus
an **XGBoost model of the base's residual**.  The linear part carries what is
additive (latency is close to a sum of per-layer costs; accuracy moves
smoothly with capacity), so it generalises from a few dozen subnets; the
trees only learn the interactions the base misses.  Plain one-hot XGBoost
needs hundreds of samples to match an additive model (issue 4 has numbers).

Uncertainty comes from a bootstrap ensemble: members refit on resamples of the
training rows, and the spread of their predictions says where more
measurements would help.  Quality is measured on every fit by K-fold
cross-validation (out-of-fold predictions scored with
:func:`predictors.metrics.regression_report`) and saved with the model.

**Folds hold whole subnets.**  A subnet measured again (a repeated run, a
second session) is one more row with the same features.  Split row by row,
its copies land on both sides of a fold, the trees memorise its label and
CV scores recall rather than prediction: 40 structureless subnets measured
4 times each scored tau 0.89 and 93% within 10% in CV against -0.09 and 28%
on new subnets.  Every split here (:func:`group_folds`,
:func:`xgb_cv_folds`) therefore deals out groups of identical feature rows
(:func:`arch_groups`), and counts distinct subnets where it counted rows.
Groups are numbered by first appearance and dealt exactly as rows were, so
data without repeats gets the same folds, CV figures and predictions as
before.  Bootstrap members do see repeats (a resample draws rows again), so
their base's CV keeps treating each drawn row as its own (a resample's
copy is not a second measurement), so the spread is what it was.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xgboost as xgb
from scipy.optimize import nnls
from sklearn.linear_model import RidgeCV

from hwsearch.checks import whole_number
from hwsearch.space import SearchSpace
from predictors.features import FEATURE_VERSION, ArchFeaturizer
from predictors.metrics import format_report, regression_report

__all__ = ["PredictorMeta", "PredictorMismatchError", "ResidualPredictor", "arch_groups",
           "group_folds", "ridge_by_subnet", "space_identity", "xgb_cv_folds"]

META_FILE = "meta.json"
BASE_FILE = "base.json"


class PredictorMismatchError(ValueError):
    """A saved predictor was made for another space, device, target or feature version."""


def space_identity(space: SearchSpace) -> str:
    """``network_id`` plus a digest of the choices: everything that fixes what genes mean.

    A predictor reads gene ``i`` as an index into the space's choices and
    its features from the layout, so both must match on load.  The name
    covers neither fully: ``ofa_mbv3_space(resolutions=(32, 40),
    n_classes=10)`` keeps the default space's name, where gene 0 means 128
    px.  ``network_id`` adds the layout (head included) but not the
    choices, hence the digest of those.
    """
    choices = repr((space.resolutions, tuple((s.depths, s.elastic) for s in space.stages),
                    space.kernels, space.expands, space.widths, space.n_width_slots))
    return f"{space.network_id}#{hashlib.sha256(choices.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class PredictorMeta:
    """What a saved predictor is for and how good it was when fitted.

    ``space_id`` is :func:`space_identity` of the training space; ``None`` in
    predictors saved before it was recorded, which are checked by name only.
    """

    space_name: str
    target: str
    device_hash: str | None
    feature_version: str
    metrics: dict[str, Any]
    n_train: int
    settings: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)
    space_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PredictorMeta":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# --------------------------------------------------------------------------- folds


def _rate_setting(value: object) -> float:
    """``learning_rate`` as a float in (0, 1]: at 0 no tree learns anything."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"learning_rate must be a number, got {value!r}")
    if not 0 < float(value) <= 1:
        raise ValueError(f"learning_rate must be in (0, 1], got {value!r}")
    return float(value)


def arch_groups(F: np.ndarray) -> np.ndarray:
    """One group id per row, shared by identical feature rows (one subnet measured again).

    Features mask the genes of switched-off blocks, so equal rows are equal
    canonical subnets.  Ids follow first appearance: with no repeats, row
    ``i`` is group ``i`` and the splits below reduce to the row-wise ones.
    """
    _, first, inverse = np.unique(F, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.ravel()]


def _deal(groups: np.ndarray, permutation: np.ndarray, fold_at: np.ndarray,
          folds: int) -> list[np.ndarray]:
    """Rows of each fold when the group at position ``p`` of ``permutation`` goes to ``fold_at[p]``.

    Rows come out in the permutation's order (a group's rows together), as
    xgb.cv's own split lists them.
    """
    position = np.empty(len(permutation), dtype=np.int64)
    position[permutation] = np.arange(len(permutation))
    rows = np.argsort(position[groups], kind="stable")
    fold = fold_at[position[groups[rows]]]
    return [rows[fold == k] for k in range(folds)]


def group_folds(groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Validation rows of ``folds`` folds: groups shuffled by ``seed`` and dealt round-robin.

    With no repeats this is ``order[k::folds]`` for ``order =
    default_rng(seed).permutation(n)``, the row-wise split used before.
    """
    n_groups = int(groups.max()) + 1
    order = np.random.default_rng(seed).permutation(n_groups)
    return _deal(groups, order, np.arange(n_groups) % folds, folds)


def xgb_cv_folds(groups: np.ndarray, nfold: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, validation)`` rows for ``xgb.cv(folds=...)``, whole groups in each.

    Mirrors xgb.cv's shuffled split (``np.random.seed(seed)``, a permutation
    cut into ``nfold`` contiguous chunks) over groups instead of rows, so
    with no repeats the folds, and the tree count they choose, are unchanged.
    """
    n_groups = int(groups.max()) + 1
    order = np.random.RandomState(seed).permutation(n_groups)
    sizes = [len(chunk) for chunk in np.array_split(order, nfold)]
    out = _deal(groups, order, np.repeat(np.arange(nfold), sizes), nfold)
    return [(np.concatenate([out[i] for i in range(nfold) if i != k]), out[k])
            for k in range(nfold)]


# --------------------------------------------------------------------------- linear bases


@dataclass
class _LinearBase:
    """``y ~ intercept + ((Z - mean) / scale) @ coef`` with plain-numpy prediction.

    ``Z[:, j]`` is the sum of the feature columns in ``groups[j]`` (a group of
    one is just that column), so an additive model can pool, say, the
    depthwise MACs of every stage into one regressor.  Stored as JSON next to
    the XGBoost models, so loading needs neither pickle nor scikit-learn.
    """

    groups: list[list[int]]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    floor: float = -np.inf
    name: str = ""

    def design(self, F: np.ndarray) -> np.ndarray:
        if all(len(g) == 1 for g in self.groups):
            return F[:, [g[0] for g in self.groups]]
        return np.column_stack([F[:, g].sum(axis=1) for g in self.groups])

    def predict(self, F: np.ndarray) -> np.ndarray:
        Z = (self.design(F) - np.asarray(self.mean, np.float32)) / np.asarray(self.scale,
                                                                              np.float32)
        return np.maximum(Z @ np.asarray(self.coef, np.float32) + self.intercept, self.floor)


def _standardise(F: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = F.mean(axis=0)
    scale = F.std(axis=0)
    scale[scale == 0] = 1.0
    return (F - mean) / scale, mean, scale


def _nnls_fit(F: np.ndarray, y: np.ndarray, groups: list[list[int]], name: str) -> _LinearBase:
    base = _LinearBase(groups, [], [], [], 0.0, name=name)
    C = base.design(F).astype(np.float64)
    scale = C.max(axis=0)
    scale[scale == 0] = 1.0
    A = np.column_stack([C / scale, np.ones(len(C))]) / y[:, None]
    coef, _ = nnls(A, np.ones(len(y)))
    return _LinearBase(groups, [0.0] * len(groups), scale.tolist(), coef[:-1].tolist(),
                       float(coef[-1]), floor=float(0.05 * y.min()), name=f"nnls by {name}")


def fit_nnls_base(F: np.ndarray, y: np.ndarray, options: dict[str, list[list[int]]],
                  folds: int = 5, groups: np.ndarray | None = None) -> _LinearBase:
    """Non-negative additive cost model, fitted for *relative* error, complexity chosen by CV.

    Every cost component (MACs of a layer kind, activation bytes, block count)
    can only add time, so non-negative weights are physically right and keep a
    small fit from cancelling terms against each other.  Rows are weighted by
    ``1 / y`` because latency noise is multiplicative.  Columns are scaled but
    not centred, so non-negativity keeps its meaning.

    ``options`` maps a name to a grouping of cost columns, from coarse (total
    MACs) to fine (every stage's components apart).  Fine groupings win on
    clean labels; on noisy ones (a shared CPU) they fit the noise and a coarse
    one predicts better, so the grouping with the lowest ``folds``-fold
    relative error is refitted on all rows.  Below ``2 * folds`` distinct
    subnets the folds become leave-one-subnet-out (a few-shot fit of a new
    device still has to choose between an overhead-bound and a compute-bound
    model); below 4 the first option is taken.  Repeats of a subnet stay in
    one fold (``groups``, default :func:`arch_groups`).
    """
    names = list(options)
    groups = arch_groups(F) if groups is None else groups
    n_groups = int(groups.max()) + 1
    if n_groups < 4 or len(names) == 1:
        return _nnls_fit(F, y, options[names[0]], names[0])
    if n_groups < 2 * folds:
        folds = n_groups
    splits = group_folds(groups, folds, 0)
    everything = np.arange(len(y))
    errors = {}
    for name in names:
        rel = np.empty(len(y))
        for test in splits:
            train = np.setdiff1d(everything, test)
            pred = _nnls_fit(F[train], y[train], options[name], name).predict(F[test])
            rel[test] = (pred - y[test]) / y[test]
        errors[name] = float(np.mean(rel**2))
    best = min(names, key=errors.__getitem__)
    return _nnls_fit(F, y, options[best], best)


def ridge_by_subnet(X: np.ndarray, y: np.ndarray, alphas: np.ndarray,
                    groups: np.ndarray | None = None) -> RidgeCV:
    """``RidgeCV`` whose leave-one-out, which chooses the penalty, leaves out a whole subnet.

    RidgeCV's closed-form leave-one-out treats rows as independent: a subnet
    measured three times keeps two copies in training when one is left out,
    so the score rewards recalling labels and picks the weakest penalty.
    Each group's rows (``groups``, default :func:`arch_groups` of ``X``; they
    must have equal ``X``) become one row with their mean label and their
    count as weight.  For every penalty the weighted squared loss differs
    from the rows' by a constant, so the coefficients are those of a fit on
    every row; only the choice of penalty changes.  Bootstrap members pass
    one group per drawn row, as their other CVs do.
    """
    _, first, inverse = np.unique(arch_groups(X) if groups is None else groups,
                                  return_index=True, return_inverse=True)
    if len(first) == len(y):
        return RidgeCV(alphas=alphas).fit(X, y)
    counts = np.bincount(inverse)
    means = np.bincount(inverse, weights=y) / counts
    return RidgeCV(alphas=alphas).fit(X[first], means, sample_weight=counts.astype(np.float64))


def fit_ridge_base(F: np.ndarray, y: np.ndarray, columns: list[int],
                   groups: np.ndarray | None = None) -> _LinearBase:
    """Ridge regression, the penalty chosen by leave-one-subnet-out CV (:func:`ridge_by_subnet`)."""
    Z, mean, scale = _standardise(F[:, columns].astype(np.float64))
    model = ridge_by_subnet(Z, y, np.logspace(-3, 3, 13), arch_groups(F) if groups is None else groups)
    return _LinearBase([[c] for c in columns], mean.tolist(), scale.tolist(),
                       model.coef_.tolist(), float(model.intercept_), name="ridge")


# --------------------------------------------------------------------------- predictor


class ResidualPredictor:
    """Linear base + XGBoost residual + bootstrap ensemble; subclasses set the target.

    Subclasses define ``target`` (name stored in metadata), ``log_link``
    (residuals in log space, for positive multiplicative targets) and
    :meth:`_fit_base`.
    """

    target: ClassVar[str] = ""
    log_link: ClassVar[bool] = False
    ties_are_data: ClassVar[bool] = False
    """Whether labels without spread are a fact to fit (accuracy on a small set can tie) or broken input."""
    feature_version: ClassVar[str] = FEATURE_VERSION
    """What a saved model's inputs depend on; a subclass with its own features extends it."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        device_hash: str | None = None,
        n_estimators: int = 300,
        max_depth: int = 3,
        learning_rate: float = 0.05,
        n_members: int = 5,
        cv_folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.space = space
        self.device_hash = device_hash
        self.featurizer = ArchFeaturizer(space)
        self.settings = {
            "n_estimators": whole_number(n_estimators, "n_estimators", 0),
            "max_depth": whole_number(max_depth, "max_depth", 1),
            "learning_rate": _rate_setting(learning_rate), "n_members": whole_number(n_members, "n_members", 0),
            "cv_folds": whole_number(cv_folds, "cv_folds", 0), "seed": whole_number(seed, "seed", 0),
        }
        self._base: _LinearBase | None = None
        self._booster: xgb.Booster | None = None
        self._members: list[tuple[_LinearBase, xgb.Booster]] = []
        self.meta: PredictorMeta | None = None
        self.calibration: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting

    def _fit_base(self, F: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> _LinearBase:
        """The linear base; ``groups`` (default: :func:`arch_groups`) are the rows a CV keeps together."""
        raise NotImplementedError

    def _calibrate_link(self, F: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Parameters of the target's link, fixed from all labels before any model is fitted."""
        return {}

    def _fold_calibration(self, F: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The link's parameters for a CV fold's model, from the fold's training rows only."""
        return self._calibrate_link(F, y)

    def _calibrate_spread(self, F: np.ndarray, y: np.ndarray,
                          oof: np.ndarray | None) -> dict[str, Any]:
        """Parameters of :meth:`predict_dist`'s spread, once the members are fitted.

        ``oof`` holds the out-of-fold predictions of the training rows
        (``None`` when there were too few rows for CV).
        """
        return {}

    def _residual(self, base_pred: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.log(y) - np.log(base_pred) if self.log_link else y - base_pred

    def _combine(self, base_pred: np.ndarray, resid: np.ndarray) -> np.ndarray:
        return base_pred * np.exp(resid) if self.log_link else base_pred + resid

    def _tree_features(self, F: np.ndarray) -> np.ndarray:
        """The columns the trees see (all of them here; a subclass may leave derived ones out)."""
        return F

    def _tree_params(self, seed: int) -> dict[str, Any]:
        """XGBoost settings shared by every tree fit (one place, so subclasses fit alike)."""
        return {
            "objective": "reg:squarederror", "max_depth": self.settings["max_depth"],
            "eta": self.settings["learning_rate"], "subsample": 0.8, "colsample_bytree": 0.6,
            "min_child_weight": 2.0, "lambda": 5.0, "nthread": 1, "tree_method": "hist",
            "seed": seed, "base_score": 0.0,
        }

    def _fit_one(self, F: np.ndarray, y: np.ndarray, seed: int, rounds: int | None = None,
                 groups: np.ndarray | None = None) -> tuple[_LinearBase, xgb.Booster]:
        """Base, then XGBoost on its residual; ``rounds=None`` picks the tree count by CV."""
        base = self._fit_base(F, y, groups)
        resid = self._residual(base.predict(F).astype(np.float64), y)
        params = self._tree_params(seed)
        data = xgb.DMatrix(self._tree_features(F), label=resid, nthread=1)
        if rounds is None:
            rounds = self._residual_rounds(params, data, arch_groups(F), seed)
        return base, xgb.train(params, data, num_boost_round=rounds)

    def _residual_rounds(self, params: dict[str, Any], data: xgb.DMatrix, groups: np.ndarray,
                         seed: int) -> int:
        """How many trees the residual deserves, by K-fold CV with early stopping.

        On noisy labels (a busy shared CPU) the residual is mostly noise and
        CV stops after a handful of trees; on clean labels it runs to
        ``n_estimators``.  Too few distinct subnets for CV: no residual model
        at all.  ``groups`` (:func:`arch_groups`) keeps a subnet's repeats in
        one fold, else trees that memorise labels look as good as ones that
        predict.
        """
        n_max = self.settings["n_estimators"]
        if n_max == 0 or groups.max() + 1 < 20:
            return 0
        history = xgb.cv(params, data, num_boost_round=n_max, folds=xgb_cv_folds(groups, 5, seed),
                         seed=seed, early_stopping_rounds=max(10, n_max // 10))
        return int(len(history))

    def _predict_one(self, model: tuple[_LinearBase, xgb.Booster], F: np.ndarray) -> np.ndarray:
        base, booster = model
        resid = booster.inplace_predict(self._tree_features(F))
        return self._combine(base.predict(F).astype(np.float64), resid.astype(np.float64))

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        X_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
    ) -> "ResidualPredictor":
        """Fit on encoded genes ``X`` and labels ``y``; score by CV (and on a test set if given).

        ``meta.metrics["cv"]`` holds the K-fold out-of-fold report;
        ``meta.metrics["test"]`` the report on ``(X_test, y_test)``.
        """
        X, y = self._check_xy(X, y)
        F = self.featurizer.transform(X)  # refuses genes that index no choice, before the labels are judged
        if len(np.unique(F, axis=0)) < 2:  # 20 repeats of one subnet fitted, then predicted others at 0.7-1.2% sd
            raise ValueError(f"all {len(y)} labelled rows are one subnet: a model of one subnet says nothing of "
                             "another; fit on at least 2 different subnets")
        tied = bool(np.ptp(y) == 0)
        if tied and not self.ties_are_data:
            raise ValueError(f"all {len(y)} {self.target} labels are {y[0]:g}: labels without spread rank "
                             "no subnet above another, so there is nothing to fit")
        seed = self.settings["seed"]
        metrics: dict[str, Any] = {"labels_without_spread": True} if tied else {}
        self.calibration = self._calibrate_link(F, y)
        # Labels without spread are predicted exactly and score a perfect CV (MAPE 0%, all within 10%) that
        # says nothing of ranking: no CV figure is reported for them.
        oof, folds = None, 0 if tied else self._n_folds(F)
        if folds:
            oof = self._oof_predictions(F, y, folds, seed)
            metrics["cv"] = regression_report(y, oof)
        self._base, self._booster = self._fit_one(F, y, seed)
        rounds = self._booster.num_boosted_rounds()
        metrics["residual_trees"] = rounds
        metrics["base"] = self._base.name
        rng = np.random.default_rng(seed)
        self._members = []
        for m in range(self.settings["n_members"]):
            idx = rng.integers(0, len(y), len(y))
            # A row drawn twice is the resample's copy, not a second measurement: members choose
            # their base row by row, as they always have, so the spread stays as calibrated.
            self._members.append(self._fit_one(F[idx], y[idx], seed + 1 + m, rounds, groups=np.arange(len(idx))))
        self.calibration |= self._calibrate_spread(F, y, oof)
        if X_test is not None and y_test is not None:
            X_test, y_test = self._check_xy(X_test, y_test)
            metrics["test"] = regression_report(y_test, self.predict(X_test))
        self.meta = PredictorMeta(
            space_name=self.space.name, target=self.target, device_hash=self.device_hash,
            feature_version=self.feature_version, metrics=metrics, n_train=int(len(y)),
            settings=dict(self.settings), created=time.time(), calibration=dict(self.calibration),
            space_id=space_identity(self.space),
        )
        return self

    def _n_folds(self, F: np.ndarray) -> int:
        """CV folds for these rows: ``cv_folds`` capped by the distinct subnets, 0 below 10 of them."""
        n_groups = int(arch_groups(F).max()) + 1
        folds = min(self.settings["cv_folds"], n_groups)
        return folds if folds >= 2 and n_groups >= 10 else 0

    def _oof_predictions(self, F: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
        """Each row predicted by a model fitted without it or any repeat of its subnet.

        The fold's model is made from its training rows, the link's
        calibration included (:meth:`_fold_calibration`: the accuracy blend's
        weights and ceiling are chosen by a CV of their own).  Calibrated once
        on every row, the accuracy CV scored those choices on the rows it then
        reported: MAPE 0.84% and tau 0.87 where fitting each fold afresh gave
        0.92% and 0.83.
        """
        out = np.empty(len(y))
        everything = np.arange(len(y))
        on_every_row = self.calibration
        try:
            for test in group_folds(arch_groups(F), folds, seed):
                train = np.setdiff1d(everything, test)
                self.calibration = self._fold_calibration(F[train], y[train])
                out[test] = self._predict_one(self._fit_one(F[train], y[train], seed), F[test])
        finally:
            self.calibration = on_every_row
        return out

    def _check_xy(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and labels as arrays; genes are checked (not cast) by the featurizer."""
        X = np.atleast_2d(np.asarray(X))
        y = np.asarray(y, dtype=np.float64).ravel()
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        if len(y) < 2:
            raise ValueError("need at least 2 labelled subnets to fit")
        if not np.all(np.isfinite(y)):
            raise ValueError("labels contain NaN or infinity")
        if self.log_link and np.any(y <= 0):
            raise ValueError(f"{self.target} labels must be positive")
        return X, y

    # ------------------------------------------------------------------ prediction

    def _require_fitted(self) -> None:
        if self._booster is None or self._base is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load()")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted targets for encoded genes ``X`` (float64, one per row)."""
        self._require_fitted()
        F = self.featurizer.transform(X)
        return self._predict_one((self._base, self._booster), F)

    def predict_dist(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)``: the full-data model's prediction and the bootstrap members' spread.

        A model of fewer than 2 members has no spread to give: it answered
        zero, which refinement's optimistic bounds read as certainty.
        """
        self._require_fitted()
        if not self._has_spread():
            raise ValueError(f"this {type(self).__name__} was fitted with n_members={len(self._members)}, so it "
                             "has no spread: fit it with n_members >= 2 to call predict_dist")
        F = self.featurizer.transform(X)
        return self._predict_one((self._base, self._booster), F), self._member_spread(F)

    def _has_spread(self) -> bool:
        """Whether :meth:`predict_dist` has a spread to give: the members' needs 2 of them."""
        return len(self._members) >= 2

    def _member_spread(self, F: np.ndarray) -> np.ndarray:
        """Standard deviation of the bootstrap members' predictions (zeros with fewer than 2)."""
        if len(self._members) < 2:
            return np.zeros(len(F))
        return np.stack([self._predict_one(m, F) for m in self._members]).std(axis=0, ddof=1)

    def report(self) -> str:
        """Human-readable quality lines (one per evaluation) for logs and the CLI."""
        if self.meta is None:
            return f"{type(self).__name__}: not fitted"
        lines = [f"{self.target} predictor for {self.meta.space_name} "
                 f"(n_train={self.meta.n_train}, device={self.meta.device_hash})"]
        metrics = self.meta.metrics
        lines[0] += f"; base={metrics.get('base')}, residual trees={metrics.get('residual_trees')}"
        for name in ("cv", "test"):
            if name in metrics:
                lines.append(f"  {name:>5}: {format_report(metrics[name])}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write ``meta.json``, ``base.json`` and one XGBoost JSON per model into ``directory``."""
        self._require_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._booster.save_model(directory / "model.json")
        bases = [asdict(self._base)]
        for i, (base, booster) in enumerate(self._members):
            booster.save_model(directory / f"member_{i}.json")
            bases.append(asdict(base))
        (directory / BASE_FILE).write_text(json.dumps(bases, allow_nan=True))
        meta = self.meta.to_dict() | {"n_members": len(self._members), "class": type(self).__name__}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, *, space: SearchSpace, device_hash: str | None = None
    ) -> "ResidualPredictor":
        """Load a saved predictor, refusing one made for another space/device/target/features.

        ``device_hash=None`` skips the device check (accuracy predictors have none).
        """
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} holds no saved predictor ({META_FILE} missing)")
        raw = json.loads(meta_path.read_text())
        meta = PredictorMeta.from_dict(raw)
        _check_compatible(meta, cls, space, device_hash, directory)
        settings = meta.settings
        predictor = cls(space, device_hash=meta.device_hash, **settings)
        bases = [_LinearBase(**b) for b in json.loads((directory / BASE_FILE).read_text())]
        predictor._base = bases[0]
        predictor._booster = _load_booster(directory / "model.json")
        predictor._members = [
            (bases[1 + i], _load_booster(directory / f"member_{i}.json"))
            for i in range(int(raw.get("n_members", 0)))
        ]
        predictor.meta = meta
        predictor.calibration = dict(meta.calibration)
        return predictor


def _load_booster(path: Path) -> xgb.Booster:
    booster = xgb.Booster(params={"nthread": 1})
    booster.load_model(path)
    return booster


def _check_compatible(
    meta: PredictorMeta, cls: type[ResidualPredictor], space: SearchSpace,
    device_hash: str | None, where: Path
) -> None:
    target, version = cls.target, cls.feature_version
    problems = []
    if meta.target != target:
        problems.append(f"it predicts {meta.target!r}, not {target!r}")
    if meta.space_name != space.name:
        problems.append(f"it was trained for space {meta.space_name!r}, not {space.name!r}")
    elif meta.space_id is not None and meta.space_id != space_identity(space):
        problems.append(f"it was trained for space {meta.space_id!r} (same name, other choices or "
                        f"head), not {space_identity(space)!r}")
    if device_hash is not None and meta.device_hash != device_hash:
        problems.append(f"it was trained for device {meta.device_hash!r}, not {device_hash!r}")
    if meta.feature_version != version:
        problems.append(
            f"it uses feature version {meta.feature_version!r}; this hwsearch computes "
            f"version {version!r} - retrain it (`hwsearch train`)"
        )
    if problems:
        raise PredictorMismatchError(f"refusing to load the predictor in {where}: "
                                     + "; ".join(problems))
