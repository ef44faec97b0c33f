"""Rich tables of Pareto fronts, shared by the commands that print them."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from hwsearch.results import measurement_label


def front_table(device: str, front: Any) -> Table:
    """One row per subnet of ``front`` (a :class:`hwsearch.results.ParetoFront`), fastest first."""
    table = Table(title=f"Pareto front on {device} (hypervolume {front.hypervolume:.4g})")
    for column in ("latency ms (measured)", "how", "predicted", "accuracy (measured)", "predicted",
                   "MMACs", "params M", "subnet"):
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
            "" if point.macs is None else f"{point.macs / 1e6:.2f}",
            "" if point.params is None else f"{point.params / 1e6:.3f}",
            point.arch.key() + ("  ← knee" if knee is not None and point.arch == knee.arch else ""),
        )
    return table
