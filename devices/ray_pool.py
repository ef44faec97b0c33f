"""Ray actors that own devices: one actor per device, one measurement at a time.

Each :class:`DeviceActor` holds the custom resource ``device:<name>`` (the
cluster declares one unit per physical device, e.g.
``ray.init(resources={"device:pi5": 1})`` or ``ray start --resources``), so
Ray places it on the node that has the device and never creates a second
actor for it.  Ray runs an actor's methods one after another
(``max_concurrency=1``), so a device never measures two batches at once,
while actors for different devices measure in parallel.  For an agent
profile the actor is just a client, and the resource still serialises access.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from devices.profile import DeviceProfile


def device_resource(profile: DeviceProfile) -> str:
    """Name of the custom resource that stands for the profile's device."""
    return f"device:{profile.name}"


@ray.remote(max_concurrency=1)
class DeviceActor:
    """Owns one device; measures batches of ONNX files strictly one at a time."""

    def __init__(self, profile: dict[str, Any]) -> None:
        from devices import open_profiler

        self.profile = DeviceProfile.from_dict(profile)
        self.profiler = open_profiler(self.profile)

    def describe(self) -> dict[str, Any]:
        """What the device reports about itself."""
        return self.profiler.describe()

    def measure_many(self, onnx_paths: list[str]) -> dict[str, Any]:
        """Measure files visible to this actor's node.

        Returns the measurements as dicts plus the wall-clock interval the
        device was busy, so callers (and tests) can see how work was scheduled.
        """
        started = time.time()
        measurements = self.profiler.measure_many([Path(p) for p in onnx_paths])
        return {
            "device": self.profile.name,
            "started": started,
            "finished": time.time(),
            "measurements": [m.to_dict() for m in measurements],
        }


def create_device_actor(profile: DeviceProfile, *, num_cpus: float | None = None):  # -> ray.actor.ActorHandle
    """Start the actor for ``profile`` holding one unit of ``device:<name>``.

    ``num_cpus`` defaults to the profile's intra-op threads, so Ray does not
    pack other CPU work onto the cores being measured.
    """
    cpus = float(profile.intra_op_threads) if num_cpus is None else num_cpus
    return DeviceActor.options(
        name=device_resource(profile), resources={device_resource(profile): 1}, num_cpus=cpus
    ).remote(profile.to_dict())
