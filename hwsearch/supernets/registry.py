"""The supernet registry: a name for each supernet, so commands and configs can refer to it.

Adding a supernet means decorating one factory function anywhere; no central
list changes::

    @register_supernet("my_mbv3")
    def my_mbv3(n_classes: int | None = None) -> Supernet:
        return build_supernet(my_space(n_classes or 10))

Factories take ``n_classes`` (``None`` for the supernet's own head) and
return a :class:`Supernet` with freshly initialised weights;
:func:`create_supernet` then loads a checkpoint if one is given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hwsearch.supernets.base import Supernet

__all__ = ["create_supernet", "describe_supernet", "list_supernets", "register_supernet"]

Factory = Callable[..., Supernet]
F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, Factory] = {}
_LOCK = threading.Lock()


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


def list_supernets() -> list[str]:
    """Registered supernet names, sorted."""
    with _LOCK:
        return sorted(_REGISTRY)


def _factory(name: str) -> Factory:
    with _LOCK:
        factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown supernet {name!r}; available: {', '.join(list_supernets())}")
    return factory


def describe_supernet(name: str) -> str:
    """The first line of the factory's docstring: a one-line summary of the supernet."""
    doc = _factory(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def create_supernet(
    name: str, checkpoint: str | Path | None = None, n_classes: int | None = None
) -> Supernet:
    """Build the named supernet; load ``checkpoint`` (a local file) if given."""
    supernet = _factory(name)(n_classes=n_classes)
    if checkpoint is not None:
        supernet.load_checkpoint(checkpoint)
    return supernet
