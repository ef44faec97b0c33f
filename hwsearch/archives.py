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

__all__ = ["MAX_UNPACKED_BYTES", "UnpackedTooLarge", "check_unpacked_size"]

#: What a checkpoint or an array dataset may unpack to when no tighter bound is given: 1 GiB.
#: Real supernet checkpoints are well under it (OFA's MobileNetV3 ones are under 100 MB);
#: datasets larger than this belong in a folder of images, which is streamed, not held in memory.
MAX_UNPACKED_BYTES = 2**30


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


def check_unpacked_size(path: Path, limit: int = MAX_UNPACKED_BYTES) -> None:
    """Raise :class:`UnpackedTooLarge` if ``path`` is a zip archive that unpacks to more than ``limit`` bytes."""
    unpacked = _unpacked_size(path)
    if unpacked is not None and unpacked > limit:
        raise UnpackedTooLarge(f"unpacks to {unpacked} bytes; the limit is {limit}")
