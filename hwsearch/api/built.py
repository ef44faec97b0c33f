"""The supernets a service has built: a few kept by content, a few built at once.

Registrations, submissions and exports all need the built supernet of a
registration.  Building one takes seconds (a ViT at 512 px, 9 s) and up to
``--max-supernet-mb`` of memory, so the service keeps the last few it built
and builds only a few at a time: requests that need a build beyond that wait
for a place, and past :data:`BUILD_WAIT_S` hear 429.  Unbounded, forty
registrations at once built forty supernets side by side.

A build is kept under what was built (builder, options, weights and the
checkpoint file's version), not under the name it was asked for, so names
registered with the same supernet share one copy; the supernet itself is
built with the asker's reference, so its errors name the asker's supernet.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable
from typing import Any

from hwsearch.jobs import SupernetRef

__all__ = ["BUILD_WAIT_S", "BuildersBusy", "BuiltSupernets"]

#: Longest wait for a place to build in, before the request hears 429.
BUILD_WAIT_S = 120.0


class BuildersBusy(Exception):
    """Every place to build a supernet stayed taken for :data:`BUILD_WAIT_S`."""


class BuiltSupernets:
    """Up to ``keep`` built supernets, least recently used dropped first; at most ``at_once`` built at a time."""

    def __init__(self, build: Callable[[SupernetRef], Any], *, keep: int = 4, at_once: int = 2) -> None:
        self._build = build
        self._keep = keep
        self._nets: collections.OrderedDict[tuple[str, int], Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._places = threading.BoundedSemaphore(at_once)

    def get(self, ref: SupernetRef, version: int) -> Any:
        """The supernet ``ref`` builds from its checkpoint at ``version`` (its mtime), built if not kept."""
        key = _content_key(ref, version)
        net = self._kept(key)
        if net is not None:
            return net
        if not self._places.acquire(timeout=BUILD_WAIT_S):
            raise BuildersBusy("the service is busy building other supernets")
        try:
            net = self._kept(key)  # another request may have built it while this one waited
            if net is None:
                net = self._build(ref)
                self._put(key, net)
        finally:
            self._places.release()
        return net

    def drop(self, ref: SupernetRef) -> None:
        """Forget every kept build of ``ref``'s content (a registration refused after its build)."""
        content = _content_key(ref, 0)[0]
        with self._lock:
            for key in [k for k in self._nets if k[0] == content]:
                del self._nets[key]

    def _kept(self, key: tuple[str, int]) -> Any:
        with self._lock:
            net = self._nets.get(key)
            if net is not None:
                self._nets.move_to_end(key)
            return net

    def _put(self, key: tuple[str, int], net: Any) -> None:
        with self._lock:
            self._nets[key] = net
            self._nets.move_to_end(key)
            while len(self._nets) > self._keep:
                self._nets.popitem(last=False)


def _content_key(ref: SupernetRef, version: int) -> tuple[str, int]:
    """What a build depends on: the reference without its name, and the checkpoint's version."""
    return json.dumps({**ref.to_dict(), "name": ""}, sort_keys=True), version
