"""Checks of a caller's counts and sizes at the API boundary, naming the argument.

A count of 0, -1 or 2.5 that reaches torch or numpy fails there with an
error about tensor shapes (or worse, builds a network with an empty head);
these helpers refuse it where it is given, with the argument's name.  They
are a leaf (no torch, no hwsearch imports) so that the numpy-only layouts
and the torch-side export can both use them.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["is_finite_real", "is_integer", "is_real", "non_negative_int", "positive_int", "positive_number",
           "whole_number"]


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (numpy's included) and not a bool.

    Python counts ``True`` as the number 1, so a bare ``isinstance`` lets a
    JSON ``true`` through as a latency, a seed or a creation time.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_real(value: object) -> bool:
    """Whether ``value`` is a real number (see :func:`is_real`) that is neither NaN nor infinite.

    An integer beyond a float's range (``10**400`` read from JSON) counts as
    infinite: ``math.isfinite`` raised OverflowError for it (Y18).
    """
    if not is_real(value):
        return False
    try:
        return math.isfinite(value)  # type: ignore[arg-type]  (is_real)
    except OverflowError:
        return False


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (numpy's included) and not a bool (see :func:`is_real`)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value: object, name: str) -> int:
    """``value`` as a plain ``int`` ≥ 1, or a ValueError naming ``name``.

    A bool is refused although Python counts it an int: ``True`` given as a
    count is a mistake, not 1.  numpy integers are accepted (a count read out
    of an array is still a count) and returned as ``int``.
    """
    return whole_number(value, name, 1)


def non_negative_int(value: object, name: str) -> int:
    """``value`` as a plain ``int`` ≥ 0 (how many of something, where none is a fair answer)."""
    return whole_number(value, name, 0)


def whole_number(value: object, name: str, least: int) -> int:
    """``value`` as a plain ``int`` of at least ``least``, or a ValueError naming ``name``."""
    if not is_integer(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be ≥ {least}, got {value!r}")
    return int(value)


def positive_number(value: object, name: str) -> float:
    """``value`` as a finite ``float`` > 0, or a ValueError naming ``name``.

    NaN compares false with everything and so passes range checks further
    on; infinity and 0 make no sense as a multiplier or a size.  A string
    is refused with a ValueError too (not a TypeError), as
    :func:`whole_number` does, so the service's handlers
    answer it as a bad input rather than a server error.
    """
    if not is_real(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not is_finite_real(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
