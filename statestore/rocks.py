"""One RocksDB instance per task, a column family per operator state.

The write-ahead log is disabled: durability comes from checkpoints, not from RocksDB.
After a crash the working database is thrown away and rebuilt from the last completed
checkpoint, so anything RocksDB would have recovered from its WAL is, by definition,
state of an uncommitted epoch that must not survive.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import rocksdict

from eos.errors import StateStoreError

log = logging.getLogger(__name__)

DEFAULT_CF = "default"

T = TypeVar("T")


def _io(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """rocksdict raises bare Exceptions for I/O failures (disk full, read-only file
    system); this turns them into StateStoreError naming the database directory."""

    def wrap(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def call(self: "TaskStore", *args: object, **kwargs: object) -> T:
            try:
                return method(self, *args, **kwargs)
            except StateStoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - see above
                raise StateStoreError(f"state store {self.path}: cannot {what}: {exc}") from exc

        return call

    return wrap


# Sorted runs that trigger a universal compaction (see _options).
COMPACTION_TRIGGER = 8
BLOOM_BITS_PER_KEY = 10
MEMTABLE_BLOOM_RATIO = 0.05


MAX_MANIFEST_BYTES = 64 << 10

_BLOCK_CACHE: rocksdict.Cache | None = None
BLOCK_CACHE_BYTES = 32 << 20


def _shared_block_cache() -> rocksdict.Cache:
    """One block cache for every task of the process (as Kafka Streams bounds memory):
    RocksDB's default gives each database a cache of its own, so memory would grow with
    the number of tasks. Hot state lives in the write-back cache above RocksDB anyway;
    this one mostly holds index and filter blocks for the misses."""
    global _BLOCK_CACHE
    if _BLOCK_CACHE is None:
        _BLOCK_CACHE = rocksdict.Cache(BLOCK_CACHE_BYTES)
    return _BLOCK_CACHE


def _options() -> rocksdict.Options:
    """Tuned for incremental checkpoints, which upload every SST file a checkpoint has
    that the previous one had not. Leveled compaction rewrites the whole of level 1
    each time level 0 fills up, so with keys changing all over the key space every few
    checkpoints upload the entire state; universal compaction merges runs of similar
    size and rewrites the big one rarely. Measured with 100k keys and 1% changed per
    checkpoint over 200 checkpoints (docs/checkpoints.md): mean upload 356 -> 99 KiB,
    p99 upload 2.5 MiB -> 0.7 MiB, for 1.7 times the stored size. Bloom filters keep
    point reads (cache misses) fast across the extra sorted runs."""
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_compaction_style(rocksdict.DBCompactionStyle.universal())
    opts.set_level_zero_file_num_compaction_trigger(COMPACTION_TRIGGER)
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    table.set_block_cache(_shared_block_cache())
    opts.set_block_based_table_factory(table)
    # A checkpoint flushes the memtables every interval, so they rarely fill: two of
    # 16 MiB per task bound their memory without slowing writes.
    opts.set_write_buffer_size(16 << 20)
    opts.set_max_write_buffer_number(2)
    # With state larger than the cache most reads are of keys not yet in RocksDB; SST
    # files answer those from their bloom filters, the memtable by a search of its skip
    # list unless it has a filter too: 0.45 against 0.65-0.85 us a read, for 0.8 MiB a
    # memtable.
    opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO)
    opts.set_memtable_whole_key_filtering(True)
    # Every checkpoint flushes the memtables, and every flush appends to RocksDB's
    # MANIFEST, which is part of each snapshot: left to its 1 GiB default it grows with
    # the job's age (0.5 KiB a checkpoint per task, re-uploaded every time). Past this
    # size RocksDB starts a new, compact one.
    opts.set_max_manifest_file_size(MAX_MANIFEST_BYTES)
    opts.set_max_background_jobs(2)
    opts.set_keep_log_file_num(2)
    opts.set_max_log_file_size(1 << 20)
    return opts


class TaskStore:
    """The RocksDB database of one task. Only the state layer (tables) writes to it."""

    @_io("open the database")
    def __init__(self, path: Path, column_families: Iterable[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        wanted = set(column_families)
        existing = set()
        if (self.path / "CURRENT").exists():
            existing = set(rocksdict.Rdict.list_cf(str(self.path), rocksdict.Options(raw_mode=True)))
        families = {name: _options() for name in (wanted | existing) - {DEFAULT_CF}}
        self._db = rocksdict.Rdict(str(self.path), _options(), column_families=families)
        write_opts = rocksdict.WriteOptions()
        write_opts.disable_wal = True
        self._db.set_write_options(write_opts)
        self._handles = {name: self._db.get_column_family_handle(name) for name in families}
        self._views = {name: self._db.get_column_family(name) for name in families}
        self.column_families = sorted(families)

    @_io("create a column family")
    def ensure_column_family(self, cf: str) -> None:
        if cf not in self._handles:
            self._db.create_column_family(cf, _options())
            self._handles[cf] = self._db.get_column_family_handle(cf)
            self._views[cf] = self._db.get_column_family(cf)
            self.column_families = sorted(self._handles)

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._views[cf].get(key)

    @_io("write")
    def write(self, cf_writes: Iterable[tuple[str, bytes, bytes | None]]) -> int:
        """Writes (column family, key, value-or-None-to-delete) triples as one atomic batch."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        count = 0
        handles = self._handles
        for cf, key, value in cf_writes:
            if value is None:
                batch.delete(key, handles[cf])
            else:
                batch.put(key, value, handles[cf])
            count += 1
        if count:
            self._db.write(batch)
        return count

    def new_batch(self) -> rocksdict.WriteBatch:
        return rocksdict.WriteBatch(raw_mode=True)

    def handle(self, cf: str) -> object:
        return self._handles[cf]

    @_io("write")
    def commit(self, batch: rocksdict.WriteBatch) -> None:
        self._db.write(batch)

    def items(self, cf: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Entries of a column family whose key starts with `prefix`, in key order."""
        it = self._views[cf].iter()
        it.seek(prefix) if prefix else it.seek_to_first()
        while it.valid():
            key = it.key()
            if prefix and not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()

    def scan(self, cf: str, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` entries of a column family in key order, from the first one (or
        the first one after `after`): a slice for the background cleanup."""
        it = self._views[cf].iter()
        if after is None:
            it.seek_to_first()
        else:
            it.seek(after)
            if it.valid() and it.key() == after:
                it.next()
        entries = []
        while it.valid() and len(entries) < limit:
            entries.append((it.key(), it.value()))
            it.next()
        return entries

    def estimate_keys(self, cf: str) -> int:
        return int(self._views[cf].property_int_value("rocksdb.estimate-num-keys") or 0)

    @_io("take a checkpoint")
    def checkpoint(self, target: Path) -> None:
        """A consistent, hard-linked copy of the database (memtables flushed first).

        The memtables are flushed by an explicit call before the copy: the binding lets
        other Python threads run during a flush but not during a checkpoint, and the
        checkpoint's own flush would otherwise hold the loop for as long as RocksDB
        takes to write the state's changes to files."""
        for view in self._views.values():
            view.flush(wait=True)
        rocksdict.Checkpoint(self._db).create_checkpoint(str(target))

    def close(self) -> None:
        """Best effort: the working database is thrown away after a failure anyway."""
        if self._db is not None:
            self._views.clear()
            self._handles.clear()
            db, self._db = self._db, None
            try:
                db.close()
            except Exception as exc:  # noqa: BLE001 - e.g. a final flush on a full disk
                log.warning("closing %s: %s", self.path, exc)
