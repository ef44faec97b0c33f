"""A profiling run's measurement sessions: retried until trusted, judged by the run's anchor.

A chunk's subnets (each a group of files, one per precision) are measured
in one interleaved session, so their ratios share one reference scale.  A
group is measured again, whole, when one of its results is unstable or
when the anchor (:mod:`hwsearch.anchor`) finds its session shifted; of two
measurements of a group the better one is kept (:meth:`Session.rank`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwsearch.anchor import Anchor, overrules_slowdown

#: One interleaved session over the files given, a result per file in order (``measure_many``).
MeasureFn = Callable[[list[Path]], Sequence[Any]]


@dataclass(frozen=True)
class Session:
    """One group's results (a subnet's files, in precision order) and the session they came from."""

    session_id: str
    results: list[Any]

    def rank(self, anchor: Anchor | None) -> tuple[bool, int, float]:
        """Lower is better: not from a shifted session, fewer unstable results, then the widest relative CI.

        Stability comes first because a result can be unstable with a tight
        CI (a wall-clock session beside a busy program, :mod:`devices.cpuload`;
        a session the anchor found shifted, :mod:`hwsearch.anchor`); a group
        is only as good as its worse half.
        """
        return (self.shifted(anchor), sum(not self.stable(r, anchor) for r in self.results),
                max(_spread(r) for r in self.results))

    def trusted(self, anchor: Anchor | None) -> bool:
        """Every result stable, and the session not found shifted (so far) by the anchor."""
        return not self.shifted(anchor) and all(self.stable(r, anchor) for r in self.results)

    def stable(self, result: Any, anchor: Anchor | None) -> bool:
        """The result's own verdict, unless the anchor's verdict on the session overrules a slowed reference."""
        return result.stable or (anchor is not None and overrules_slowdown(
            result.env.get("unstable_reasons"), anchor.offset(self.session_id)))

    def shifted(self, anchor: Anchor | None) -> bool:
        """Whether the anchor has found this session shifted (``False`` before its verdict)."""
        return anchor is not None and anchor.shifted(self.session_id)


def measure_until_trusted(measure: MeasureFn, groups: Sequence[Sequence[Path]], retries: int,
                          anchor: Anchor | None) -> list[Session]:
    """Measure every group's files in one session, then :func:`retry` the groups not trusted.

    Every session also measures the ``anchor``'s files, when there is one.
    """
    return retry(measure, groups, measure_session(measure, groups, anchor), retries, anchor)


def retry(measure: MeasureFn, groups: Sequence[Sequence[Path]], sessions: Sequence[Session],
          retries: int, anchor: Anchor | None, *, chunk: Sequence[Sequence[Path]] | None = None) -> list[Session]:
    """Up to ``retries`` times, measure the groups whose session is not trusted again, in a chunk-sized session.

    Returns each group's better session (:meth:`Session.rank`); a session the
    anchor finds shifted counts as untrusted once the anchor has a verdict.

    The groups measured again are joined by other groups of their ``chunk``
    (by default ``groups``) until the session holds as many as the chunk,
    and those fillers' results are dropped: what a subnet reads depends on
    how many models its session holds.  On the demo's 1-thread device
    (subnets of 0.06 ms), four subnets and the three anchor subnets measured
    alone, in three recordings of 4-5 such sessions each, read 0.80-1.60 of
    what they read among 19 (median difference 7-22% per recording), while
    the sessions of 19 agreed with each other within about 2% (median); in
    ``bench/contention.py`` the stable rows of small retry sessions were
    8.8% (median) from the solo runs, against 1.4% for those of full
    sessions.  At OFA-MobileNetV3's 160 px (subnets of 2 ms) the small
    sessions differed by 1.4% (median), within the noise.
    """
    sessions = list(sessions)
    chunk = groups if chunk is None else chunk
    for _ in range(retries):
        again = [i for i, s in enumerate(sessions) if not s.trusted(anchor)]
        if not again:
            break
        measured_again = [groups[i] for i in again]
        fillers = [group for group in chunk if group not in measured_again][:len(chunk) - len(again)]
        for i, retried in zip(again, measure_session(measure, measured_again + fillers, anchor, retry=True)):
            if retried.rank(anchor) < sessions[i].rank(anchor):
                sessions[i] = retried
    return sessions


def measure_session(measure: MeasureFn, groups: Sequence[Sequence[Path]],
                    anchor: Anchor | None, *, retry: bool = False) -> list[Session]:
    """All files of ``groups`` (and the anchor's) measured in one session (one ``measure_many`` call).

    Returns the groups' results split back by group; the anchor's results
    go to the anchor (a ``retry`` is judged but not counted in its medians,
    :meth:`Anchor.observe`), with every group's files' ratios as members of the session.
    """
    session_id = uuid.uuid4().hex
    files = [path for group in groups for path in group]
    measured = list(measure(files + (anchor.files if anchor is not None else [])))
    results = iter(measured[:len(files)])
    sessions = [Session(session_id, [next(results) for _ in group]) for group in groups]
    if anchor is not None:
        anchor.observe(session_id, measured[len(files):], retry=retry,
                       members={path: float(result.ratio) for group, s in zip(groups, sessions)
                                for path, result in zip(group, s.results)})
    return sessions


def _spread(result: Any) -> float:
    """A measurement's relative CI half-width; unusable (NaN) counts as infinitely wide."""
    return result.ratio_ci if math.isfinite(result.ratio_ci) else math.inf
