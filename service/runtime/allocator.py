"""How much of what the worker frees the C allocator keeps.

glibc's malloc gives threads arenas of their own, up to eight per core, and keeps what is
freed in each arena for reuse there. A worker's memory churns across many threads: the
processing thread encodes, the checkpoint thread writes and drops what it captured,
librdkafka's and RocksDB's threads allocate and free buffers. Each arena then holds its
own free memory the others cannot use, and the process's RSS grows past what it uses
(RocksDB's own advice is a non-glibc allocator or few arenas). With 10,000,000 keys in
state the worker peaked at 282-293 MiB with glibc's default and 262-267 MiB with two
arenas (docs/bench/README.md, "Memory with 10,000,000 keys").
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
WORKER_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = WORKER_MALLOC_ARENAS) -> bool:
    """Limit glibc's malloc to `arenas` arenas; True if the limit was set.

    Arenas are made when a thread first allocates, so this must run before the worker
    starts its threads. An operator's own `MALLOC_ARENA_MAX` stands, and a C library
    other than glibc (or an allocator preloaded in its place, which ignores mallopt) is
    left as it is."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    limited = bool(libc.mallopt(M_ARENA_MAX, arenas))
    if not limited:
        log.warning("could not limit the C allocator to %d arenas; memory may grow past what "
                    "the worker uses", arenas)
    return limited
