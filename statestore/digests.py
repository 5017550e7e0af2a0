"""SHA-256 of snapshot files, computed once per immutable file.

SST files never change after RocksDB writes them, and a checkpoint hard-links them, so
the same inode shows up in checkpoint after checkpoint; hashing it again each time
would make checkpoint cost grow with total state instead of with what changed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DigestCache:
    """Digests keyed by (device, inode, size, mtime): stable across hard links."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int, int], str] = {}

    def digest(self, path: Path) -> str:
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._known.get(identity)
        if known is None:
            known = self._known[identity] = sha256_file(path)
        return known

    def remember(self, path: Path, digest: str) -> None:
        st = os.stat(path)
        self._known[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = digest
