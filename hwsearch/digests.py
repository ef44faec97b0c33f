"""Digests of files, read in bounded blocks.

Several layers pin what they used by content: a job's checkpoint
(``hwsearch.jobs.spec``), an anchor's reference files (``hwsearch.anchor``),
a dataset's identity.  They must agree byte for byte on how a file is
digested, so the reading lives here once.  Standard library only, so every
layer may use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["feed_file", "file_sha256"]

#: Read this many bytes at a time, so digesting a large checkpoint holds one block, not the file.
BLOCK_BYTES = 1 << 20


def feed_file(digest: Any, path: str | Path) -> None:
    """Add a file's bytes to ``digest`` (any ``hashlib`` object), one block at a time."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
            digest.update(block)


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    feed_file(digest, path)
    return digest.hexdigest()
