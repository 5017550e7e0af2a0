"""The state manager of one task: its RocksDB, its cached tables, its snapshots.

Kafka Streams' ProcessorStateManager is the model: the task asks it to flush, to
snapshot, to persist; it never touches Kafka, and the runtime never touches RocksDB
files. Tables are created on first use, so operators declare state lazily in `open`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from statestore.changelog import Changes
from statestore.codecs import ValueCodec
from statestore.digests import DigestCache
from statestore.manifest import Manifest
from statestore.rocks import TaskStore
from statestore.scrub import TaskScrub
from statestore.snapshots import RestoreStats, SnapshotPersister, SnapshotRestorer, UploadPlan, run_all, task_prefix
from statestore.state_dir import TaskDirectory
from statestore.storage.base import CheckpointStorage
from statestore.tables import CapturedChanges, MapTable, ValueTable
from statestore.ttl import ExpiringMap, ExpiringValues, Sweeper, TtlClock, ttl_codec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenCapture:
    """What writing a capture produced: the local snapshot (None when the checkpoint
    takes none) and, with a changelog, the changes as RocksDB's bytes."""

    local_dir: Path | None
    changes: Changes


@dataclass(frozen=True)
class SnapshotInfo:
    """What a persisted snapshot produced, for the manifest's caller and for metrics."""

    manifest: Manifest
    persist_seconds: float


class TaskState:
    def __init__(self, directory: TaskDirectory, storage: CheckpointStorage, job: str, task: str,
                 digests: DigestCache, incremental: bool = True, logs_changes: bool = False) -> None:
        self.directory = directory
        self.job = job
        self.task = task
        prefix = task_prefix(job, task)
        self.persister = SnapshotPersister(storage, prefix, digests, incremental)
        self.restorer = SnapshotRestorer(storage, prefix, digests)
        self.scrub = TaskScrub(storage, prefix, self.persister.damaged)
        self.store: TaskStore | None = None
        self.tables: dict[str, ValueTable | MapTable] = {}
        # What runs before each flush, by the column family it writes: parts that keep
        # their progress in memory write it into their table, the cleanup of each state
        # with a time to live deletes what expired.
        self.before_flush: dict[str, Callable[[], object]] = {}
        self._acquired = False
        # Whether RocksDB took writes no checkpoint covers yet.
        self._written = False
        # With a changelog: what flushes between checkpoints wrote (column family ->
        # [(key, value or None)]), logged with the next checkpoint's changes.
        self.logs_changes = logs_changes
        self._flushed: dict[str, list[tuple[bytes, bytes | None]]] = {}
        self._captured_flushed: dict[str, list[tuple[bytes, bytes | None]]] = {}
        # Set while no captured snapshot is being written: anything else that writes to
        # or replaces the database waits for it.
        self._idle = threading.Event()
        self._idle.set()

    def open(self, manifest: Manifest | None) -> RestoreStats | None:
        """Builds a fresh working database, from `manifest`'s snapshot when given (the one
        open until now is closed first: a restore may open several before one holds)."""
        if self.store is not None:
            self.discard_working_db()
        if not self._acquired:
            working = self.directory.acquire()
            self._acquired = True
        else:
            working = self.directory.reset_working_dir()
        stats = None
        families: list[str] = []
        if manifest is not None:
            stats = self.restorer.restore(manifest, working, self.directory.local_snapshots())
            families = list(manifest.column_families)
        self.store = TaskStore(working, families)
        self.tables, self.before_flush = {}, {}
        self._written = False
        self._flushed, self._captured_flushed = {}, {}
        return stats

    def apply_changes(self, changes: Iterable[tuple[str, bytes, bytes | None]]) -> int:
        """Writes changelog entries (RocksDB's bytes) into the database as one batch,
        before any table is read: a replay after the snapshot was opened."""
        assert not self.tables, "changes are applied before the tables are used"
        entries = list(changes)
        for family in {family for family, _, _ in entries}:
            self.store.ensure_column_family(family)
        return self.store.write(entries)

    def value_table(self, cf: str, codec: ValueCodec) -> ValueTable:
        return self._table(cf, codec, ValueTable)  # type: ignore[return-value]

    def map_table(self, cf: str, codec: ValueCodec) -> MapTable:
        return self._table(cf, codec, MapTable)  # type: ignore[return-value]

    def expiring_values(self, cf: str, codec: ValueCodec, ttl_ms: int, clock: TtlClock) -> ExpiringValues:
        """A value state whose values expire `ttl_ms` after their last write (statestore/ttl.py),
        swept at every flush."""
        table = self.value_table(cf, ttl_codec(codec))
        self.before_flush[cf] = Sweeper(table, ttl_ms, clock).sweep
        return ExpiringValues(table, ttl_ms, clock)

    def expiring_map(self, cf: str, codec: ValueCodec, ttl_ms: int, clock: TtlClock) -> ExpiringMap:
        table = self.map_table(cf, ttl_codec(codec))
        self.before_flush[cf] = Sweeper(table, ttl_ms, clock).sweep
        return ExpiringMap(table, ttl_ms, clock)

    def _table(self, cf: str, codec: ValueCodec, kind: type) -> ValueTable | MapTable:
        table = self.tables.get(cf)
        if table is None:
            self.store.ensure_column_family(cf)
            table = self.tables[cf] = kind(self.store, cf, codec)
        elif not isinstance(table, kind):
            raise TypeError(f"state {cf!r} is used both as {type(table).__name__} and {kind.__name__}")
        return table

    def capture(self) -> list[CapturedChanges]:
        """The synchronous part of a snapshot: every table's changes since the last one,
        taken as they are now (`write_snapshot` writes them, on another thread). The
        tables go on at once; until the write is done, nothing else writes to RocksDB."""
        self.wait_written()
        self._before_write()
        captured = [c for table in self.tables.values() if (c := table.capture()) is not None]
        self._captured_flushed, self._flushed = self._flushed, {}
        self._idle.clear()
        return captured

    def _before_write(self) -> None:
        for prepare in self.before_flush.values():
            prepare()

    def write_snapshot(self, captured: list[CapturedChanges], snapshot: str | None) -> WrittenCapture:
        """The captured changes into RocksDB as one batch, then the snapshot of exactly
        that state (hard links), unless `snapshot` is None: the checkpoint then logs the
        changes (with what flushes wrote since the last checkpoint) instead. Runs off the
        loop's thread."""
        try:
            logged = self.logs_changes and snapshot is None
            log = self._captured_flushed if logged else {}  # taken, not copied: later flushes log anew
            batch, count = self.store.new_batch(), 0
            for changes in captured:
                cf = changes.table.cf
                count += changes.write_into(batch, self.store.handle(cf), log.setdefault(cf, []) if logged else None)
            if count:
                self.store.commit(batch)
            for changes in captured:
                changes.merge()
            self._captured_flushed = {}
            if snapshot is None:
                self._written = False
                return WrittenCapture(None, [(cf, entries) for cf, entries in log.items() if entries])
            return WrittenCapture(self.snapshot_local(snapshot), [])
        finally:
            self._idle.set()

    def drop_capture(self) -> None:
        """The captured changes will not be written (the checkpoint failed at its barrier;
        a rewind rebuilds the database from the last snapshot)."""
        self._idle.set()

    def wait_written(self) -> None:
        """Waits until no captured snapshot is being written."""
        self._idle.wait()

    def flush(self) -> int:
        """Writes every table's pending changes to RocksDB as one atomic batch, with what
        a slice of each state with a time to live has expired."""
        self.wait_written()
        self._before_write()
        batch, count = self.store.new_batch(), 0
        for table in self.tables.values():
            if table.pending:
                log = self._flushed.setdefault(table.cf, []) if self.logs_changes else None
                count += table.drain_into(batch, self.store.handle(table.cf), log)
        if count:
            self.store.commit(batch)
            self._written = True
        return count

    def changed_since_snapshot(self) -> bool:
        """Whether the state differs from its last snapshot: the task must then be in the
        next checkpoint even if it read nothing (timers that fired, windows or join
        buffers that expired with time alone)."""
        return self._written or any(table.pending for table in self.tables.values())

    def cached_bytes(self) -> int:
        return sum(t.entry_bytes() for t in self.tables.values())

    def spill(self) -> None:
        """Frees the cache: flush, then forget. Later reads go to RocksDB."""
        self.flush()
        for table in self.tables.values():
            table.evict()

    def snapshot_local(self, snapshot: str) -> Path:
        target = self.directory.snapshot_dir(snapshot)
        self.store.checkpoint(target)
        self._written = False
        return target

    def plan_upload(self, local_dir: Path, previous: Manifest | None) -> UploadPlan:
        """The snapshot's files and which of them storage lacks (uploads are the caller's,
        so a checkpoint can upload every task's files at once)."""
        return self.persister.plan(local_dir, local_dir.name, previous)

    def manifest_for(self, plan: UploadPlan, build_manifest: Callable[..., Manifest]) -> Manifest:
        return build_manifest(files=plan.entries, uploaded_bytes=plan.upload_bytes,
                              column_families=tuple(self.store.column_families),
                              state_keys=self.state_keys())

    def persist(self, local_dir: Path, build_manifest: Callable[..., Manifest],
                previous: Manifest | None,
                before_manifest: Callable[[str, bytes], None] | None = None,
                deadline: float | None = None, pool: Executor | None = None) -> SnapshotInfo:
        """Uploads one snapshot and writes its manifest (one task on its own)."""
        began = time.monotonic()
        plan = self.plan_upload(local_dir, previous)
        run_all(self.persister.upload_calls(plan), pool, deadline, f"snapshot {plan.snapshot}")
        manifest = self.manifest_for(plan, build_manifest)
        self.persister.write_manifest(manifest, before_manifest)
        return SnapshotInfo(manifest, time.monotonic() - began)

    def state_keys(self) -> dict[str, int]:
        return {cf: self.store.estimate_keys(cf) for cf in self.store.column_families}

    def close(self, remove_working_dir: bool = True) -> None:
        self.wait_written()
        if self.store is not None:
            self.store.close()
            self.store = None
        self.tables, self.before_flush = {}, {}
        self._flushed, self._captured_flushed = {}, {}
        if self._acquired:
            self.directory.release(remove_working_dir)
            self._acquired = False

    def discard_working_db(self) -> None:
        """Closes the database without releasing the directory: a rewind follows."""
        self.wait_written()
        if self.store is not None:
            self.store.close()
            self.store = None
        self.tables, self.before_flush = {}, {}
