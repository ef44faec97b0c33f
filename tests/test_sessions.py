"""Retries: the groups measured again share a session as large as their chunk's (real files, real sessions)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hwsearch.sessions import Session, measure_session, retry
from tests._jobs import SUPERNET, fast_device


class _Recorded:
    """A real profiler's ``measure_many`` that also keeps the files of every session."""

    def __init__(self, profiler: Any) -> None:
        self.profiler, self.sessions, self.results = profiler, [], []

    def __call__(self, paths: list[Path]) -> list[Any]:
        self.sessions.append(list(paths))
        self.results.append(self.profiler.measure_many(paths))
        return self.results[-1]


def _chunk(tmp_path: Path, n: int) -> list[list[Path]]:
    """``n`` subnets of the tiny supernet exported, one group (one FP32 file) each."""
    from hwsearch.export import export_subnet
    from hwsearch.jobs.spec import SupernetRef, build_supernet
    from hwsearch.pipeline import select_subnets

    net = build_supernet(SupernetRef(**SUPERNET))
    groups = []
    for i, arch in enumerate(select_subnets(net.space, n, seed=3)):
        export_subnet(net, arch, tmp_path / f"{i}.onnx")
        groups.append([tmp_path / f"{i}.onnx"])
    return groups


def test_a_retry_session_is_filled_up_to_its_chunks_size_and_only_the_retried_results_are_used(
        tmp_path: Path, calibration_dir: Path) -> None:
    from devices import open_profiler
    from devices.profile import DeviceProfile

    device = fast_device("cpu-1t") | {"clock": "thread_cpu"}
    device["protocol"].update(ci_target=0.5, max_reference_slowdown=100.0)
    measure = _Recorded(open_profiler(DeviceProfile.from_dict(device)))
    chunk = _chunk(tmp_path, 4)
    first = measure_session(measure, chunk, None)
    sessions = [_marked(session, stable=i != 2) for i, session in enumerate(first)]  # a busy host may mark others

    kept = retry(measure, chunk, sessions, retries=1, anchor=None)

    assert len(measure.sessions) == 2
    assert measure.sessions[1][0] == chunk[2][0] and sorted(measure.sessions[1]) == sorted(measure.sessions[0])
    assert kept[2].results[0] is _better(sessions[2], measure.results[1][0]).results[0]
    assert [kept[i] for i in (0, 1, 3)] == [sessions[i] for i in (0, 1, 3)]


def _marked(session: Session, *, stable: bool) -> Session:
    """The session with its results marked stable or not, whatever the host made of them."""
    return Session(session.session_id, [dataclasses.replace(r, stable=stable) for r in session.results])


def test_a_late_retry_of_part_of_a_chunk_is_filled_from_the_whole_chunk(tmp_path: Path, calibration_dir: Path) -> None:
    """Groups handed over alone (a session found shifted later) still get a chunk-sized session."""
    from devices import open_profiler
    from devices.profile import DeviceProfile

    device = fast_device("cpu-1t") | {"clock": "thread_cpu"}
    device["protocol"].update(ci_target=0.5, max_reference_slowdown=100.0)
    measure = _Recorded(open_profiler(DeviceProfile.from_dict(device)))
    chunk = _chunk(tmp_path, 3)
    first = measure_session(measure, chunk[:1], None)
    unstable = Session(first[0].session_id, [dataclasses.replace(first[0].results[0], stable=False)])

    kept = retry(measure, chunk[:1], [unstable], retries=1, anchor=None, chunk=chunk)

    assert len(measure.sessions) == 2 and sorted(measure.sessions[1]) == sorted(p for g in chunk for p in g)
    assert measure.sessions[1][0] == chunk[0][0] and len(kept) == 1
    assert kept[0].results[0] is _better(unstable, measure.results[1][0]).results[0]


def _better(unstable: Session, retried: Any) -> Session:
    """Of a group's unstable session and its retried result, the one :meth:`Session.rank` prefers (the first on a
    tie).  Which one that is depends on the host: the project's CI once found the retried result unstable too, and
    wider, and kept the first."""
    again = Session("retried", [retried])
    return again if again.rank(None) < unstable.rank(None) else unstable
