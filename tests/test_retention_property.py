"""Retention never deletes a file a retained checkpoint references, over random
histories of checkpoints that commit, fail before or after their manifest, commit
ambiguously, and workers that crash (mid-upload or not) and restart.

The real persister, manifests, retention and file storage run; only RocksDB is
replaced by a model of its file set (SSTs appear, compactions replace several by one),
because retention sees nothing of RocksDB but those files.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from statestore.digests import DigestCache, sha256_file
from statestore.manifest import Manifest
from statestore.retention import RetainedSnapshots, snapshot_name
from statestore.snapshots import SHARED, SnapshotPersister, SnapshotRestorer
from statestore.storage.file import FileStorage

PREFIX = "job/tasks/in-0"
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class RetentionHistory(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="eos-retention-", dir=_SCRATCH))
        self.storage = FileStorage(self.root / "storage")
        self.digests = DigestCache()
        self.persister = SnapshotPersister(self.storage, PREFIX, self.digests, incremental=True)
        self.restorer = SnapshotRestorer(self.storage, PREFIX, self.digests)
        self.retain = 3
        self.names = itertools.count(1)
        self.local: dict[str, bytes] = {}  # the model of the task's RocksDB files
        self.committed: Manifest | None = None  # what Kafka's committed offset names
        # Lowering the retention drops older snapshots for good; raising it again cannot
        # bring them back, so the committed lineage is only as deep as the lowest since.
        self.depth = self.retain
        self._new_incarnation()

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the process -----------------------------------------------------------------

    def _new_incarnation(self) -> None:
        self.token = uuid.uuid4().hex[:8]
        self.last_attempted = 0
        self.retention = RetainedSnapshots(self.storage, PREFIX, self.retain, self.restorer.load_manifest,
                                           shared_grace_s=0)
        self._restore()

    def _restore(self, rewind: bool = False) -> None:
        """What a restart (which sweeps) or a rewind (which does not) does: state from the
        committed snapshot."""
        self.completed = self.committed
        self.local = {f.name: self.storage.get_bytes(f"{PREFIX}/{f.key}")
                      for f in (self.committed.files if self.committed else ()) if f.name.endswith(".sst")}
        self.retention.restored(self.committed, sweep_orphans=not rewind)
        self.just_restored = not rewind

    def _local_dir(self, name: str) -> Path:
        directory = self.root / "local" / name
        directory.mkdir(parents=True)
        for file_name, data in self.local.items():
            (directory / file_name).write_bytes(data)
        (directory / "MANIFEST-000001").write_bytes(uuid.uuid4().bytes)
        (directory / "CURRENT").write_bytes(b"MANIFEST-000001\n")
        return directory

    def _attempt(self) -> tuple[Manifest, Path]:
        self.just_restored = False
        n = 1 + max(self.last_attempted, self.completed.checkpoint_id if self.completed else 0)
        self.last_attempted = n
        name = snapshot_name(n, self.token)
        local = self._local_dir(name)
        files, sent = self.persister.upload(local, name, self.completed)
        manifest = Manifest(job="job", task="in-0", topic="in", partition=0, checkpoint_id=n, snapshot=name,
                            worker="w", created_at=time.time(), source_offset=n, column_families=("default",),
                            files=tuple(files), uploaded_bytes=sent, lineage=self.retention.lineage_for_next())
        return manifest, local

    # -- rules -----------------------------------------------------------------------

    @rule(new_files=st.integers(0, 2), compact=st.booleans())
    def write(self, new_files: int, compact: bool) -> None:
        """Records arrive: memtables flush into new SSTs; sometimes a compaction merges."""
        self.just_restored = False
        for _ in range(new_files):
            self.local[f"{next(self.names):06d}.sst"] = uuid.uuid4().bytes * 4
        if compact and len(self.local) >= 2:
            merged = sorted(self.local)[:2]
            data = b"".join(self.local.pop(name) for name in merged)
            self.local[f"{next(self.names):06d}.sst"] = data

    @rule()
    def checkpoint_commits(self) -> None:
        manifest, _ = self._attempt()
        self.persister.write_manifest(manifest)
        self.committed = self.completed = manifest
        self.depth = self.retain
        self.retention.completed(manifest)

    @rule(manifest_written=st.booleans())
    def checkpoint_fails_and_rewinds(self, manifest_written: bool) -> None:
        manifest, _ = self._attempt()
        if manifest_written:
            self.persister.write_manifest(manifest)
        self._restore(rewind=True)

    @rule()
    def commit_is_ambiguous(self) -> None:
        """Kafka committed, the worker could not tell and rewinds to what Kafka says."""
        manifest, _ = self._attempt()
        self.persister.write_manifest(manifest)
        self.committed = manifest
        self.depth = self.retain
        self._restore(rewind=True)

    @rule(uploaded=st.integers(0, 3))
    def crash_mid_upload_and_restart(self, uploaded: int) -> None:
        n = 1 + max(self.last_attempted, self.completed.checkpoint_id if self.completed else 0)
        local = self._local_dir(snapshot_name(n, self.token))
        for path in sorted(local.iterdir())[:uploaded]:
            key = f"{SHARED}/{sha256_file(path)}{path.suffix}"
            self.storage.put_file(f"{PREFIX}/{key}", path)
        self._new_incarnation()

    @rule()
    def crash_and_restart(self) -> None:
        self._new_incarnation()

    @precondition(lambda self: self.committed is not None)
    @rule(retain=st.integers(1, 4))
    def restart_with_other_retention(self, retain: int) -> None:
        self.retain = retain
        self.depth = min(self.depth, retain)
        self._new_incarnation()

    # -- what must always hold -------------------------------------------------------------

    def _retained(self) -> list[Manifest]:
        if self.committed is None:
            return []
        lineage = self.committed.lineage[: self.depth - 1]
        return [self.committed] + [self.restorer.load_manifest(s) for s in lineage]

    @invariant()
    def retained_checkpoints_are_whole(self) -> None:
        for manifest in self._retained():  # load_manifest raises if a retained manifest is gone
            for entry in manifest.files:
                data = self.storage.get_bytes(f"{PREFIX}/{entry.key}")
                assert len(data) == entry.size, f"{entry.key} of {manifest.snapshot} was truncated"

    @invariant()
    def the_next_incremental_checkpoint_builds_on_stored_files(self) -> None:
        if self.completed is not None:
            for entry in self.completed.files:
                assert self.storage.exists(f"{PREFIX}/{entry.key}"), f"{entry.key} is gone"

    @invariant()
    def a_restore_leaves_only_what_retention_keeps(self) -> None:
        """Right after a restore (grace 0) storage holds the retained snapshots and
        their files, and snapshots of attempts newer than the committed one: no leak."""
        if not self.just_restored or self.committed is None:
            return
        referenced = {f.key for m in self.retention.kept for f in m.files}
        kept = {m.snapshot for m in self.retention.kept}
        for key in self.storage.list(PREFIX):
            relative = key[len(PREFIX) + 1:]
            head = relative.split("/", 1)[0]
            if head == SHARED:
                assert relative in referenced, f"{relative} outlived every snapshot that used it"
            elif head not in kept:
                assert int(head.split("-")[1]) > self.committed.checkpoint_id, f"{relative} outlived its retention"


RetentionHistory.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_retention_never_deletes_a_file_a_retained_checkpoint_references = RetentionHistory.TestCase
