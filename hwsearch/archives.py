"""How large a zip archive (``.npz``, torch's ``.pt``) becomes once read, from its directory alone.

Both numpy and torch inflate deflated members, so a file's size on disk says
little about the memory a load takes: a 2 MB ``.pt`` of deflated zeros loaded
as a 2 GiB tensor (2.37 GB peak RSS), and a 2 MB ``.npz`` went on to a 10.8 GB
float copy before the allocator gave up.  The readers of checkpoints and array
datasets check the declared sizes here before inflating anything; the service
checks uploads and named files the same way against its own, tighter bound.

Standard library only, so every layer may use it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["MIN_UNPACKED_BYTES", "UNPACKED_RATIO", "UnpackedTooLarge", "check_unpacked_size", "default_bound"]

#: Without a bound given, an archive may unpack to this many times its size on disk, and at least
#: :data:`MIN_UNPACKED_BYTES`.  ``torch.save`` and ``np.savez`` store their members uncompressed,
#: so a real checkpoint unpacks to about its own size whatever that size is; ``np.savez_compressed``
#: images shrink a few times; a file of deflated zeros, about a thousand.  A fixed cap would
#: have refused the large checkpoints a service operator allows (``--max-upload-mb``).
UNPACKED_RATIO = 16
MIN_UNPACKED_BYTES = 256 * 2**20


def default_bound(path: Path) -> int:
    """What ``path`` may unpack to when no tighter bound is given (see :data:`UNPACKED_RATIO`)."""
    return max(MIN_UNPACKED_BYTES, UNPACKED_RATIO * path.stat().st_size)


class UnpackedTooLarge(ValueError):
    """A zip archive's members unpack to more bytes than the bound allows."""


def _unpacked_size(path: Path) -> int | None:
    """The sum of the members' declared sizes, or None for a file that is not a zip archive.

    The central directory's sizes are what the readers inflate to (Python's
    zipfile stops a member at its declared size, and torch's reader allocates
    the declared size and checks it), so summing them bounds the memory a
    load takes without inflating anything.  A broken archive is None too:
    its reader refuses it with a reason.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def check_unpacked_size(path: Path, limit: int | None = None) -> None:
    """Raise :class:`UnpackedTooLarge` if ``path`` is a zip archive that unpacks to more than ``limit`` bytes.

    ``limit`` defaults to :func:`default_bound`.
    """
    unpacked = _unpacked_size(path)
    if limit is None and unpacked is not None:
        limit = default_bound(path)
    if unpacked is not None and limit is not None and unpacked > limit:
        raise UnpackedTooLarge(f"unpacks to {unpacked} bytes; the limit is {limit}")
