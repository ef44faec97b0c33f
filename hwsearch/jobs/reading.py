"""Reading a job spec from plain data: every field checked, and named when it is wrong.

A spec is what a library user passes to :func:`hwsearch.jobs.run_job` as a
dict, and what the store keeps.  Read leniently, a misspelt ``n_profiles``
was dropped (the job profiled the default 40 subnets), ``n_profile: 2.9``
became 2, a limit ``{"metric": "latency_ms", "uper": 50}`` failed the job
only at its fitting step, 21.7 s in, and ``devices: "cpu-1t"`` raised
"dictionary update sequence element #0 has length 1".  The HTTP service
checks its bodies with its own schemas; these checks are the library's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hwsearch.checks import whole_number

__all__ = ["JOB_METRICS", "SpecError", "checked_count", "checked_limits", "checked_targets", "known_fields", "mapping",
           "mappings", "optional_text"]

#: What a job's limits may bound (:class:`hwsearch.jobs.JobSpec`).
JOB_METRICS = ("accuracy", "latency_ms", "params", "macs")


class SpecError(ValueError):
    """A spec that cannot run as written; the message names the field."""


def known_fields(data: object, known: Iterable[str], what: str) -> Mapping[str, Any]:
    """``data`` as a mapping whose keys are all ``known``; a misspelt key is refused, not dropped."""
    data = mapping(data, what)
    allowed = set(known)
    unknown = sorted((key for key in data if key not in allowed), key=str)
    if unknown:
        raise SpecError(f"{what} has no field {str(unknown[0])[:100]!r}; it takes {', '.join(sorted(allowed))}")
    return data


def mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def mappings(value: object, what: str, *, least: int = 0) -> tuple[dict[str, Any], ...]:
    """A list of mappings (a single mapping or a string is refused, not iterated)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise SpecError(f"{what} must be a list of mappings, got {type(value).__name__}")
    items = tuple(dict(mapping(item, f"{what}[{i}]")) for i, item in enumerate(value))
    if len(items) < least:
        raise SpecError(f"{what} must hold at least {least}, got {len(items)}")
    return items


def optional_text(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SpecError(f"{what} must be text or null, got {type(value).__name__}")
    return value


def checked_limits(value: object) -> tuple[dict[str, Any], ...]:
    """Each limit as :class:`hwsearch.problem.Limit` takes it, on a metric a job scores."""
    from hwsearch.problem import Limit

    limits = mappings(value, "limits")
    for i, limit in enumerate(limits):
        known_fields(limit, ("metric", "upper", "lower"), f"limits[{i}]")
        if limit.get("metric") not in JOB_METRICS:
            raise SpecError(f"limits[{i}].metric must be one of {list(JOB_METRICS)}, got {limit.get('metric')!r}")
        try:
            Limit(**limit)
        except ValueError as error:
            raise SpecError(f"limits[{i}]: {error}") from None
    return limits


def checked_targets(value: object) -> dict[str, dict[str, Any]]:
    """Latency targets by device name, each a mapping of ``budgets_ms`` and ``band_ms``."""
    targets = mapping(value, "targets")
    return {str(name): dict(known_fields(target, ("budgets_ms", "band_ms"), f"targets[{name!r}]"))
            for name, target in targets.items()}


def checked_count(value: object, what: str, least: int) -> int:
    """A whole number of at least ``least`` (``True`` or 2.9 are refused, not read as 1 or 2)."""
    try:
        return whole_number(value, what, least)
    except ValueError as error:
        raise SpecError(str(error)) from None
