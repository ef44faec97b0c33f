"""The anchor of one profiling run: its subnets' files, their ratios in each session, and each session's verdict."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwsearch.anchor.state import (DEFAULT_TOLERANCE, MIN_SESSIONS, finite_or_none, idiosyncratic_spread, is_shifted,
                                   latency_half_width, medians_at, nan_if_none, nanmedian, own_precision_offset,
                                   session_offset, undisturbed_sessions)
from hwsearch.anchor.stored import History
from hwsearch.digests import file_sha256

#: How many subnets make the anchor (fewer when the run's first chunk holds fewer).
ANCHOR_SUBNETS = 3


@dataclass
class Anchor:
    """The anchor subnets' files and, per session, each subnet's ratio.

    ``files`` holds ``files_per_subnet`` files per subnet (its precisions,
    in the run's order, named in ``precisions`` when known), subnet after
    subnet in ``keys``' order; a subnet's ratio is its first file's, and
    its other files' ratios are kept per precision (``ratios_at``).
    ``archs`` (each subnet's arch as a dict) lets a later run export the
    subnets again.
    """

    keys: tuple[str, ...]
    files: list[Path]
    tolerance: float = DEFAULT_TOLERANCE
    ratios: dict[str, tuple[float, ...]] = field(default_factory=dict)  # session_id -> a ratio per subnet
    retries: set[str] = field(default_factory=set)  # sessions judged but left out of the medians
    archs: tuple[Mapping[str, Any], ...] = ()
    shas: tuple[str, ...] = ()  # each subnet's first file's SHA-256: what its ratios were measured on
    observed_at: dict[str, float] = field(default_factory=dict)  # this run's sessions (not earlier runs')
    references: dict[str, float] = field(default_factory=dict)  # session_id -> its reference's ms (NaN: unknown)
    macs: tuple[int, ...] = ()  # each subnet's MACs, when known
    members: dict[str, dict[Path, float]] = field(default_factory=dict)  # session_id -> its other files' ratios
    precisions: tuple[str, ...] = ()  # the precision of each of a subnet's files, in order (empty: unknown)
    ratios_at: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)  # session -> precision -> ratios
    _cached_state: tuple[int, list[str], np.ndarray, float | None] | None = field(default=None, repr=False,
                                                                                   compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"the anchor's tolerance must be a finite share >= 0, got {self.tolerance!r}")
        if not self.keys or len(self.files) % len(self.keys):
            raise ValueError(f"{len(self.files)} anchor files cannot be split over {len(self.keys)} subnets")
        if self.precisions and len(self.precisions) != self.files_per_subnet:
            raise ValueError(f"{len(self.precisions)} precisions named for {self.files_per_subnet} files per subnet")

    @classmethod
    def keep(cls, keys: Sequence[str], groups: Sequence[Sequence[Path]], folder: Path,
             tolerance: float = DEFAULT_TOLERANCE,
             earlier: History | None = None,
             archs: Sequence[Mapping[str, Any]] = (), macs: Sequence[int] = (),
             precisions: Sequence[str] = ()) -> Anchor:
        """An anchor from its subnets' exported files (one group per subnet), copied to ``folder``.

        The copies outlive the chunk the files came from.  ``earlier`` holds
        the subnets' ratios (and each session's reference time) in earlier
        runs' sessions (:func:`history`), which count towards every verdict.
        ``precisions`` names each group's files in order.
        """
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for index, group in enumerate(groups):
            for path in group:
                kept.append(folder / f"{index}-{path.name}")
                shutil.copyfile(path, kept[-1])
        # a later run uses these kept sessions only for byte-identical files
        shas = tuple(file_sha256(folder / f"{index}-{group[0].name}") for index, group in enumerate(groups))
        earlier = earlier or History(tuple(keys), {}, {})
        return cls(tuple(keys), kept, tolerance,
                   {session: tuple(map(float, ratios)) for session, ratios in earlier.ratios.items()},
                   archs=tuple(dict(a) for a in archs), shas=shas, macs=tuple(int(m) for m in macs),
                   references={session: float(ms) for session, ms in earlier.references.items()},
                   precisions=tuple(precisions),
                   ratios_at={session: dict(at) for session, at in earlier.ratios_at.items()})

    @property
    def files_per_subnet(self) -> int:
        return len(self.files) // len(self.keys)

    def observe(self, session_id: str, results: Sequence[Any], *, retry: bool = False,
                members: Mapping[Path, float] | None = None) -> None:
        """Record each subnet's ratio in one session, from the results of :attr:`files` in order.

        ``members`` are the ratios of the session's other files (every
        precision's): with the anchor's, they are what the host keeps of
        the session (:meth:`HostRecord.remember`), so a subnet measured
        again in another session shows how its shift differed from the
        anchor's (:mod:`hwsearch.shift_slope`), at each precision.

        A ``retry`` (a session measuring again what an earlier one left
        unstable or shifted) is judged but does not count towards the
        medians: it follows a bad session at once, often in the same bad
        state of the host, so counting it would pull the medians towards
        that state.  Seen: a run whose two shifted sessions (1.34x and 1.39x
        its other runs) were each measured again in that state put the
        anchor's medians between the states and found every session of the
        run shifted, the calm ones at 0.89-0.94.
        """
        self.ratios[session_id] = tuple(float(r.ratio) for r in results[::self.files_per_subnet])
        self.ratios_at[session_id] = {precision: tuple(float(r.ratio) for r in results[index::self.files_per_subnet])
                                      for index, precision in enumerate(self.precisions[1:], 1)}
        self.references[session_id] = nan_if_none(results[0].env.get("session_reference_ms") if results else None)
        self.observed_at[session_id] = time.time()
        self.members[session_id] = dict(members or {})
        if retry:
            self.retries.add(session_id)

    def is_retry(self, session_id: str) -> bool:
        return session_id in self.retries

    def ratios_in(self, session_id: str) -> tuple[float, ...] | None:
        """Each subnet's ratio in the session (NaN where unusable), if the anchor was measured there."""
        return self.ratios.get(session_id)

    def stored_ratios(self, session_id: str) -> dict[str, Any]:
        """The session's ``ratios``, and its files' at each precision (``ratios_at``), as kept in JSON (NaN as null)."""
        return {"ratios": [finite_or_none(r) for r in self.ratios[session_id]],
                "ratios_at": {precision: [finite_or_none(r) for r in ratios]
                              for precision, ratios in self.ratios_at.get(session_id, {}).items()}}

    def offset(self, session_id: str) -> float | None:
        """The median of the subnets' ratios there over their medians; ``None`` before a verdict.

        The medians are taken over the sessions of the host's undisturbed
        state (:func:`prevailing_state`).  No verdict before
        :data:`MIN_SESSIONS` sessions that are not retries, nor for a
        session where no subnet's ratio was usable.
        """
        medians = self._medians()
        if medians is None or session_id not in self.ratios:
            return None
        return session_offset(self.ratios[session_id], medians)

    def offset_at(self, session_id: str, precision: str) -> tuple[float | None, str | None]:
        """The session's offset for a row at ``precision``, and the precision it was taken at.

        The anchor files' own offset at ``precision``, against their
        medians over the same undisturbed sessions as :meth:`offset`'s,
        where at least :data:`MIN_SESSIONS` of those sessions (all of a
        smaller state's) measured them and the session gave them a ratio;
        otherwise the first precision's offset (:meth:`offset`), which still
        comes closer than none (module docstring), as a row read now takes
        it (:func:`in_current_norm`).
        """
        first = self.precisions[0] if self.precisions else None
        cached = self._cached()
        own: tuple[float | None, str | None] = (None, first)
        if precision != first and cached is not None and session_id in self.ratios_at:
            own = own_precision_offset(precision, first, self.ratios_at[session_id].get(precision),
                                       medians_at(precision, [self.ratios_at.get(s, {}) for s in cached[1]]))
        return own if own[0] is not None else (self.offset(session_id), first)

    def session_spread(self) -> float | None:
        """How far one subnet's corrected ratio strays from session to session (a relative SD); ``None`` unknown.

        A session's ``ratio_ci`` covers only the noise within it, but a
        subnet also moves on its own from one session to the next, its
        session's offset divided out.  Over the solo runs of four
        ``bench/contention.py`` runs (2026-12-01), stable rows sat within
        their own ``ratio_ci`` of the other runs' median in 56% of cases on
        both demo devices.  The anchor's subnets, measured in every
        session, show that movement: see :func:`idiosyncratic_spread`.
        Known once the undisturbed state holds :data:`MIN_SESSIONS`
        sessions in which at least two anchor subnets were usable.
        """
        cached = self._cached()
        return None if cached is None else cached[3]

    def latency_ci(self, ratio_ci: float) -> float | None:
        """A corrected row's relative 95% half-width: its session's CI and the spread between sessions.

        The row's error against its subnet's long-run median has two parts
        beyond the session's own noise: the subnet's own movement
        (:meth:`session_spread`) and the error of the offset it was divided
        by, a median of the anchor's subnets (variance about π/2k of one
        subnet's for k of them).  ``None`` while the spread is unknown or
        the session's CI is not finite.
        """
        return latency_half_width(ratio_ci, self.session_spread(), len(self.keys))

    def _medians(self) -> np.ndarray | None:
        """Each subnet's median ratio over the undisturbed state's counted sessions."""
        state = self._state()
        return None if state is None else nanmedian(state, axis=0)

    def _state(self) -> np.ndarray | None:
        """The undisturbed state's counted sessions (sessions x subnets, NaN unusable)."""
        cached = self._cached()
        return None if cached is None else cached[2]

    def _cached(self) -> tuple[int, list[str], np.ndarray, float | None] | None:
        """The undisturbed state's sessions, their ratios and spread, once per new session (every row reads them)."""
        counted = [session for session in self.ratios if session not in self.retries]
        if len(counted) < MIN_SESSIONS:
            return None
        if self._cached_state is None or self._cached_state[0] != len(self.ratios):
            table = np.array([self.ratios[session] for session in counted], dtype=float)  # sessions x subnets
            table = np.where(np.isfinite(table), table, np.nan)
            references = np.array([self.references.get(session, math.nan) for session in counted], dtype=float)
            undisturbed = undisturbed_sessions(table, self.tolerance, references)
            self._cached_state = (len(self.ratios), [s for s, kept in zip(counted, undisturbed) if kept],
                                  table[undisturbed], idiosyncratic_spread(table[undisturbed]))
        return self._cached_state

    def judged(self, session_ids: Iterable[str]) -> bool:
        """Whether every one of the sessions has the anchor's verdict."""
        return all(self.offset(session_id) is not None for session_id in session_ids)

    def shifted(self, session_id: str) -> bool:
        """Whether the session's offset sat further from 1 than the tolerance."""
        return is_shifted(self.offset(session_id), self.tolerance)
