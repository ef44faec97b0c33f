"""A Ray worker that starts while a latency session measures does its heavy start-up after it.

Importing torch, onnxruntime, xgboost and pymoo took a worker about 3 s of
a core here; a worker started by another job (or another device's task)
during a session would otherwise run those imports beside it.  These tests
start a real local Ray from :func:`hwsearch.ray_session.init_ray` while the
real host lock is held, as a session holds it.
"""

from __future__ import annotations

import time

import pytest

from devices.hostlock import measurement_session
from hwsearch.ray_session import init_ray, worker_prepared

ray = pytest.importorskip("ray")

#: Long enough for a worker process to start and reach its setup hook while the session holds the host.
SESSION_S = 6.0


def test_a_worker_started_during_a_session_imports_only_after_it() -> None:
    assert not ray.is_initialized(), "the test needs workers that start now"
    with measurement_session() as session:
        init_ray(num_cpus=1)
        pending = ray.remote(worker_prepared).remote()
        time.sleep(SESSION_S)
    start = ray.get(pending, timeout=180)
    assert start is not None, "the worker did not run the setup hook"
    assert session.ended_at is not None
    assert start.called < session.ended_at <= start.started < start.ended, (start, session)
    # Every worker of the session is prepared, and none did its imports during the session.
    later = ray.get([ray.remote(worker_prepared).remote() for _ in range(3)], timeout=180)
    assert all(w is not None and w.started >= session.ended_at for w in later), later
