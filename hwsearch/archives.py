"""How large a zip archive (``.npz``, torch's ``.pt``) becomes once read, from its directory alone.

Both numpy and torch inflate deflated members, so a file's size on disk says
little about the memory a load takes: a 2 MB ``.pt`` of deflated zeros loaded
as a 2 GiB tensor (2.37 GB peak RSS), and a 2 MB ``.npz`` went on to a 10.8 GB
float copy before the allocator gave up.  The readers of checkpoints and array
datasets check the declared sizes here before inflating anything; the service
checks uploads and named files the same way against its own, tighter bound.

The member count is bounded too (:data:`MAX_MEMBERS`), read from the end
records before the directory is walked: a 47 MB ``.pt`` listing 1,000,000
empty members took 6.2 s and 170 MB to size with ``zipfile`` (a ``ZipInfo``
per member), 14 s to refuse over HTTP, while the upload held the service's
checkpoint lock.

Standard library only, so every layer may use it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["MAX_MEMBERS", "MIN_UNPACKED_BYTES", "UNPACKED_RATIO", "TooManyMembers", "UnpackedTooLarge",
           "check_unpacked_size", "default_bound"]

#: Without a bound given, an archive may unpack to this many times its size on disk, and at least
#: :data:`MIN_UNPACKED_BYTES`.  ``torch.save`` and ``np.savez`` store their members uncompressed,
#: so a real checkpoint unpacks to about its own size whatever that size is; ``np.savez_compressed``
#: images shrink a few times; a file of deflated zeros, about a thousand.  A fixed cap would
#: have refused the large checkpoints a service operator allows (``--max-upload-mb``).
UNPACKED_RATIO = 16
MIN_UNPACKED_BYTES = 256 * 2**20

#: The most members an archive may list.  ``torch.save`` writes one member per tensor storage
#: plus four (``data.pkl``, ``byteorder``, ``version``, ``.data/serialization_id``) and
#: ``np.savez`` one per array: every registered family's full state dict saves as 94
#: (``demo_vit_mnist``) to 481 members (``ofa_mbv3_d234_e346_k357_w1.0`` and ``w1.2``;
#: ``ofa_resnet50`` 374, ``autoformer_base`` 270), an array dataset as 2.  100 times the
#: largest leaves room for optimizer state and larger models, and sizing that many takes
#: under a tenth of a second.
MAX_MEMBERS = 50_000

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header (zipfile's layout)
_MAX_COMMENT = 0xFFFF
_ZIP64_EXTRA = 0x0001
_UNSET32 = 0xFFFFFFFF
_UNSET16 = 0xFFFF
_END_SIGNATURE = b"PK\x05\x06"


def default_bound(path: Path | BinaryIO) -> int:
    """What ``path`` (or an open file) may unpack to when no tighter bound is given (see :data:`UNPACKED_RATIO`)."""
    if isinstance(path, Path):
        size = path.stat().st_size
    else:
        size = path.seek(0, os.SEEK_END)
        path.seek(0)
    return max(MIN_UNPACKED_BYTES, UNPACKED_RATIO * size)


class UnpackedTooLarge(ValueError):
    """A zip archive's members unpack to more bytes than the bound allows."""


class TooManyMembers(UnpackedTooLarge):
    """A zip archive lists more than :data:`MAX_MEMBERS` members.

    A subclass of :class:`UnpackedTooLarge` so that every reader that refuses
    an archive too large to unpack refuses this one the same way, naming the file.
    """


@dataclass(frozen=True)
class _Directory:
    """Where the central directory starts and how long it is, as :mod:`zipfile` finds it."""

    start: int
    size: int


def _unpacked_size(source: Path | BinaryIO) -> int | None:
    """The sum of the members' declared sizes, or None for a file that is not a zip archive.

    The central directory's sizes are what the readers inflate to (Python's
    zipfile stops a member at its declared size, and torch's reader allocates
    the declared size and checks it), so summing them bounds the memory a
    load takes without inflating anything.  A broken archive is None too:
    its reader refuses it with a reason.  More than :data:`MAX_MEMBERS`
    members, declared or found, is :class:`TooManyMembers`.  ``source`` may
    be a file its reader already holds open, so the bytes checked are the
    bytes read.
    """
    try:
        if not isinstance(source, Path):
            return _sized(source)
        with source.open("rb") as file:
            return _sized(file)
    except UnpackedTooLarge:
        raise
    except (OSError, struct.error, ValueError, OverflowError):  # an offset no file has: not an archive we read
        return None


def _sized(file: BinaryIO) -> int | None:
    directory = _find_directory(file)
    return None if directory is None else _sum_sizes(file, directory)


def _find_directory(file: BinaryIO) -> _Directory | None:
    """The central directory, after checking every member count its end records declare.

    Found as :mod:`zipfile` finds it (the end record, then the ZIP64 end
    record just before its locator, if any, the directory just before the
    record used), and the count of each record is checked, so neither numpy's
    reader nor torch's (which parses as many entries as its record declares)
    is handed more than :data:`MAX_MEMBERS` entries.  None where no end record is.
    """
    found = _end_record(file)
    if found is None:
        return None
    location, (_, _, _, on_disk, total, size, _, _) = found
    _check_count(*(count for count in (on_disk, total) if count != _UNSET16))  # 0xFFFF: see ZIP64's
    zip64 = _zip64_directory(file, location)
    return zip64 if zip64 is not None else _Directory(start=location - size, size=size)


def _end_record(file: BinaryIO) -> tuple[int, tuple[int, ...]] | None:
    """``(offset, fields)`` of the end of central directory record, searched for as zipfile does."""
    end = file.seek(0, 2)
    if end >= _END.size:  # the usual case: no archive comment
        file.seek(end - _END.size)
        raw = file.read(_END.size)
        if raw[:4] == _END_SIGNATURE and raw[-2:] == b"\0\0":
            return end - _END.size, _END.unpack(raw)
    tail_start = max(0, end - _END.size - _MAX_COMMENT)
    file.seek(tail_start)
    tail = file.read()
    at = tail.rfind(_END_SIGNATURE)
    if at < 0 or at + _END.size > len(tail):
        return None
    return tail_start + at, _END.unpack_from(tail, at)


def _zip64_directory(file: BinaryIO, location: int) -> _Directory | None:
    """The ZIP64 directory if a locator precedes the end record at ``location``; else None.

    zipfile reads the ZIP64 end record just before the locator (and falls back
    to the plain record when none is there); torch's reader reads the record
    where the locator points.  Both records' counts are checked.
    """
    if location < _ZIP64_LOCATOR.size:
        return None
    file.seek(location - _ZIP64_LOCATOR.size)
    signature, _, pointed, _ = _ZIP64_LOCATOR.unpack(file.read(_ZIP64_LOCATOR.size))
    if signature != b"PK\x06\x07":
        return None
    before = location - _ZIP64_LOCATOR.size - _ZIP64_END.size
    directory = None
    for offset in dict.fromkeys((pointed, before)):
        record = _read_zip64_end(file, offset)
        if record is not None:
            _, _, _, _, _, _, on_disk, total, size, _ = record
            _check_count(on_disk, total)
            if offset == before:
                directory = _Directory(start=before - size, size=size)
    return directory


def _read_zip64_end(file: BinaryIO, offset: int) -> tuple[int, ...] | None:
    """The ZIP64 end record's fields at ``offset``, or None where none is (an offset past the file included:
    one of 2**63 made ``seek`` raise ValueError, and the upload a 500)."""
    if not 0 <= offset <= file.seek(0, 2) - _ZIP64_END.size:
        return None
    file.seek(offset)
    raw = file.read(_ZIP64_END.size)
    if len(raw) < _ZIP64_END.size or raw[:4] != b"PK\x06\x06":
        return None
    return _ZIP64_END.unpack(raw)


def _check_count(*declared: int) -> None:
    """Refuse an archive whose end record declares more than :data:`MAX_MEMBERS` members."""
    most = max(declared, default=0)
    if most > MAX_MEMBERS:
        raise TooManyMembers(f"lists {most} members; the limit is {MAX_MEMBERS}")


def _sum_sizes(file: BinaryIO, directory: _Directory) -> int | None:
    """The declared sizes of the directory's entries summed, walking it as :mod:`zipfile` does.

    zipfile reads entries until the directory's byte size is used up, whatever
    count was declared, so the walk stops past :data:`MAX_MEMBERS` entries
    instead of trusting the count.  None where zipfile would find the archive broken.
    """
    if directory.start < 0:
        return None
    file.seek(directory.start)
    total = used = members = 0
    while used < directory.size:
        raw = file.read(_ENTRY.size)
        if len(raw) < _ENTRY.size or raw[:4] != b"PK\x01\x02":
            return None
        fields = _ENTRY.unpack(raw)
        name_length, extra_length, comment_length = fields[12:15]
        extra = file.read(name_length + extra_length)[name_length:]
        file.seek(comment_length, 1)
        members += 1
        if members > MAX_MEMBERS:
            raise TooManyMembers(f"lists more than {MAX_MEMBERS} members; the limit is {MAX_MEMBERS}")
        size = fields[11] if fields[11] != _UNSET32 else _zip64_size(extra)
        if size is None:
            return None
        total += size
        used += _ENTRY.size + name_length + extra_length + comment_length
    return total


def _zip64_size(extra: bytes) -> int | None:
    """The uncompressed size a ZIP64 extra field holds (its first value when the header's is unset)."""
    while len(extra) >= 4:
        kind, length = struct.unpack_from("<HH", extra)
        if kind == _ZIP64_EXTRA:
            return struct.unpack_from("<Q", extra, 4)[0] if length >= 8 and len(extra) >= 12 else None
        extra = extra[4 + length:]
    return None


def check_unpacked_size(path: Path | BinaryIO, limit: int | None = None) -> None:
    """Raise :class:`UnpackedTooLarge` if ``path`` (or an open file) is a zip archive that unpacks to more
    than ``limit`` bytes.

    ``limit`` defaults to :func:`default_bound`.  An open file is left at its start.
    """
    unpacked = _unpacked_size(path)
    if not isinstance(path, Path):
        path.seek(0)
    if limit is None and unpacked is not None:
        limit = default_bound(path)
    if unpacked is not None and limit is not None and unpacked > limit:
        raise UnpackedTooLarge(f"unpacks to {unpacked} bytes; the limit is {limit}")
