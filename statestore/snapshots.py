"""Moving task snapshots between the local disk and checkpoint storage.

Persisting is incremental by default: files are content-addressed under the task's
`shared/` prefix and uploaded only when the previous manifest does not already hold
them. The manifest goes last.

Restoring verifies every byte against the manifest's digests, preferring intact local
copies (hard-linked, so a restart on the same machine downloads only what is missing).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Executor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from eos.errors import CheckpointTimeoutError, CorruptSnapshotError, SnapshotMissingError, SnapshotUnreachableError
from statestore.digests import DigestCache, sha256_file
from statestore.manifest import MANIFEST_NAME, FileEntry, Manifest, ManifestError
from statestore.storage.base import CheckpointStorage, ObjectNotFound, StorageError

log = logging.getLogger(__name__)

SHARED = "shared"


def task_prefix(job: str, task: str) -> str:
    return f"{job}/tasks/{task}"


def manifest_key(prefix: str, snapshot: str) -> str:
    return f"{prefix}/{snapshot}/{MANIFEST_NAME}"


@dataclass(frozen=True)
class RestoreStats:
    files: int
    reused_local: int
    downloaded: int
    downloaded_bytes: int
    seconds: float


@dataclass(frozen=True)
class PendingUpload:
    key: str  # relative to the task's prefix
    path: Path
    size: int


@dataclass(frozen=True)
class UploadPlan:
    """What one snapshot consists of and which of its files storage lacks."""

    snapshot: str
    entries: tuple[FileEntry, ...]
    uploads: tuple[PendingUpload, ...]

    @property
    def upload_bytes(self) -> int:
        return sum(u.size for u in self.uploads)


class SnapshotPersister:
    """Uploads local RocksDB checkpoints of one task and writes their manifests.

    Incremental: every file is content-addressed under `shared/` and uploaded only when
    the previous manifest does not list its digest. RocksDB never changes a file once
    written (SSTs, OPTIONS) and rewrites small ones (MANIFEST, CURRENT) under the same
    name, so addressing by content rather than by name is what makes files shareable;
    a checkpoint with few changes uploads its new SSTs and one small MANIFEST file.
    Full: every file goes into the snapshot's own directory, every time.
    """

    def __init__(self, storage: CheckpointStorage, prefix: str, digests: DigestCache,
                 incremental: bool = True) -> None:
        self.storage = storage
        self.prefix = prefix
        self.digests = digests
        self.incremental = incremental
        # Shared files the scrub found damaged in storage (statestore/scrub.py): never
        # reused, uploaded again by the next checkpoint that needs them.
        self.damaged: set[str] = set()

    def plan(self, local_dir: Path, snapshot: str, previous: Manifest | None) -> UploadPlan:
        known = set()
        if previous is not None and self.incremental:
            known = {f.key for f in previous.files if f.key.startswith(SHARED + "/")} - self.damaged
        entries, uploads = [], []
        for path in sorted(local_dir.iterdir()):
            size = path.stat().st_size
            digest = self.digests.digest(path)
            key = f"{SHARED}/{digest}{path.suffix}" if self.incremental else f"{snapshot}/{path.name}"
            if key not in known:
                uploads.append(PendingUpload(key, path, size))
                known.add(key)  # two files with the same content: one upload
            entries.append(FileEntry(name=path.name, key=key, size=size, sha256=digest))
        return UploadPlan(snapshot, tuple(entries), tuple(uploads))

    def upload_calls(self, plan: UploadPlan) -> list[Callable[[], None]]:
        return [partial(self._upload, u) for u in plan.uploads]

    def _upload(self, upload: PendingUpload) -> None:
        self.storage.put_file(f"{self.prefix}/{upload.key}", upload.path)
        self.damaged.discard(upload.key)

    def upload(self, local_dir: Path, snapshot: str, previous: Manifest | None,
               deadline: float | None = None, pool: Executor | None = None) -> tuple[list[FileEntry], int]:
        """Uploads what storage does not hold yet; returns the file entries and bytes sent.
        Past `deadline` (time.monotonic()) it stops with CheckpointTimeoutError."""
        plan = self.plan(local_dir, snapshot, previous)
        run_all(self.upload_calls(plan), pool, deadline, f"snapshot {snapshot}")
        return list(plan.entries), plan.upload_bytes

    def write_manifest(self, manifest: Manifest,
                       before_write: Callable[[str, bytes], None] | None = None) -> None:
        key = manifest_key(self.prefix, manifest.snapshot)
        data = manifest.to_bytes()
        if before_write is not None:
            before_write(key, data)
        self.storage.put_atomic(key, data)


def run_all(calls: list[Callable[[], None]], pool: Executor | None, deadline: float | None, what: str) -> None:
    """Runs storage calls, in parallel on `pool` when given, all within `deadline`.

    Storage round trips, not bandwidth, dominate small checkpoints on an object store,
    so their number in sequence is what a checkpoint costs. On a timeout the calls
    still running are abandoned: whatever they write is unreferenced and retention
    removes it."""
    if pool is None or len(calls) <= 1:
        for call in calls:
            _check_deadline(deadline, what)
            call()
        _check_deadline(deadline, what)
        return
    futures = [pool.submit(call) for call in calls]
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    done, pending = wait(futures, timeout=timeout, return_when=FIRST_EXCEPTION)
    for future in done:
        if future.exception() is not None:
            for other in pending:
                other.cancel()
            raise future.exception()
    if pending:
        for other in pending:
            other.cancel()
        raise CheckpointTimeoutError(f"{what} was not in checkpoint storage before the checkpoint timeout")


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise CheckpointTimeoutError(f"{what} was not in checkpoint storage before the checkpoint timeout")


class SnapshotRestorer:
    """Reads manifests and rebuilds a task's database directory from a snapshot."""

    def __init__(self, storage: CheckpointStorage, prefix: str, digests: DigestCache) -> None:
        self.storage = storage
        self.prefix = prefix
        self.digests = digests

    def load_manifest(self, snapshot: str) -> Manifest:
        key = manifest_key(self.prefix, snapshot)
        where = self.storage.describe(key)
        try:
            data = self.storage.get_bytes(key)
        except ObjectNotFound:
            raise SnapshotMissingError(
                f"snapshot {snapshot} is referenced by the committed offsets but its manifest "
                f"{where} does not exist; refusing to start with empty state") from None
        except StorageError as exc:
            raise SnapshotUnreachableError(f"cannot read manifest {where}: {exc}") from exc
        try:
            return Manifest.from_bytes(data, where)
        except ManifestError as exc:
            raise CorruptSnapshotError(str(exc)) from None

    def stored_snapshots(self) -> list[str]:
        """Names of the snapshots whose manifest exists in storage, oldest first."""
        suffix = "/" + MANIFEST_NAME
        names = []
        for key in self.storage.list(self.prefix):
            relative = key[len(self.prefix) + 1:]
            if relative.endswith(suffix) and relative.count("/") == 1:
                names.append(relative[: -len(suffix)])
        return sorted(names)

    def restore(self, manifest: Manifest, target: Path, local_dirs: list[Path]) -> RestoreStats:
        began = time.monotonic()
        local_index: dict[tuple[str, int], list[Path]] = {}
        for directory in local_dirs:
            for path in directory.iterdir():
                local_index.setdefault((path.name, path.stat().st_size), []).append(path)
        reused = downloaded = downloaded_bytes = 0
        for entry in manifest.files:
            dest = target / entry.name
            if self._reuse_local(entry, dest, local_index.get((entry.name, entry.size), [])):
                reused += 1
                continue
            self._download(entry, dest)
            downloaded += 1
            downloaded_bytes += entry.size
        return RestoreStats(len(manifest.files), reused, downloaded, downloaded_bytes,
                            time.monotonic() - began)

    def _reuse_local(self, entry: FileEntry, dest: Path, candidates: list[Path]) -> bool:
        for candidate in candidates:
            try:
                if self.digests.digest(candidate) != entry.sha256:
                    continue
                if candidate.suffix == ".sst":
                    os.link(candidate, dest)
                else:
                    shutil.copyfile(candidate, dest)
                    self.digests.remember(dest, entry.sha256)
                return True
            except OSError:
                continue
        return False

    def _download(self, entry: FileEntry, dest: Path) -> None:
        key = f"{self.prefix}/{entry.key}"
        where = self.storage.describe(key)
        try:
            self.storage.get_file(key, dest)
        except ObjectNotFound:
            raise SnapshotMissingError(
                f"file {where} listed in the snapshot's manifest is missing from checkpoint storage"
            ) from None
        except StorageError as exc:
            raise SnapshotUnreachableError(f"cannot download {where}: {exc}") from exc
        actual_size = dest.stat().st_size
        digest = sha256_file(dest)
        if actual_size != entry.size or digest != entry.sha256:
            dest.unlink(missing_ok=True)
            raise CorruptSnapshotError(
                f"file {where} is corrupt: expected {entry.size} bytes with sha256 "
                f"{entry.sha256[:16]}..., found {actual_size} bytes with sha256 {digest[:16]}...")
        self.digests.remember(dest, digest)
