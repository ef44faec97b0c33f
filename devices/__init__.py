"""Device profiles and trustworthy latency measurement of ONNX models.

Works on ONNX files alone and imports nothing from ``hwsearch`` or
``predictors``, so it can run by itself on an edge box (see
``python -m devices.agent``).  Start with :func:`open_profiler`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from devices.measure import Measurement
from devices.profile import DeviceProfile, ProfileError

__all__ = ["DeviceProfile", "Measurement", "ProfileError", "open_profiler"]

# onnxruntime writes a device id to ~/.cache/Microsoft/DeveloperTools when it is imported unless
# this is set; the agent on an edge box imports this package before onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ProfileLike = Union[DeviceProfile, str, Path]


def open_profiler(profile: ProfileLike, *, token: str | None = None):  # -> LocalProfiler | AgentClient
    """A profiler for the profile's ``where``: in this process, or an HTTP agent.

    Both offer ``measure_many(onnx_paths, *, progress=None)`` and ``describe()``.
    ``token`` is an agent's token handed over by whoever declared the agent
    (the service's operator); without it the profile's ``where.token_env`` is read.
    """
    if not isinstance(profile, DeviceProfile):
        profile = DeviceProfile.load(profile)
    if profile.where.kind == "agent":
        from devices.client import AgentClient

        return AgentClient(profile, token=token)
    from devices.local import LocalProfiler

    return LocalProfiler(profile)
