"""Job reports: a Pareto plot per device (PNG) and one self-contained HTML page.

A report shows the fronts across devices, how good the predictors were on
held-out subnets, and the measurements behind both, so a reader can judge
the result without the store.  The page inlines its images (base64) and its
style, so it can be mailed or attached to a ticket as one file.

The data come from a finished job in a store (:func:`from_store`) or from a
job directory written by :func:`write_job_dir` (:func:`from_dir`).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.plain import dumps
from hwsearch.anchor import in_current_norm, readable_rows
from hwsearch.filenames import file_stem
from hwsearch.quantize import precision_key
from hwsearch.results import Candidate, ParetoFront, measurement_label
from hwsearch.store import SQLiteStore, Store

__all__ = ["ReportData", "build_report", "from_dir", "from_store", "precision_comparison",
           "write_job_dir"]

_JOB_FILE = "job.json"


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows.

    ``predictors`` maps a predictor's name (``accuracy``, ``latency@<device>``)
    to its held-out quality metrics; ``measurements`` maps a device to rows
    ``{arch_key, latency_ms, accuracy, ...}`` of every subnet measured on it.
    """

    title: str
    fronts: Mapping[str, ParetoFront]
    predictors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    measurements: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- loading


def _measurements(store: Store, result: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every latency measured for the job's devices, at every precision, with the job's accuracies.

    Latencies are corrected against the anchor's norm of now, as the job's
    fronts are (:func:`hwsearch.anchor.in_current_norm`).

    A job from before precisions existed has one (FP32) entry per device.
    """
    network = result.get("network_id", result["space_name"])
    out = {}
    for device, info in result["devices"].items():
        rows = []
        for precision, entry in info.get("precisions", {"fp32": {"hash": info["hash"]}}).items():
            dataset = precision_key(result["dataset_id"], precision)
            accuracies = store.get_accuracies(result["supernet_id"], dataset)
            stored = readable_rows(store.get_latencies(entry["hash"], network), entry["hash"])
            for key, m in sorted(in_current_norm(stored, entry["hash"], network).items()):
                rows.append({"arch_key": key, "precision": precision,
                             "latency_ms": m.get("latency_ms"), "ratio_ci": m.get("ratio_ci"),
                             "latency_ci": m.get("latency_ci"),
                             "stable": m.get("stable"), "accuracy": accuracies.get(key)})
        out[device] = rows
    return out


def precision_comparison(measurements: Mapping[str, Sequence[Mapping[str, Any]]],
                         fronts: Mapping[str, ParetoFront]) -> dict[str, dict[str, Any]]:
    """Per device searched at INT8: how INT8 compares with FP32 on the subnets measured at both.

    ``latency_ratio`` (INT8/FP32: min, median, max) and ``accuracy_change``
    (INT8 minus FP32, in accuracy points: min, median, max) over the subnets
    measured at both precisions, and how many of the front's points are INT8:
    the front is where INT8 wins, the ratios say by how much and where not.
    """
    out = {}
    for device, rows in measurements.items():
        by_precision: dict[str, dict[str, Mapping[str, Any]]] = {}
        for row in rows:
            by_precision.setdefault(row.get("precision", "fp32"), {})[row["arch_key"]] = row
        fp32, int8 = by_precision.get("fp32", {}), by_precision.get("int8", {})
        both = sorted(set(fp32) & set(int8))
        if not both:
            continue
        ratios = np.array([int8[k]["latency_ms"] / fp32[k]["latency_ms"] for k in both])
        changes = np.array([100 * (int8[k]["accuracy"] - fp32[k]["accuracy"]) for k in both
                            if int8[k].get("accuracy") is not None
                            and fp32[k].get("accuracy") is not None])
        front = fronts.get(device)
        out[device] = {
            "n_subnets": len(both),
            "latency_ratio": _spread3(ratios),
            "accuracy_change_points": _spread3(changes),
            "int8_front_points": sum(p.precision == "int8" for p in front.points) if front else 0,
            "front_points": len(front.points) if front else 0,
        }
    return out


def _spread3(values: Any) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    return {"min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max())}


def from_store(store: Store, job_id: str) -> ReportData:
    """The report data of a finished search job; KeyError for no such job, :class:`ValueError` saying why for any
    other that cannot be reported (one whose result lacks a field read "no job" before)."""
    record = store.get_job(job_id)
    result = _readable_result(job_id, record)
    try:
        return ReportData(
            title=f"hwsearch job {job_id}",
            fronts={d: _front(f, f"job {job_id}'s stored front of device {d!r}") for d, f in result["fronts"].items()},
            predictors=result.get("predictors", {}),
            measurements=_measurements(store, result),
            settings=record.spec,
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"job {job_id}'s stored result cannot be read (a damaged record: "
                         f"{type(error).__name__} {error}); no report can be made from it") from None


def _readable_result(job_id: str, record: Any) -> Mapping[str, Any]:
    """A succeeded search job's result, holding its fronts by device; :class:`ValueError` saying why not.

    A damaged record (its result or state unreadable, fronts of another shape)
    read "job ... is succeeded; a report needs a succeeded search job", or
    ended in a traceback; the service answers such a job's fronts with a 409.
    """
    damaged = [name for name in ("state", "result") if name in record.unreadable]
    if damaged:
        raise ValueError(f"job {job_id}'s stored {' and '.join(damaged)} cannot be read (a damaged record); "
                         "no report can be made from it")
    if record.state != "succeeded":
        raise ValueError(f"job {job_id} is {record.state}; a report needs a succeeded search job")
    fronts = record.result.get("fronts") if isinstance(record.result, Mapping) else None
    if not isinstance(fronts, Mapping):
        raise ValueError(f"job {job_id} has succeeded but its stored result holds no fronts by device "
                         "(not a search job, or a damaged record)")
    return record.result


def write_job_dir(out: str | Path, *, store: Store, job_id: str) -> Path:
    """Write a finished job as files: one front JSON per device plus ``job.json``.

    ``job.json`` carries the spec, the result summary and the measurements,
    so :func:`from_dir` rebuilds the full report without the store.  Both
    are standard JSON: a value with no finite number, such as a row's
    ``ratio_ci`` where no CI could be made, is null (readers show it as unknown).
    """
    data = from_store(store, job_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for device, front in data.fronts.items():
        front.save(out / f"front-{file_stem(device)}.json")
    (out / _JOB_FILE).write_text(dumps({
        "title": data.title, "spec": dict(data.settings), "predictors": dict(data.predictors),
        "measurements": {d: list(rows) for d, rows in data.measurements.items()},
    }, indent=2, default=str), encoding="utf-8")
    return out


# Stores that `hwsearch search` (store.db) and `hwsearch demo` (hwsearch.db) leave in their folders.
_STORE_FILES = ("store.db", "hwsearch.db")
#: The largest front or job JSON file a report reads (fronts of this size hold millions of points).
MAX_JSON_BYTES = 64 * 2**20


def from_dir(path: str | Path) -> ReportData:
    """Report data from the folder of `hwsearch search`, `hwsearch demo` or :func:`write_job_dir`.

    A folder holding a job store reports its latest succeeded search job in
    full; otherwise the front JSON files in it (or in its ``fronts/``) are
    read, with ``job.json`` supplying predictor quality and measurements.
    """
    path = Path(path)
    for name in _STORE_FILES:
        if (path / name).is_file():
            store = SQLiteStore(path / name)
            done = [r for r in store.jobs_in_states(("succeeded",)) if r.spec.get("kind", "search") == "search"]
            if done:
                return from_store(store, done[-1].job_id)
    fronts = {}
    for file in sorted([*path.glob("*.json"), *path.glob("fronts/*.json")]):
        data = _read_json(file) if file.name != _JOB_FILE else None
        if isinstance(data, dict) and {"device", "points", "objectives"} <= set(data):
            front = _front(data, file)
            fronts[front.device] = front
    if not fronts:
        raise ValueError(f"{path} holds no job store and no Pareto front JSON files")
    job = _read_json(path / _JOB_FILE) if (path / _JOB_FILE).is_file() else {}
    if not isinstance(job, dict):
        raise ValueError(f"{path / _JOB_FILE} must hold a JSON object, got {type(job).__name__}")
    return ReportData(title=job.get("title", f"hwsearch fronts in {path.name}"), fronts=fronts,
                      predictors=job.get("predictors", {}),
                      measurements=job.get("measurements", {}), settings=job.get("spec", {}))


def _read_json(file: Path) -> Any:
    """A JSON file's value; one too large, not a regular file, malformed or too deeply nested is a ValueError.

    A folder is whatever the user points at, so a FIFO named ``x.json`` (a read
    that never ends) or ``[[[...]]]`` nested 100,000 deep (a RecursionError)
    is reported naming the file, not as a hang or a traceback.
    """
    if not file.is_file():
        raise ValueError(f"{file} is not a regular file")
    size = file.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{file} is {size} bytes; report files are at most {MAX_JSON_BYTES}")
    try:
        return json.loads(file.read_bytes())
    except RecursionError:
        raise ValueError(f"{file} is nested too deeply to read") from None
    except ValueError as error:  # malformed JSON or text that is not UTF-8
        raise ValueError(f"{file} is not readable JSON ({error})") from None


def _front(data: Any, source: str | Path) -> ParetoFront:
    """The front a file or a job's record holds; missing or ill-typed fields are a ValueError naming ``source``."""
    try:
        return ParetoFront.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{source} is not a readable Pareto front ({type(error).__name__}: {error})") from None


# --------------------------------------------------------------------------- plots


def _axes_metrics(front: ParetoFront) -> tuple[str, str]:
    """(x, y) metrics of a front's plot: latency-like cost across, accuracy up."""
    names = [o.metric for o in front.objectives]
    y = "accuracy" if "accuracy" in names else names[0]
    x = next((n for n in names if n != y), y)
    return x, y


def _values(points: Sequence[Candidate], metric: str, source: str) -> list[float]:
    return [float(p.measured[metric] if source == "measured" else p.predicted[metric])
            for p in points if metric in (p.measured if source == "measured" else p.predicted)]


def _plot_front(ax: Any, front: ParetoFront, rows: Sequence[Mapping[str, Any]],
                color: str, *, label: str, background: bool) -> None:
    """The measured front as a staircase (what each latency buys), optionally over all measurements.

    With ``background``, every measured subnet is drawn in grey and the
    predictions made before measuring front points are drawn as crosses, so
    the gap between prediction and measurement is visible.
    """
    x, y = _axes_metrics(front)
    if background:
        both = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
        ax.scatter([r[x] for r in both], [r[y] for r in both], s=10, c="#bbbbbb",
                   label="measured subnets", zorder=1)
    points = sorted((p for p in front.points if x in p.measured and y in p.measured),
                    key=lambda p: p.measured[x])
    ax.step(_values(points, x, "measured"), _values(points, y, "measured"), where="post",
            marker="o", color=color, ms=5, label=label, zorder=3)
    predicted = [p for p in points if x in p.predicted and y in p.predicted]
    if background and predicted:
        ax.scatter(_values(predicted, x, "predicted"), _values(predicted, y, "predicted"),
                   marker="x", c=color, alpha=0.6, label="predicted before measuring", zorder=2)
    quantized = [p for p in points if p.precision != "fp32"]
    if quantized:
        ax.scatter(_values(quantized, x, "measured"), _values(quantized, y, "measured"), marker="s",
                   s=60, facecolors="none", edgecolors=color, label="quantized (int8) points",
                   zorder=4)
    knee = front.knee()
    if background and knee is not None and x in knee.measured and y in knee.measured:
        ax.annotate("knee", (knee.measured[x], knee.measured[y]), xytext=(8, -12),
                    textcoords="offset points", fontsize=8)


_LABELS = {"latency_ms": "latency (ms)", "accuracy": "top-1 accuracy", "params": "parameters",
           "macs": "MACs"}


def _literal(name: str) -> str:
    """``name`` as matplotlib should draw it: a ``$`` pair is math text to it, and ``cpu$\\x$`` crashed the report."""
    return name.replace("$", r"\$")


def _axis_label(metric: str, fronts: Sequence[ParetoFront]) -> str:
    """A metric's axis label; latency's says what one latency times when that is not one float32 image
    (:meth:`~hwsearch.results.ParetoFront.latency_timed`), alike for all ``fronts``, or that it differs."""
    label = _LABELS.get(metric, metric)
    if metric != "latency_ms":
        return label
    timed = {front.latency_timed() for front in fronts}
    if len(timed) > 1:
        return "latency (ms, one inference of each device's batch)"
    words = next(iter(timed), "")
    return f"latency (ms {words})" if words else label


def _figure_png(draw: Any, xlabel: str, ylabel: str, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    try:
        draw(ax)
        ax.set_xlabel(_literal(xlabel))
        ax.set_ylabel(_literal(ylabel))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def _device_plot(device: str, front: ParetoFront, rows: Sequence[Mapping[str, Any]]) -> bytes:
    x, y = _axes_metrics(front)
    return _figure_png(lambda ax: _plot_front(ax, front, rows, _COLORS[0], label="Pareto front",
                                              background=True),
                       _axis_label(x, [front]), _axis_label(y, [front]),
                       f"{_literal(device)}: {len(front.points)} Pareto-optimal subnets")


def _overview_plot(fronts: Mapping[str, ParetoFront]) -> bytes:
    first = next(iter(fronts.values()))
    x, y = _axes_metrics(first)

    def draw(ax: Any) -> None:
        for i, (device, front) in enumerate(sorted(fronts.items())):
            _plot_front(ax, front, (), _COLORS[i % len(_COLORS)], label=_literal(device), background=False)

    every = list(fronts.values())
    return _figure_png(draw, _axis_label(x, every), _axis_label(y, every), "Pareto fronts across devices")


# --------------------------------------------------------------------------- HTML


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def _front_table(front: ParetoFront) -> str:
    metrics = [o.metric for o in front.objectives]
    words = front.latency_timed()
    timed = f" ({words})" if words else ""
    header = ["#", "arch", "precision"] + [f"{m} measured" + (timed if m == "latency_ms" else "")
                                           for m in metrics] + \
             ["latency measured how"] + [f"{m} predicted ± sd" for m in metrics] + ["MACs", "params"]
    rows = []
    for i, p in enumerate(front.points):
        predicted = [_predicted(p.predicted[m], p.spread.get(m, 0.0)) if m in p.predicted
                     else None for m in metrics]
        rows.append([i, p.arch.key(), p.precision, *[p.measured.get(m) for m in metrics],
                     measurement_label(p.latency_conditions), *predicted, p.macs, p.params])
    return _table(header, rows)


def _predicted(value: float, sd: float | None) -> str:
    """A prediction with its spread; a spread saved as null (not finite) is left out."""
    return f"{value:.4g}" if sd is None else f"{value:.4g} ± {sd:.2g}"


def _summary_table(fronts: Mapping[str, ParetoFront]) -> str:
    rows = []
    for device, front in sorted(fronts.items()):
        knee = front.knee()
        by_precision = Counter(p.precision for p in front.points)
        rows.append([device, len(front.points),
                     ", ".join(f"{k} {n}" for k, n in sorted(by_precision.items())),
                     front.hypervolume, ", ".join(f"{r:.4g}" for r in front.reference_point),
                     f"{knee.arch.key()} ({knee.precision})" if knee else None])
    return _table(["device", "points", "points by precision", "hypervolume", "reference point",
                   "knee subnet"], rows)


def _precision_table(comparison: Mapping[str, Mapping[str, Any]]) -> str:
    def span(values: Mapping[str, float] | None) -> str | None:
        if values is None:
            return None
        return f"{values['min']:.3g} / {values['median']:.3g} / {values['max']:.3g}"

    rows = [[device, c["n_subnets"], span(c["latency_ratio"]), span(c["accuracy_change_points"]),
             f"{c['int8_front_points']} of {c['front_points']}"]
            for device, c in sorted(comparison.items())]
    return _table(["device", "subnets at both", "INT8/FP32 latency (min / median / max)",
                   "accuracy change, points (min / median / max)", "INT8 points on the front"],
                  rows)


def _predictor_table(predictors: Mapping[str, Mapping[str, Any]]) -> str:
    columns = ["n_train", "tau", "rho", "mape", "rmse", "within_5", "within_10"]
    rows = [[name, *[metrics.get(c) for c in columns]]
            for name, metrics in sorted(predictors.items())]
    return _table(["predictor", *columns], rows)


def _measurement_tables(measurements: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    parts = []
    for device, rows in sorted(measurements.items()):
        table = _table(["arch", "precision", "latency_ms", "±CI (session)", "±CI (between sessions too)",
                        "stable", "accuracy"],
                       [[r.get("arch_key"), r.get("precision", "fp32"), r.get("latency_ms"),
                         r.get("ratio_ci"), r.get("latency_ci"), r.get("stable"), r.get("accuracy")]
                        for r in rows])
        parts.append(f"<details><summary>{html.escape(device)}: {len(rows)} measured subnets"
                     f"</summary>{table}</details>")
    return "".join(parts) or "<p>No measurements were recorded with these fronts.</p>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td:nth-child(2){text-align:left;font-family:monospace}
img{max-width:100%} details{margin:0.3em 0} pre{background:#f7f7f7;padding:0.6em;overflow:auto}
"""


def _html(data: ReportData, device_pngs: Mapping[str, bytes], overview: bytes) -> str:
    sections = [
        f"<h1>{html.escape(data.title)}</h1>",
        f"<p>Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}. Front values are "
        "measured; predicted values are what the predictors said before measuring.</p>",
        "<h2>Fronts across devices</h2>", _summary_table(data.fronts),
        _img(overview, "Pareto fronts across devices"),
    ]
    for device, front in sorted(data.fronts.items()):
        sections += [f"<h2>Device {html.escape(device)}</h2>",
                     _img(device_pngs[device], f"Pareto front on {device}"), _front_table(front)]
    comparison = precision_comparison(data.measurements, data.fronts)
    if comparison:
        sections += ["<h2>INT8 against FP32</h2>",
                     "<p>Subnets measured at both precisions on each device: INT8 latency as a "
                     "fraction of FP32, and INT8 accuracy (quantized model in onnxruntime) minus "
                     "FP32 accuracy, in points.</p>", _precision_table(comparison)]
    sections += ["<h2>Predictor quality (held-out subnets)</h2>",
                 _predictor_table(data.predictors) if data.predictors
                 else "<p>No predictor metrics were recorded with these fronts.</p>",
                 "<h2>Measurements</h2>", _measurement_tables(data.measurements)]
    if data.settings:
        sections += ["<h2>Settings</h2>",
                     f"<pre>{html.escape(json.dumps(data.settings, indent=2, default=str))}</pre>"]
    body = "\n".join(sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(data.title)}"
            f"</title><style>{_STYLE}</style></head><body>{body}</body></html>")


def build_report(data: ReportData, out: str | Path) -> dict[str, Path]:
    """Write ``<device>.png`` per device and ``report.html``; returns what was written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    pngs = {}
    for device, front in data.fronts.items():
        pngs[device] = _device_plot(device, front, data.measurements.get(device, ()))
        path = out / f"pareto-{file_stem(device)}.png"
        path.write_bytes(pngs[device])
        written[device] = path
    page = out / "report.html"
    page.write_text(_html(data, pngs, _overview_plot(data.fronts)), encoding="utf-8")  # as its <meta> says
    written["html"] = page
    return written
