"""Rich tables of Pareto fronts, shared by the commands that print them."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from devices.plain import printable
from hwsearch.results import measurement_label


def shown(name: str) -> str:
    """``name`` (a device's, a path) as plain text in Rich markup: its brackets are not markup, its controls
    escaped.

    Rich reads ``[...]`` in a title or printed string as markup: a device named
    ``cpu[link=https://evil.example]click[/link]`` printed a hyperlink, and one
    named ``x[/]`` crashed ``hwsearch search`` after its whole run.
    """
    return escape(printable(name))


def hypervolume_box(front: Any) -> str:
    """The reference point as the bounds the hypervolume counts within, e.g. ``accuracy ≥ 0.634, latency_ms ≤ 1.2``.

    A hypervolume is only comparable with one taken against the same point,
    and a front point beyond it (found after the point was fixed) adds nothing.
    """
    return ", ".join(f"{o.metric} {'≥' if o.sense == 'max' else '≤'} {float(o.from_min(r)):.4g}"
                     for o, r in zip(front.objectives, front.reference_point))


def latency_ms(front: Any) -> str:
    """The latency column's name: ``latency ms``, and what one latency times when that is not one float32 image
    (:meth:`~hwsearch.results.ParetoFront.latency_timed`)."""
    return " ".join(["latency ms", front.latency_timed()]).strip()


def front_table(device: str, front: Any) -> Table:
    """One row per subnet of ``front`` (a :class:`hwsearch.results.ParetoFront`), fastest first.

    Each row names its precision; when the front mixes precisions the title
    counts how many points each holds, i.e. where the quantized subnets win.
    """
    table = Table(title=f"Pareto front on {shown(device)} (hypervolume {front.hypervolume:.4g} "
                        f"over {hypervolume_box(front)}){precision_summary(front)}")
    for column in (f"{latency_ms(front)} (measured)", "how", "predicted", "accuracy (measured)", "predicted",
                   "precision", "MMACs", "params M", "subnet"):
        table.add_column(column, overflow="fold")
    knee = front.knee()
    for point in sorted(front.points, key=lambda p: p.value("latency_ms")):
        predicted_latency = point.predicted.get("latency_ms")
        predicted_accuracy = point.predicted.get("accuracy")
        table.add_row(
            f"{point.measured['latency_ms']:.3f}",
            measurement_label(point.latency_conditions),
            "" if predicted_latency is None else f"{predicted_latency:.3f}",
            f"{point.measured['accuracy']:.4f}",
            "" if predicted_accuracy is None else f"{predicted_accuracy:.4f}",
            shown(point.precision),
            "" if point.macs is None else f"{point.macs / 1e6:.2f}",
            "" if point.params is None else f"{point.params / 1e6:.3f}",
            point.arch.key() + ("  ← knee" if knee is not None and point is knee else ""),
        )
    if not front.points:  # an empty table and exit 0 said nothing of why
        table.caption = "no subnet met the run's limits (--budget-ms, --params-limit, --accuracy-floor)"
    return table


def target_table(device: str, front: Any) -> Table | None:
    """The answer to each latency budget the run was aimed at, or None without budgets.

    One row per budget: the most accurate measured subnet within it, with
    what was predicted before measuring it, so the user's question comes first.
    """
    picks = front.target_picks()
    if not picks:
        return None
    table = Table(title=f"Best measured subnet under each budget on {shown(device)}")
    for column in ("budget ms", f"{latency_ms(front)} (measured)", "accuracy (measured)", "predicted",
                   "precision", "subnet"):
        table.add_column(column, overflow="fold")
    for pick in picks:
        if pick["index"] is None:
            table.add_row(f"{pick['budget_ms']:g}", "none measured within it", "", "", "", "")
            continue
        point = front.points[pick["index"]]
        predicted = point.predicted.get("accuracy")
        table.add_row(f"{pick['budget_ms']:g}", f"{point.measured['latency_ms']:.3f}",
                      f"{point.measured['accuracy']:.4f}",
                      "" if predicted is None else f"{predicted:.4f}", shown(point.precision),
                      f"{point.arch.key()}  (point {pick['index']})")
    return table


def precision_summary(front: Any) -> str:
    """``"; points by precision: fp32 4 (0.2-0.6 ms), int8 3 (0.7-1.1 ms) of 7"``, or ``""``.

    Only for a front searched at several precisions (a job records each in
    its settings).  A precision wins where its points are on the front; the
    latency span says where along the front that is, and 0 says it won nowhere.
    """
    settings = front.settings.get("precisions", {})
    if len(settings) < 2:
        return ""
    parts = []
    for precision in sorted(settings):
        won = [p.measured["latency_ms"] for p in front.points if p.precision == precision]
        span = f" ({min(won):.3g}-{max(won):.3g} ms)" if won else ""
        parts.append(f"{precision} {len(won)}{span}")
    return f"; points by precision: {', '.join(parts)} of {len(front.points)}"
