"""A few subnets measured in every session of a profiling run: the witnesses of a session-wide shift.

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
offsets ranged 0.91-1.05): only subnets of the same family witness it.

So a run measures a few of its subnets, the anchor, in every session, and
once it has at least :data:`MIN_SESSIONS` sessions it takes each session's
offset: the median over the anchor's subnets of each one's ratio there
(its first precision's file's) over its median over the sessions of the
host's undisturbed state (:func:`prevailing_state`).  A session whose
offset is further from 1 than the tolerance shifted, and its rows are not
stable (the pipeline measures it again or relabels it;
fronts re-measure unstable points before they may enter).  Since the
subnets of a session move together, the pipeline also divides every row of
a judged session by its offset (:func:`correct_row`).

Why several subnets: one subnet's ratio also moves on its own.  In six
recordings of 6-14 sessions of 8-24 demo subnets on both demo devices
(2026-12-01), a single anchor flagged 0-8.3% of the sessions whose other
subnets had not moved (by more than 5%, their median) and missed 0-29% of
those that had, averaged over every choice of anchor; the median of
:data:`ANCHOR_SUBNETS` = 3 flagged 0-3.2% and missed 0-26% (one recording
of 8 subnets missed 6% where one anchor missed none); ``bench/anchor_verdicts.py``
records and scores such sessions (docs/measurement.md).  In one 14-session
recording the run's own anchor, its largest subnet, ranged 0.92-1.06 while
the session medians of the 16 others stayed within 0.98-1.02.

A run alone often has too few sessions for a verdict: a refinement round
measures a few candidates in one session, and a run's first two sessions
end before a third exists.  But the anchor's earlier sessions on the same
device (whose identity covers the host) are in the store: every row keeps
its session's ``anchor_ratios``.  So the next run of the same network on
the device takes the same anchor subnets, starts from their recent sessions
(:func:`history`, at most :data:`RECENT_SESSIONS`), and judges each of its
sessions as soon as it ends, the first one included.

A run at several precisions measures each anchor subnet's file at every
precision, and an INT8 file does not shift by its FP32 file's offset.  In
``bench/anchor_verdicts.py --subnets 10 --sessions 24 --int8 --load-every 3``
(2026-12-02), a session's INT8 offset over its FP32 offset ranged
0.92-1.06 on the 1-thread device and 0.54-1.10 on the 2-thread device,
whose FP32 files ran 1.70-1.87x their medians beside a CPU-bound process
while its INT8 files ran 0.92-1.25x.  Divided by the FP32 offset, 87.5% and 60.1% of the
other subnets' INT8 ratios came within ±10% of their medians (median
deviation 3.95% and 7.31%); divided by the INT8 files' own offset, 95.8%
and 94.6% (2.16% and 2.60%).  So a row is divided by the offset of the
anchor's files at its own precision (:meth:`Anchor.offset_at`), taken
against their medians over the same undisturbed sessions; the verdict
(shifted or not) stays the first precision's, the session's.

A store belongs to a job or a CLI run, but the host's states belong to the
host: runs with different stores (separate CLI runs, the jobs of
``bench/contention.py``) would each start blind, and a run that spends all
its sessions in one shifted state would find none of them shifted against
its own medians.  So the anchor's sessions are also kept per host, beside
the device's ruler (:class:`HostRecord`, in ``$DEVICES_CALIBRATION_DIR``),
with the arch of each anchor subnet and its file's SHA-256: a later run of
the network on the device, whatever its store, exports the same subnets
again and uses those sessions only when its files are byte-identical
(exports are deterministic; other weights give other files).

The medians a run corrects by are those of the undisturbed state as it saw
it, and that state moves between runs.  So whoever reads the rows (a job's
predictors and fronts, the report, ``hwsearch train``) takes each row's
offset again against the anchor's norm of now (:func:`in_current_norm`):
rows of every run on the host then share one norm.  The store keeps what
each run found.

The parts: :mod:`~hwsearch.anchor.state` (a table of sessions: the
undisturbed state, offsets, spread, a row's correction and verdict),
:mod:`~hwsearch.anchor.stored` (how rows carry their anchor's sessions,
and :func:`history`), :mod:`~hwsearch.anchor.run` (one run's
:class:`Anchor`), :mod:`~hwsearch.anchor.host` (:class:`HostRecord`) and
:mod:`~hwsearch.anchor.norm` (rows read now, :func:`in_current_norm`).
"""

from hwsearch.anchor.host import HOST_SESSIONS, FileLabel, HostRecord
from hwsearch.anchor.norm import (Norm, current_norms, host_spreads, in_current_norm, norm_problem, readable_rows,
                                  recorrected)
from hwsearch.anchor.run import ANCHOR_SUBNETS, Anchor
from hwsearch.anchor.state import (DEFAULT_TOLERANCE, MIN_SESSIONS, Z95, correct_row, idiosyncratic_spread,
                                   judged_stable, latency_half_width, overrules_slowdown, prevailing_state,
                                   session_offset, undisturbed_sessions)
from hwsearch.anchor.stored import RECENT_SESSIONS, History, history

__all__ = ["ANCHOR_SUBNETS", "DEFAULT_TOLERANCE", "HOST_SESSIONS", "MIN_SESSIONS", "RECENT_SESSIONS", "Z95",
           "Anchor", "FileLabel", "History", "HostRecord", "Norm", "correct_row", "current_norms",
           "history", "host_spreads", "idiosyncratic_spread", "in_current_norm", "judged_stable",
           "latency_half_width", "norm_problem", "overrules_slowdown", "prevailing_state", "readable_rows",
           "recorrected", "session_offset", "undisturbed_sessions"]
