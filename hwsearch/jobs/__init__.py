"""Whole jobs: from a supernet and device profiles to Pareto fronts in the store.

- :mod:`~hwsearch.jobs.spec`: what a job is (:class:`JobSpec`, :class:`ProfileSpec`,
  :class:`SupernetRef`), as plain data a stored record can be re-run from.
- :mod:`~hwsearch.jobs.control`: a job's states, its one runner, progress
  events, one-line failures, cancellation and recovery.
- :mod:`~hwsearch.jobs.context`: the job's devices (:class:`JobDevice`) and
  what its stages share (:class:`JobContext`).
- :mod:`~hwsearch.jobs.stages`: profile, accuracy, fit, refine; each resumes
  from the store.
- :mod:`~hwsearch.jobs.precision`: precision as a job axis: each (device,
  precision) pair measured, predicted and refined, fronts merged and labelled.
- :mod:`~hwsearch.jobs.executor`: :func:`run_job`, :func:`run_profile`,
  :func:`execute`, :func:`submit_job`, :func:`run_job_watched`.
"""

from hwsearch.jobs.context import JobContext, JobDevice, job_device, latency_conditions
from hwsearch.jobs.control import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    JobCancelled,
    ProgressFn,
    cancel_job,
    claim_job,
    describe_error,
    new_job,
    record_failure,
    recover_jobs,
)
from hwsearch.jobs.executor import execute, run_job, run_job_watched, run_profile, submit_job
from hwsearch.jobs.spec import (
    CheckpointChanged,
    JobSpec,
    ProfileSpec,
    SupernetOptionError,
    SupernetRef,
    build_supernet,
    content_id,
    spec_from_dict,
    supernet_builders,
)

__all__ = [
    "ACTIVE_STATES",
    "CheckpointChanged",
    "JobCancelled",
    "JobContext",
    "JobDevice",
    "JobSpec",
    "ProfileSpec",
    "ProgressFn",
    "SupernetOptionError",
    "SupernetRef",
    "TERMINAL_STATES",
    "build_supernet",
    "cancel_job",
    "claim_job",
    "content_id",
    "describe_error",
    "execute",
    "job_device",
    "latency_conditions",
    "new_job",
    "record_failure",
    "recover_jobs",
    "run_job",
    "run_job_watched",
    "run_profile",
    "spec_from_dict",
    "submit_job",
    "supernet_builders",
]
