"""The supernet registry: a name for each supernet, and a builder for each family's layout.

Adding a supernet means decorating one factory function in a family's
``supernet.py`` (``hwsearch/families/<family>/``); no central list changes::

    @register_supernet("my_mbv3")
    def my_mbv3(n_classes: int | None = None) -> Supernet:
        return build_supernet(my_space(n_classes or 10))

Factories take ``n_classes`` (``None`` for the supernet's own head) and
return a :class:`Supernet` with freshly initialised weights;
:func:`create_supernet` then loads a checkpoint if one is given.
:func:`build_supernet` builds the elastic network of any space whose
layout's family registered a builder with :func:`register_builder`.

The families and the built-in demo register themselves when first needed
(:func:`_load_plugins`), so importing this package loads none of them and
no family imports back into a half-initialised package.

A family kept in a package of its own names its registering module as an
entry point of the group ``hwsearch.supernets`` in its ``pyproject.toml``::

    [project.entry-points."hwsearch.supernets"]
    my_family = "my_package.supernet"

Every process that builds supernets by name (the CLI, the service, each of
their Ray workers) then loads it when the registry is first used, with no
import of the user's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from hwsearch.checks import positive_int
from hwsearch.space import SearchSpace
from hwsearch.supernets.base import Supernet

__all__ = ["ENTRY_POINT_GROUP", "build_supernet", "create_supernet", "describe_supernet", "failed_plugins",
           "list_supernets", "register_builder", "register_supernet"]

ENTRY_POINT_GROUP = "hwsearch.supernets"

Factory = Callable[..., Supernet]
Builder = Callable[[SearchSpace, float], nn.Module]
F = TypeVar("F", bound=Factory)
B = TypeVar("B", bound=Builder)

_REGISTRY: dict[str, Factory] = {}
_BUILDERS: dict[str, Builder] = {}
_LOCK = threading.Lock()
_LOAD_LOCK = threading.RLock()
_loaded = False
_FAILED_PLUGINS: dict[str, str] = {}
_LOG = logging.getLogger(__name__)


def register_supernet(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Register the decorated factory under ``name``; a second registration is an error."""

    def decorate(factory: F) -> F:
        with _LOCK:
            if name in _REGISTRY and not overwrite and _REGISTRY[name] is not factory:
                raise ValueError(f"a supernet named {name!r} is already registered "
                                 "(pass overwrite=True to replace it)")
            _REGISTRY[name] = factory
        return factory

    return decorate


def register_builder(family: str, *, overwrite: bool = False) -> Callable[[B], B]:
    """Register the decorated ``(space, dropout_rate) -> elastic module`` for a layout family.

    A second builder for a family is an error, as a second supernet of one
    name is: a layout subclass inherits its parent's ``family``, and a
    builder registered for it silently built every MobileNetV3 supernet of
    the service.  The same function imported again is not a second one.
    """

    def decorate(builder: B) -> B:
        with _LOCK:
            held = _BUILDERS.get(family)
            if held is not None and not overwrite and _origin(held) != _origin(builder):
                raise ValueError(f"layout family {family!r} is built by {'.'.join(_origin(held))} already: give "
                                 "your layout a family of its own (a subclass inherits its parent's), or pass "
                                 "overwrite=True to replace it")
            _BUILDERS[family] = builder
        return builder

    return decorate


def _origin(function: Callable[..., Any]) -> tuple[str, str]:
    """Where a function was defined: the same code imported twice is one builder."""
    return (getattr(function, "__module__", "?"), getattr(function, "__qualname__", repr(function)))


def _load_plugins() -> None:
    """Import every family's supernet module and the demo's, once, so their decorators run."""
    global _loaded
    with _LOAD_LOCK:
        if _loaded:
            return
        _loaded = True  # first, so a plug-in that lists supernets while importing does not recurse
        try:
            import hwsearch.demo.supernet  # noqa: F401  (registers the built-in demos)
            from hwsearch.families import load_supernet_modules

            load_supernet_modules()
        except BaseException:
            _loaded = False
            raise
        _load_entry_points()


def _load_entry_points() -> None:
    """Import every installed package's ``hwsearch.supernets`` entry point, so its decorators run.

    One broken plug-in does not take the built-in families down with it: its
    error is kept (:func:`failed_plugins`), logged once, and named when a
    supernet it might have registered is asked for.
    """
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        label = f"{entry.name} = {entry.value}"
        try:
            entry.load()
        except Exception as error:  # a plug-in's own failure, of any kind, is reported, not raised
            _FAILED_PLUGINS[label] = f"{type(error).__name__}: {error}"
            _LOG.warning("hwsearch supernet plug-in %r failed to load: %s", label, _FAILED_PLUGINS[label])


def _broken_plugins() -> str:
    """What a "not found" error adds: each plug-in that might have registered the name but failed to load."""
    return "".join(f"; plug-in {label!r} failed to load ({error})" for label, error in _FAILED_PLUGINS.items())


def failed_plugins() -> dict[str, str]:
    """The ``hwsearch.supernets`` entry points that failed to load, each with its error."""
    _load_plugins()
    return dict(_FAILED_PLUGINS)


def build_supernet(space: SearchSpace, *, name: str | None = None,
                   dropout_rate: float = 0.0) -> Supernet:
    """A freshly initialised supernet for ``space``, built by its layout family's builder."""
    _load_plugins()
    family = getattr(space.layout, "family", None)
    with _LOCK:
        builder = _BUILDERS.get(family) if family else None
        known = sorted(_BUILDERS)
    if builder is None:
        raise ValueError(f"{space.name}: no supernet family builds layout "
                         f"{type(space.layout).__name__}; families: {', '.join(known)}{_broken_plugins()}")
    with _initial_weights(space.network_id):
        return Supernet(name or space.name, builder(space, dropout_rate))


@contextlib.contextmanager
def _initial_weights(network: str) -> Iterator[None]:
    """Draw the initial weights built inside from a seed of ``network``; the caller's random stream goes on as
    if nothing was drawn.

    Without a checkpoint those weights are what is searched, and every
    process built others: two ``hwsearch export`` runs of one subnet wrote
    different files (151 of 151 initializers apart), a service's export was
    not the network its job's Ray worker had scored, and a second search
    reused accuracies measured on another random network, all stored under
    one key.  A checkpoint, when loaded, replaces them.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(hashlib.sha256(network.encode()).hexdigest()[:8], 16))
        yield


def list_supernets() -> list[str]:
    """Registered supernet names, sorted."""
    _load_plugins()
    with _LOCK:
        return sorted(_REGISTRY)


def _factory(name: str) -> Factory:
    _load_plugins()
    with _LOCK:
        factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown supernet {name!r}; available: {', '.join(list_supernets())}{_broken_plugins()}")
    return factory


def describe_supernet(name: str) -> str:
    """The first line of the factory's docstring: a one-line summary of the supernet."""
    doc = _factory(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def create_supernet(
    name: str, checkpoint: str | Path | None = None, n_classes: int | None = None
) -> Supernet:
    """Build the named supernet; load ``checkpoint`` (a local file) if given.

    ``n_classes`` is checked here, before any factory runs, because a plug-in's
    factory may hand it straight to torch (which failed on -1 and 2.5 with
    errors about tensor sizes, and built an empty head for 0).
    """
    if n_classes is not None:
        n_classes = positive_int(n_classes, "n_classes")
    with _initial_weights(f"{name}:{n_classes}"):  # a factory may build its network without build_supernet
        supernet = _factory(name)(n_classes=n_classes)
    if checkpoint is not None:
        supernet.load_checkpoint(checkpoint)
    return supernet
