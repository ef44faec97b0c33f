"""One subnet measured in every session of a profiling run: the witness of a session-wide shift.

A session's ratios cancel the host's speed within the session, and the
reference's own time reveals some slow states (:mod:`devices.calibration`),
but not all.  On the demo's 1-thread ``thread_cpu`` device, whole sessions
shifted with the reference unmoved: twelve sessions of the same 8 demo
subnets put the subnets' own CPU times at 0.89-1.19x their medians while the
reference stayed within ±1.6%, and three of twelve further sessions
reached 1.47-1.49x.  Within a session the subnets moved together (two sets of
onnxruntime sessions of the same models, built apart and measured
interleaved, agreed within 1.5%), and two small synthetic models measured
beside them did not move at all (within ±2.4% while the subnets' session
offsets ranged 0.91-1.05): only a subnet of the same family witnesses it.

So a run measures one of its subnets, the anchor, in every session, and
once it has at least :data:`MIN_SESSIONS` sessions it takes each session's
offset: the anchor's ratio there (its FP32 file's, when the run measures
FP32) over its median over all the run's sessions.  A session whose offset
is further from 1 than the tolerance shifted, and its rows are not stable
(the pipeline relabels them at the end of the run; fronts re-measure
unstable points before they may enter).

A run alone often has too few sessions for a verdict: a refinement round
measures a few candidates in one session, and a run's first two sessions
end before a third exists.  But the anchor's earlier sessions on the same
device (whose identity covers the host) are in the store: every row keeps
its session's ``anchor_ratio``.  So the next run of the same network on the
device takes the same anchor subnet, starts from its recent sessions
(:func:`history`, at most :data:`RECENT_SESSIONS`), and judges each of its
sessions as soon as it ends, the first one included.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Sessions a run needs before its anchor's median can tell a shifted session from the rest.
MIN_SESSIONS = 3
#: How far a session's anchor may sit from its median and the session still count as unshifted.
DEFAULT_TOLERANCE = 0.05
#: Earlier sessions of the anchor a run starts from: recent enough to share the host's present state.
RECENT_SESSIONS = 20


@dataclass
class Anchor:
    """The anchor subnet's files (one per precision, FP32 first) and its first file's ratio per session."""

    key: str
    files: list[Path]
    tolerance: float = DEFAULT_TOLERANCE
    ratios: dict[str, float] = field(default_factory=dict)  # session_id -> the first file's ratio

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"the anchor's tolerance must be a finite share >= 0, got {self.tolerance!r}")

    @classmethod
    def keep(cls, key: str, files: list[Path], folder: Path, tolerance: float = DEFAULT_TOLERANCE,
             earlier: Mapping[str, float] | None = None) -> Anchor:
        """An anchor from a subnet's exported files, copied to ``folder`` so they outlive their chunk.

        ``earlier`` holds the anchor's ratios in earlier runs' sessions
        (:func:`history`), which count towards every verdict.
        """
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for path in files:
            kept.append(folder / path.name)
            shutil.copyfile(path, kept[-1])
        return cls(key, kept, tolerance, dict(earlier or {}))

    def ratio(self, session_id: str) -> float | None:
        """The anchor's ratio in the session, if it was measured there and usable."""
        return self.ratios.get(session_id)

    def observe(self, session_id: str, result: Any) -> None:
        """Record the anchor's first file's measurement in one session (an unusable ratio is not recorded)."""
        if math.isfinite(result.ratio):
            self.ratios[session_id] = float(result.ratio)

    def offset(self, session_id: str) -> float | None:
        """The session's anchor ratio over its median over the run's sessions; ``None`` before a verdict."""
        if len(self.ratios) < MIN_SESSIONS or session_id not in self.ratios:
            return None
        return self.ratios[session_id] / float(np.median(list(self.ratios.values())))

    def judged(self, session_ids: Iterable[str]) -> bool:
        """Whether every one of the sessions has the anchor's verdict."""
        return all(self.offset(session_id) is not None for session_id in session_ids)

    def shifted(self, session_id: str) -> bool:
        """Whether the session's anchor sat further from its median than the tolerance."""
        offset = self.offset(session_id)
        return offset is not None and abs(offset - 1.0) > self.tolerance


def history(rows: Mapping[str, Mapping[str, Any]], precision: str) -> tuple[str, dict[str, float]] | None:
    """The anchor of earlier runs and its ratios in their sessions, from a device's stored rows.

    Rows name their run's ``anchor_key`` and carry their session's
    ``anchor_ratio`` (of the anchor's ``anchor_precision`` file).  Of the
    anchors whose ratio was taken at ``precision`` (a new run's first
    precision, so ratios compare like with like), the one seen in the most
    sessions is returned with its :data:`RECENT_SESSIONS` latest sessions'
    ratios (by the session's end); ``None`` when no row names an anchor.
    """
    sessions: dict[str, dict[str, tuple[float, float]]] = {}
    for row in rows.values():
        ratio = row.get("anchor_ratio")
        if row.get("anchor_precision") != precision or ratio is None or not math.isfinite(ratio):
            continue
        ended = float(row.get("env", {}).get("session_end", 0.0))
        sessions.setdefault(str(row["anchor_key"]), {})[str(row["session_id"])] = (ended, float(ratio))
    if not sessions:
        return None
    key = max(sorted(sessions), key=lambda k: len(sessions[k]))
    latest = sorted(sessions[key].items(), key=lambda item: item[1][0])[-RECENT_SESSIONS:]
    return key, {session_id: ratio for session_id, (_, ratio) in latest}
