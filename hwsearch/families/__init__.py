"""Supernet families as plug-ins: one folder per family holds everything it knows.

Each sub-package is one family and has two modules:

* ``layout.py`` (numpy only, importable by predictors): the family's
  :class:`~hwsearch.space.Layout` subclass with its cost model and native
  arch codec, and the factories of its search spaces;
* ``supernet.py`` (torch): the elastic supernet and its subnets, the
  ``@register_builder`` that builds a supernet for any space of the family's
  layout, and the ``@register_supernet`` factories of its published sizes.

Adding a family is adding a folder here: :func:`load_supernet_modules` finds
every sub-package, so no central list changes.  The generic parts it builds
on (:mod:`hwsearch.space`, :mod:`hwsearch.costs`, the elastic layers and
registry in :mod:`hwsearch.supernets`) know no family.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

__all__ = ["family_packages", "load_supernet_modules"]


def family_packages() -> list[str]:
    """The module names of every family sub-package, sorted."""
    return sorted(f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__)
                  if info.ispkg)


def load_supernet_modules() -> None:
    """Import every family's ``supernet`` module, which registers its builders and supernets.

    A folder without one (a family whose torch side is not written yet) has
    nothing to register and is passed over.
    """
    for package in family_packages():
        if importlib.util.find_spec(f"{package}.supernet") is not None:
            importlib.import_module(f"{package}.supernet")
