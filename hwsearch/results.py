"""Search results: candidates with measured and predicted values, and per-device Pareto fronts.

A :class:`ParetoFront` is what a job hands back for one device.  Its points
carry the values that were really measured next to what the predictors said
before the measurement, so a reader sees how far to trust the predictions.
The hypervolume is stored with its reference point: a hypervolume without one
cannot be compared with anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from devices.plain import dumps, is_printable
from hwsearch.checks import is_integer, is_real
from hwsearch.problem import Objective, finite_number
from hwsearch.space import ArchConfig, SearchSpace

__all__ = ["Candidate", "ParetoFront", "best_under", "fastest_above", "hypervolume", "knee",
           "non_dominated", "query_metrics"]

Source = Literal["measured", "predicted"]


@dataclass(frozen=True)
class Candidate:
    """One subnet of a front.

    ``measured`` and ``predicted`` map metric names (``accuracy``, ``latency_ms``)
    to values; ``spread`` holds the predictors' standard deviation per metric.
    ``predicted`` is empty for subnets no predictor was asked about before
    they were measured.  ``latency_conditions`` says how the measured latency
    was taken (``stable``, ``clock``, ``latency_source``, ...; see
    :func:`hwsearch.jobs.latency_conditions`), so a point whose latency is not
    a stable, calibrated measurement is shown as such; empty when unknown.
    ``precision`` is the precision the subnet was measured and evaluated at
    (``fp32``, ``int8``): a front may hold one subnet at two precisions, as
    two points; fronts saved before precision existed load as ``fp32``.
    """

    arch: ArchConfig
    measured: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    macs: int | None = None
    params: int | None = None
    latency_conditions: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"

    def value(self, metric: str, source: Source = "measured") -> float:
        """A metric's measured value, or its predicted one when asked (or when never measured)."""
        if source == "measured" and metric in self.measured:
            return self.measured[metric]
        return self.predicted[metric]

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch.to_dict(),
            "arch_key": self.arch.key(),
            "measured": dict(self.measured),
            "predicted": dict(self.predicted),
            "spread": dict(self.spread),
            "macs": self.macs,
            "params": self.params,
            "latency_conditions": dict(self.latency_conditions) or None,
            "precision": self.precision,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], space: SearchSpace | None = None) -> Candidate:
        """Inverse of :meth:`to_dict`; with ``space`` the arch is validated against it."""
        arch_data = data["arch"]
        arch = space.from_dict(arch_data) if space is not None else ArchConfig(
            arch_data["resolution"], tuple(arch_data["depths"]), tuple(arch_data.get("kernel", ())),
            tuple(arch_data.get("expand", ())), tuple(arch_data.get("width", ())))
        return cls(arch=arch, measured=dict(data.get("measured", {})),
                   predicted=dict(data.get("predicted", {})), spread=dict(data.get("spread", {})),
                   macs=data.get("macs"), params=data.get("params"),
                   latency_conditions=dict(data.get("latency_conditions") or {}),
                   precision=str(data.get("precision", "fp32")))


def measurement_label(conditions: Mapping[str, Any]) -> str:
    """How a point's latency was measured, in a few words: 'stable ±3.1%', 'UNSTABLE ±5.4%', 'raw median'.

    The ± is ``latency_ci`` (the spread between sessions included) where
    known, else the session's own ``ratio_ci``, shown for unstable rows
    only: a stable row's own CI understates how far it may be off.  'cpu'
    marks thread-CPU-clock rows (CPU time of the inference thread, not wall time).
    """
    if not conditions:
        return ""
    ci = conditions.get("latency_ci")
    if conditions.get("latency_source") == "median_ms":
        label = "raw median"
    elif conditions.get("stable"):
        label = "stable" + _plus_minus(ci)
    else:
        label = "UNSTABLE" + _plus_minus(ci if ci is not None else conditions.get("ratio_ci"))
    return label + (", cpu" if conditions.get("clock") == "thread_cpu" else "")


def _plus_minus(ci: Any) -> str:
    return f" ±{ci:.1%}" if isinstance(ci, (int, float)) else ""


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows of a minimisation matrix.

    Two objectives take an ``O(n log n)`` sweep, so exhaustive fronts of
    10^5-10^6 subnets are cheap; more objectives use pymoo's sorting.
    """
    F = np.asarray(F, dtype=np.float64)
    if len(F) == 0:
        return np.zeros(0, dtype=np.int64)
    if F.shape[1] != 2:
        keep = NonDominatedSorting().do(F, only_non_dominated_front=True)
        return np.sort(np.asarray(keep, dtype=np.int64))
    unique, inverse = np.unique(F, axis=0, return_inverse=True)  # sorted by f0, then f1
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], unique[:-1, 1]]))
    kept = unique[:, 1] < best_before
    return np.flatnonzero(kept[inverse.reshape(-1)])


def hypervolume(F: np.ndarray, reference_point: Sequence[float]) -> float:
    """pymoo's hypervolume of minimisation values ``F``; points beyond the reference add nothing."""
    F = np.asarray(F, dtype=np.float64)
    ref = np.asarray(reference_point, dtype=np.float64)
    F = F[np.all(F < ref, axis=1)] if len(F) else F
    if len(F) == 0:
        return 0.0
    return float(HV(ref_point=ref)(F))


@dataclass(frozen=True)
class ParetoFront:
    """The non-dominated subnets found for one device, sorted by the first objective.

    ``reference_point`` is in pymoo's minimisation form (maximised metrics
    negated), the form ``hypervolume`` was computed in.  ``source`` says
    which values the points were kept by, and are queried by unless a query
    says otherwise: hwsearch's jobs keep measured points; a library user may
    keep predicted ones.
    """

    device: str
    space_name: str
    points: tuple[Candidate, ...]
    objectives: tuple[Objective, ...]
    reference_point: tuple[float, ...]
    hypervolume: float
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    source: Source = "measured"

    @classmethod
    def build(
        cls,
        *,
        device: str,
        space_name: str,
        candidates: Sequence[Candidate],
        objectives: Sequence[Objective],
        reference_point: Sequence[float],
        seed: int,
        settings: Mapping[str, Any] | None = None,
        source: Source = "measured",
    ) -> ParetoFront:
        """Keep the non-dominated candidates (by ``source`` values) and compute the hypervolume."""
        objectives = tuple(objectives)
        if source == "measured":
            _check_alike(candidates, objectives)
        F = _objective_matrix(candidates, objectives, source)
        keep = non_dominated(F)
        keep = keep[np.lexsort(F[keep].T[::-1])] if len(keep) else keep
        points = tuple(candidates[i] for i in keep)
        return cls(device=device, space_name=space_name, points=points, objectives=objectives,
                   reference_point=tuple(float(r) for r in reference_point),
                   hypervolume=hypervolume(F[keep], reference_point), seed=seed,
                   settings=dict(settings or {}), source=source)

    # ------------------------------------------------------------------ queries

    def knee(self, source: Source | None = None) -> Candidate | None:
        """The point farthest below the line joining the front's two extremes (see :func:`knee`)."""
        return knee(self.points, self.objectives, source or self.source)

    def best_under(self, latency_ms: float, *, latency: str | None = None,
                   accuracy: str | None = None, source: Source | None = None) -> Candidate | None:
        """The most accurate point whose latency is at most ``latency_ms`` (metrics: :func:`query_metrics`)."""
        latency, accuracy = query_metrics(self.objectives, self._held(), latency, accuracy)
        return best_under(self.points, latency_ms, latency, source or self.source, accuracy)

    def fastest_above(self, floor: float, *, latency: str | None = None,
                      accuracy: str | None = None, source: Source | None = None) -> Candidate | None:
        """The fastest point whose accuracy is at least ``floor`` (metrics: :func:`query_metrics`)."""
        latency, accuracy = query_metrics(self.objectives, self._held(), latency, accuracy)
        return fastest_above(self.points, floor, latency, source or self.source, accuracy)

    def _held(self) -> set[str]:
        """Every metric the front's objectives or points name."""
        return {o.metric for o in self.objectives}.union(
            *(p.measured.keys() | p.predicted.keys() for p in self.points))

    def latency_timed(self) -> str:
        """What one latency of this front times, in words, where that is not one float32 image.

        ``per batch of 4``, ``on float16 inputs``, both, or empty: a job's
        front says (``settings["timed_input"]``), a batch-4 front's 0.075 ms
        beside 0.050 at batch 1 said nothing; a front saved before that says
        nothing it does not know.
        """
        timed = self.settings.get("timed_input")
        if not isinstance(timed, Mapping):  # absent, or an edited file's junk: nothing known
            return ""
        batch, dtype = timed.get("batch", 1), timed.get("input_dtype", "float32")
        return ", ".join(([f"per batch of {batch}"] if batch != 1 else [])
                         + ([f"on {dtype} inputs"] if dtype != "float32" else []))

    @property
    def budgets_ms(self) -> tuple[float, ...]:
        """The latency budgets the run was aimed at (``settings["targets"]``), if any."""
        targets = self.settings.get("targets") or {}
        return tuple(float(b) for b in targets.get("budgets_ms") or ())

    def target_picks(self, source: Source | None = None) -> list[dict[str, Any]]:
        """For each budget the run was aimed at: the index of the best point under it.

        ``index`` is ``None`` when no point fits the budget.  This is the
        answer a user asked for ("the most accurate subnet under 25 ms"), so
        reports list it first and exports can name a budget instead of an index.
        """
        picks = []
        for budget in self.budgets_ms:
            best = self.best_under(budget, source=source)
            picks.append({"budget_ms": budget,
                          "index": None if best is None else self.points.index(best)})
        return picks

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "space_name": self.space_name,
            "objectives": [{"metric": o.metric, "sense": o.sense} for o in self.objectives],
            "reference_point": list(self.reference_point),
            "hypervolume": self.hypervolume,
            "seed": self.seed,
            "settings": self.settings,
            "source": self.source,
            "points": [p.to_dict() for p in self.points],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Standard JSON: a non-finite value (a point's ``ratio_ci`` with no CI, a spread) is null,
        which :meth:`from_dict` reads as "not known"; ``Infinity`` failed in every JavaScript reader."""
        return dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], space: SearchSpace | None = None) -> ParetoFront:
        """Inverse of :meth:`to_dict`; an ill-typed field, a sense other than min/max or an impossible
        objective value (see :func:`_check_point`) is a ValueError naming the field (and point).

        Fronts come back from files a user may have edited or written: a NaN
        latency would otherwise be drawn, ranked and even chosen as the knee,
        and a ``"device": 7``, ``"objectives": []`` or ``"reference_point": "x"``
        loaded and then failed deep inside a report, after some of its files were written.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a front must be a JSON object, got {type(data).__name__}")
        space_name = _name_field(data, "space_name")
        if space is not None and space.name != space_name:
            raise ValueError(f"front is for space {space_name!r}, not {space.name!r}")
        objectives = _objectives(data["objectives"])
        points = tuple(Candidate.from_dict(_point_fields(i, point), space)
                       for i, point in enumerate(_list_field(data, "points")))
        for index, point in enumerate(points):
            _check_point(index, point, objectives)
        source = _source(data.get("source", "measured"))  # a file from before the field: a job's, measured
        if source == "measured":
            _check_alike(points, objectives)
        return cls(
            device=_name_field(data, "device"),
            space_name=space_name,
            points=points,
            objectives=objectives,
            reference_point=_reference_point(data["reference_point"], objectives),
            hypervolume=finite_number(data["hypervolume"], "field 'hypervolume'"),
            seed=_seed(data["seed"]),
            settings=_settings(data.get("settings", {})),
            source=source,
        )

    @classmethod
    def from_json(cls, text: str, space: SearchSpace | None = None) -> ParetoFront:
        return cls.from_dict(json.loads(text), space)

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None) -> ParetoFront:
        return cls.from_json(Path(path).read_text(encoding="utf-8"), space)


#: The longest device or space name a front file may hold.  Device names come from profiles,
#: which allow 100 characters; the device also names the report's PNG file, and a name past
#: the file system's 255 bytes failed only when that file was written.
MAX_FRONT_NAME_CHARS = 200


def _name_field(data: Mapping[str, Any], name: str) -> str:
    """``data[name]`` as a non-empty string of at most :data:`MAX_FRONT_NAME_CHARS`.

    The device keys the report's fronts and names its files, and is escaped
    into HTML: a number, null or list there loaded and failed mid-report.  It
    is also printed and drawn, so control and bidi characters and lone
    surrogates are refused (:func:`devices.plain.is_printable`): a lone
    surrogate crashed the report's plot with a TypeError.
    """
    value = data[name]
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_FRONT_NAME_CHARS \
            or not is_printable(value):
        raise ValueError(f"field {name!r} must be a non-empty string of at most {MAX_FRONT_NAME_CHARS} "
                         f"characters without control characters, got {_short(value)}")
    return value


def _list_field(data: Mapping[str, Any], name: str) -> list[Any]:
    """``data[name]``, which must be a JSON array (a string or object would be iterated as one)."""
    value = data[name]
    if not isinstance(value, list):
        raise ValueError(f"field {name!r} must be a list, got {_short(value)}")
    return value


def _objectives(value: Any) -> tuple[Objective, ...]:
    """At least one ``{"metric", "sense"}`` object: every plot, query and knee reads the first."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"field 'objectives' must be a non-empty list, got {_short(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ValueError(f"field 'objectives' item {index} must be an object with 'metric' and 'sense', "
                             f"got {_short(item)}")
    return tuple(Objective(o["metric"], o["sense"]) for o in value)


def _reference_point(value: Any, objectives: Sequence[Objective]) -> tuple[float, ...]:
    """One finite number per objective: the hypervolume is meaningless against anything else."""
    if not isinstance(value, list) or len(value) != len(objectives):
        raise ValueError(f"field 'reference_point' must be a list of {len(objectives)} numbers "
                         f"(one per objective), got {_short(value)}")
    return tuple(finite_number(v, f"field 'reference_point' item {i}") for i, v in enumerate(value))


def _seed(value: Any) -> int:
    """An integer seed; ``int()`` would have taken ``1e308`` and ``"7"`` alike."""
    if not is_integer(value):
        raise ValueError(f"field 'seed' must be an integer, got {_short(value)}")
    return int(value)


def _settings(value: Any) -> dict[str, Any]:
    """A JSON object (``dict()`` would also have taken a list of pairs)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"field 'settings' must be an object, got {_short(value)}")
    return dict(value)


def _short(value: Any) -> str:
    """``repr(value)`` cut to 60 characters, so a huge field does not flood the one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _point_fields(index: int, value: Any) -> Mapping[str, Any]:
    """A point as an object whose value tables are objects: ``"measured": []`` loaded and failed in the report."""
    if not isinstance(value, Mapping):
        raise ValueError(f"point {index} must be an object, got {_short(value)}")
    if not isinstance(value.get("arch"), Mapping):
        raise ValueError(f"point {index} field 'arch' must be an object, got {_short(value.get('arch'))}")
    for name in ("measured", "predicted", "spread", "latency_conditions"):
        if value.get(name) is not None and not isinstance(value[name], Mapping):
            raise ValueError(f"point {index} field {name!r} must be an object, got {_short(value[name])}")
    return value


def _check_point(index: int, point: Candidate, objectives: Sequence[Objective]) -> None:
    """Refuse objective values no subnet can have: missing, non-finite, a measured accuracy outside [0, 1].

    hwsearch measures accuracy as a top-1 fraction (predictors and
    ``--accuracy-floor`` take it so), so 5.0 is a corrupted file, not a
    result.  Only objective values are checked: fields that are null by
    design (``macs``, ``latency_conditions``' unknowns) mean "not known".
    Predicted accuracy is only checked for finiteness: a model's estimate may
    stray just outside [0, 1] without anything being wrong with the file.
    """
    for objective in objectives:
        if objective.metric not in point.measured and objective.metric not in point.predicted:
            raise ValueError(f"point {index} ({point.arch.key()}) has no value of objective {objective.metric!r}, "
                             "measured or predicted")
        for kind, values in (("measured", point.measured), ("predicted", point.predicted)):
            if objective.metric not in values:
                continue
            value = values[objective.metric]
            where = f"point {index} ({point.arch.key()}) {kind} {objective.metric!r}"
            value = finite_number(value, where)
            if kind == "measured" and objective.metric == "accuracy" and not 0.0 <= value <= 1.0:
                raise ValueError(f"{where} is {value!r}; accuracy is a fraction in [0, 1]")


def _source(value: object) -> Source:
    """A front's ``source`` field: ``measured`` or ``predicted``."""
    if value not in ("measured", "predicted"):
        raise ValueError(f"field 'source' must be 'measured' or 'predicted', got {value!r}")
    return value  # type: ignore[return-value]


def _check_alike(points: Sequence[Candidate], objectives: Sequence[Objective]) -> None:
    """Refuse points measured in an objective beside points only predicted in it.

    Measured queries fall back to a point's prediction; mixed, a point with a
    predicted latency of 0.001 ms beside measured ones dominated all of them
    and was the pick under every budget.  Only measured fronts are held to
    it: hwsearch's own are measured throughout, and a front kept by
    predictions (``source="predicted"``) is queried by them.
    """
    for objective in objectives:
        measured = [objective.metric in point.measured for point in points]
        if any(measured) and not all(measured):
            index = measured.index(False)
            raise ValueError(f"point {index} ({points[index].arch.key()}) has only a predicted "
                             f"{objective.metric!r} while other points were measured: a front compares "
                             "measurements with measurements (one kept by predictions says \"source\": "
                             "\"predicted\")")


# --------------------------------------------------------------------------- queries
# Shared by measured fronts (ParetoFront) and predicted ones (hwsearch.search.SearchResult).


def knee(points: Sequence[Candidate], objectives: Sequence[Objective],
         source: Source = "measured") -> Candidate | None:
    """The point farthest below the line joining the front's two extremes (normalised).

    Computed on the first two objectives (accuracy and latency in practice):
    the subnet where giving up more accuracy stops buying much speed.
    """
    if len(points) <= 2:
        return points[len(points) // 2] if points else None
    F = _objective_matrix(points, tuple(objectives)[:2], source)
    lo, hi = F.min(axis=0), F.max(axis=0)
    Z = (F - lo) / np.where(hi > lo, hi - lo, 1.0)
    a, b = Z[np.argmin(Z[:, 0])], Z[np.argmin(Z[:, 1])]
    direction = (b - a) / max(np.linalg.norm(b - a), 1e-12)
    # Signed distance to the chord, made positive on the side of the ideal point (0, 0).
    side = np.sign(_cross(direction, -a)) or 1.0
    distance = side * _cross(direction, Z - a)
    return points[int(np.argmax(distance))]


def best_under(points: Sequence[Candidate], latency_ms: float, latency: str = "latency_ms",
               source: Source = "measured", accuracy: str = "accuracy") -> Candidate | None:
    """The point with the largest ``accuracy`` metric whose ``latency`` is at most ``latency_ms``."""
    _query_value(latency_ms, "latency_ms")
    fits = [p for p in points if p.value(latency, source) <= latency_ms]
    return max(fits, key=lambda p: p.value(accuracy, source), default=None)


def fastest_above(points: Sequence[Candidate], floor: float, latency: str = "latency_ms",
                  source: Source = "measured", accuracy: str = "accuracy") -> Candidate | None:
    """The point with the smallest ``latency`` metric whose ``accuracy`` is at least ``floor``."""
    _query_value(floor, "floor")
    fits = [p for p in points if p.value(accuracy, source) >= floor]
    return min(fits, key=lambda p: p.value(latency, source), default=None)


def _query_value(value: object, name: str) -> None:
    """Refuse a budget or floor that is no number: NaN would quietly answer None, a string a TypeError."""
    if not is_real(value) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")


_CONVENTIONAL = {"latency": ("latency_ms", "min", "minimised"),
                 "accuracy": ("accuracy", "max", "maximised")}


def query_metrics(objectives: Sequence[Objective], held: Collection[str], latency: str | None = None,
                  accuracy: str | None = None) -> tuple[str, str]:
    """The ``(latency, accuracy)`` metrics :func:`best_under` and :func:`fastest_above` compare.

    A metric not named is the conventional one (``latency_ms``, ``accuracy``)
    when the front holds it, else the front's only minimised (for latency) or
    maximised (for accuracy) objective: a search of ``top5`` against
    ``latency_ms@phone`` needs no keyword, and a front with neither name is
    not answered with a ``KeyError``.  A name the front does not hold, or no
    such objective (or several), is a ValueError saying which keyword to pass.
    """
    return (_query_metric("latency", latency, objectives, held),
            _query_metric("accuracy", accuracy, objectives, held))


def _query_metric(role: str, given: str | None, objectives: Sequence[Objective],
                  held: Collection[str]) -> str:
    """One metric of :func:`query_metrics`: the one given, checked, or the default for ``role``."""
    conventional, sense, adjective = _CONVENTIONAL[role]
    if given is not None:
        if given not in held:
            raise ValueError(f"{role} metric {given!r} is not on this front; it has {sorted(held)}")
        return given
    if conventional in held:
        return conventional
    matches = [o.metric for o in objectives if o.sense == sense]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(f"{o.metric} ({o.sense})" for o in objectives)
    raise ValueError(f"this front has no {conventional!r} metric and {len(matches) or 'no'} "
                     f"{adjective} objectives ({listed}) to use instead; name the {role} metric "
                     f"to compare")


def _objective_matrix(candidates: Sequence[Candidate], objectives: Sequence[Objective],
                      source: Source) -> np.ndarray:
    """Minimisation matrix ``(n, n_obj)`` of the candidates' values."""
    if not candidates:
        return np.zeros((0, len(objectives)))
    return np.array([[o.to_min(np.float64(c.value(o.metric, source))) for o in objectives]
                     for c in candidates], dtype=np.float64)


def _cross(direction: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """2-D cross product: signed distance of ``rel`` from a line along unit ``direction``."""
    return direction[0] * rel[..., 1] - direction[1] * rel[..., 0]
