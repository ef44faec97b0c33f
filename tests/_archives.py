"""Hand-written zip archives of many empty members, as a hostile checkpoint or dataset upload is built.

Standard library only, so tests import it whatever hwsearch's archive checks offer.
"""

from __future__ import annotations

import struct
from pathlib import Path

_NAME = b"a"
_LOCAL = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, 0, 0, 0, len(_NAME), 0) + _NAME
_CENTRAL = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, 0, 0, 0, len(_NAME),
                       0, 0, 0, 0, 0, 0) + _NAME


def many_member_zip(path: Path, members: int, *, declared: int | None = None, zip64: bool = False) -> Path:
    """A zip archive whose directory holds ``members`` empty entries (47 bytes each), all naming one local file.

    ``declared`` is the count its end records state (``members`` unless given):
    a hostile file may state fewer than its directory holds.  ``zip64`` writes
    ZIP64 end records, as archives of more than 65,535 members must.
    """
    declared = members if declared is None else declared
    with path.open("wb") as out:
        out.write(_LOCAL)
        start = out.tell()
        out.write(_CENTRAL * members)
        size = out.tell() - start
        if zip64:
            record = out.tell()
            out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, declared, declared, size, start))
            out.write(struct.pack("<IIQI", 0x07064B50, 0, record, 1))
            out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
        else:
            out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, declared, declared, size, start, 0))
    return path
