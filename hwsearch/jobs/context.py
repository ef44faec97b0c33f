"""The objects a running job hands around: its devices, and where its measurements go.

:class:`JobDevice` is one device as the job measures on it (profile, how to
reach it, the identity its rows are filed under); :class:`JobContext` holds
everything the stages share (store, supernet, data, names the rows are filed
under), so a stage takes one object instead of five fields.  :class:`SharedJob`
is the job's supernet and data in Ray's object store, put once per job.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hwsearch.agents import AgentEndpoint, resolve_profile
from hwsearch.store import Store

if TYPE_CHECKING:
    from hwsearch.accuracy_eval import EvalRefs

__all__ = ["DeviceChanged", "JobContext", "JobDevice", "SharedJob", "job_device", "latency_conditions"]


@dataclass(frozen=True)
class JobDevice:
    """One device as a job measures on it: the profile, how to reach it, what its rows are filed under.

    ``key`` is the device's identity (:meth:`DeviceProfile.identity`: these
    settings on the host that measures, whose fingerprint the profiler
    reports), so a profile pointed at other hardware never reuses rows.
    ``token`` is a declared agent's token; it travels with the job's tasks,
    never into the store.
    """

    profile: Any  # devices.profile.DeviceProfile
    token: str | None = field(repr=False)
    key: str

    @property
    def name(self) -> str:
        return self.profile.name

    def profiler(self) -> Any:
        """A profiler for this device (local, or a client of its agent) that still measures as ``key``.

        A job fixes its devices' identities when it starts and files every
        row under them, so an agent replaced or upgraded since (or a local
        runtime upgraded under a long job) must not measure for it: its rows
        would be another device's filed under this one.  The job stops with
        :class:`DeviceChanged` instead.  The agent client also checks every
        row against the host it described (:mod:`devices.client`).
        """
        from devices import open_profiler

        profiler = open_profiler(self.profile, token=self.token)
        now = profiler.device_key()
        if now != self.key:
            raise DeviceChanged(f"device '{self.name}' now measures as {now}, not as {self.key} when the job "
                                "started: its host or runtime changed (an agent replaced or upgraded); resume "
                                "the job to measure it as the new device")
        return profiler


class DeviceChanged(RuntimeError):
    """A job's device no longer measures as the identity its rows are filed under."""


def job_device(data: Mapping[str, Any], agents: Mapping[str, AgentEndpoint] | None) -> JobDevice:
    """Resolve stored profile data (maybe naming a declared agent) into a :class:`JobDevice`.

    ``agents`` as :func:`~hwsearch.agents.resolve_profile` takes them: None for
    the operator's own profiles, the service's table for anything it runs.
    """
    from devices import open_profiler

    profile, token = resolve_profile(data, agents)
    return JobDevice(profile=profile, token=token,
                     key=open_profiler(profile, token=token).device_key())


@dataclass(frozen=True)
class JobContext:
    """What every stage of one search job shares.

    ``dataset_id`` names the data *and* the weights (accuracies depend on
    both); ``network_id`` is what latency rows are filed under with each
    device's key.  ``data`` and ``net`` are in-process objects; Ray tasks
    get them through :attr:`shared`, put once per job.
    """

    store: Store
    job_id: str
    net: Any  # hwsearch.supernets.Supernet
    devices: Sequence[JobDevice]
    data: Any  # hwsearch.evaldata.EvalSplit: BN calibration and validation images
    dataset_id: str
    archs: Sequence[Any]  # the initial, space-filling selection

    @property
    def space(self) -> Any:
        return self.net.space

    @functools.cached_property
    def shared(self) -> SharedJob:
        """The supernet and the data in Ray's object store, put on first use and reused by every stage.

        Every accuracy evaluation of the job (each precision's initial
        subnets, every refinement round on every device) and every device
        task read these same objects: without them each evaluation put its
        own copy of the supernet (26 MB for the tiny OFA one) and of the
        validation set.  They live as long as this context, i.e. the job.
        """
        from hwsearch.accuracy_eval import put_eval

        return SharedJob(put_eval(self.net, self.data), self.data.identity)

    def latencies(self, device: JobDevice) -> dict[str, dict[str, Any]]:
        """The device's rows for this network, each with a finite ``latency_ms``."""
        from hwsearch.pipeline import finite_latencies

        return finite_latencies(self.store, device.key, self.space.network_id)


@dataclass(frozen=True)
class SharedJob:
    """A job's supernet and :class:`~hwsearch.evaldata.EvalSplit` as Ray references, small enough to travel.

    A device task's measurer carries this instead of the objects: it fetches
    the supernet and data once in its worker (:meth:`resolve`) for exporting
    and quantizing, and hands ``refs`` on to the accuracy evaluations it
    starts, so none of them puts the supernet or the data again.
    """

    refs: EvalRefs
    identity: Mapping[str, Any]

    def resolve(self) -> tuple[Any, Any]:
        """``(supernet, EvalSplit)`` fetched from Ray's object store (the data's two parts rejoined)."""
        import ray

        from hwsearch.evaldata import EvalSplit

        net, calibration, validation = ray.get([self.refs.supernet, self.refs.calibration,
                                                self.refs.validation])
        return net, EvalSplit(calibration, validation, self.identity)


def latency_conditions(row: Mapping[str, Any]) -> dict[str, Any]:
    """How a stored latency was measured, as a front point shows it.

    ``latency_source`` is ``calibrated`` for a reference-normalised latency
    and ``median_ms`` where the raw median had to stand in (see
    :func:`~hwsearch.pipeline.finite_latencies`); ``clock`` ``thread_cpu``
    means CPU time of the inference thread, not wall time.  A point whose
    latency is not ``stable`` and ``calibrated`` is shown as such rather than
    passed off as precise.  ``session_offset`` is the anchor's offset of
    the row's session, against the anchor's norm when the rows were read
    (``None`` where the session had no verdict), and ``row_offset`` what
    the latency was divided by: the offset leaned by the subnet's size
    (:mod:`hwsearch.shift_slope`), taken on the anchor's files at
    ``offset_precision`` (the row's own where known);
    ``latency_ci`` the latency's relative 95% half-width with the spread
    between sessions in it (``ratio_ci`` is the session's own; ``None``
    where the anchor could not yet tell the spread).
    """
    env = row.get("env", {})
    return {"stable": bool(row.get("stable", False)), "clock": env.get("clock", "wall"),
            "latency_source": row.get("latency_source", "calibrated"),
            "ratio_ci": row.get("ratio_ci"), "latency_ci": row.get("latency_ci"),
            "reference_ms": env.get("reference_ms"),
            "reference_source": env.get("reference_source"), "session_offset": row.get("session_offset"),
            "row_offset": row.get("row_offset", row.get("session_offset")),
            "offset_precision": row.get("offset_precision")}
