"""What checkpoint storage holds, read back for people: every task's snapshots with
their state (complete, damaged, partial), and a verification that recomputes every
checksum a manifest records.

Layout, as the snapshot persister writes it:

    {job}/tasks/{task}/shared/{sha256}.sst          SST files, shared between snapshots
    {job}/tasks/{task}/chk-{id}-{token}/...         a snapshot's own files
    {job}/tasks/{task}/chk-{id}-{token}/_manifest.json   written last: the snapshot exists

A snapshot directory without a manifest is the leftover of an attempt that crashed or
failed before its manifest was written (retention removes it later); a manifest that
fails to parse or fails its own digest is damaged.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from statestore.digests import sha256_file
from statestore.manifest import MANIFEST_NAME, FileEntry, Manifest, ManifestError
from statestore.retention import checkpoint_id_of
from statestore.snapshots import SHARED, task_prefix
from statestore.storage.base import CheckpointStorage, ObjectNotFound, StorageError, StoredObject

log = logging.getLogger(__name__)

COMPLETE = "complete"
DAMAGED = "damaged"
PARTIAL = "partial"


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot directory of a task, as found in storage."""

    snapshot: str
    checkpoint_id: int | None
    status: str
    manifest: Manifest | None = None
    problem: str | None = None
    own_bytes: int = 0  # bytes stored under the snapshot's own directory
    modified: float = 0.0


@dataclass
class TaskCatalog:
    """Everything stored for one task of one job."""

    job: str
    task: str
    snapshots: list[SnapshotRecord] = field(default_factory=list)
    shared: dict[str, StoredObject] = field(default_factory=dict)  # key relative to the task

    @property
    def prefix(self) -> str:
        return task_prefix(self.job, self.task)

    @property
    def newest_complete(self) -> SnapshotRecord | None:
        complete = [s for s in self.snapshots if s.status == COMPLETE]
        return complete[-1] if complete else None

    def retained(self) -> set[str]:
        """The newest complete snapshot and the predecessors its lineage keeps."""
        newest = self.newest_complete
        if newest is None:
            return set()
        return {newest.snapshot, *newest.manifest.lineage}

    def referenced_shared(self) -> set[str]:
        return {f.key for s in self.snapshots if s.manifest is not None for f in s.manifest.files
                if f.key.startswith(SHARED + "/")}

    def unreferenced_shared(self) -> list[str]:
        """Shared files no readable manifest lists (a crashed attempt's uploads)."""
        used = self.referenced_shared()
        return sorted(key for key in self.shared if key not in used)

    def find(self, selector: str | int | None) -> SnapshotRecord | None:
        """A snapshot by name or checkpoint id (the newest of that id); None: newest complete."""
        if selector is None:
            return self.newest_complete
        text = str(selector)
        if text.isdigit():
            matches = [s for s in self.snapshots if s.checkpoint_id == int(text)]
            complete = [s for s in matches if s.status == COMPLETE]
            return (complete or matches or [None])[-1]
        return next((s for s in self.snapshots if s.snapshot == text), None)


def scan(storage: CheckpointStorage, job: str | None = None, task: str | None = None) -> list[TaskCatalog]:
    """Reads every task's listing (and manifests) under `job` (all jobs when None)."""
    grouped: dict[tuple[str, str], dict[str, list[tuple[str, StoredObject]]]] = {}
    for entry in storage.list_entries(job or ""):
        parts = entry.key.split("/")
        if len(parts) < 5 or parts[1] != "tasks":
            continue
        job_name, task_name, head = parts[0], parts[2], parts[3]
        if task is not None and task_name != task:
            continue
        grouped.setdefault((job_name, task_name), {}).setdefault(head, []).append(
            ("/".join(parts[4:]), entry))
    catalogs = []
    for (job_name, task_name), heads in sorted(grouped.items()):
        catalog = TaskCatalog(job_name, task_name)
        for head, entries in sorted(heads.items()):
            if head == SHARED:
                catalog.shared = {f"{SHARED}/{rest}": e for rest, e in entries}
            elif checkpoint_id_of(head) is not None:
                catalog.snapshots.append(_read_snapshot(storage, catalog.prefix, head, entries))
        catalog.snapshots.sort(key=lambda s: (s.checkpoint_id or 0, s.modified))
        catalogs.append(catalog)
    return catalogs


def _read_snapshot(storage: CheckpointStorage, prefix: str, snapshot: str,
                   entries: list[tuple[str, StoredObject]]) -> SnapshotRecord:
    own_bytes = sum(e.size for _, e in entries)
    modified = max(e.modified for _, e in entries)
    checkpoint_id = checkpoint_id_of(snapshot)
    if MANIFEST_NAME not in {rest for rest, _ in entries}:
        return SnapshotRecord(snapshot, checkpoint_id, PARTIAL, problem="no manifest: an attempt that "
                              "did not finish", own_bytes=own_bytes, modified=modified)
    key = f"{prefix}/{snapshot}/{MANIFEST_NAME}"
    try:
        manifest = Manifest.from_bytes(storage.get_bytes(key), storage.describe(key))
    except ManifestError as exc:
        return SnapshotRecord(snapshot, checkpoint_id, DAMAGED, problem=str(exc), own_bytes=own_bytes,
                              modified=modified)
    except ObjectNotFound:
        return SnapshotRecord(snapshot, checkpoint_id, PARTIAL, problem="manifest vanished while listing",
                              own_bytes=own_bytes, modified=modified)
    return SnapshotRecord(snapshot, manifest.checkpoint_id, COMPLETE, manifest=manifest,
                          own_bytes=own_bytes, modified=modified)


@dataclass(frozen=True)
class FileProblem:
    """A file a manifest lists that is not what the manifest says."""

    location: str  # path or URL, as storage describes it
    reason: str
    snapshots: tuple[str, ...]  # every checked snapshot that lists it


@dataclass
class VerifyReport:
    snapshots: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # damaged manifests (location: reason)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.damaged


def verify(storage: CheckpointStorage, catalogs: Iterable[TaskCatalog],
           select: Callable[[TaskCatalog], list[SnapshotRecord]] | None = None,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Downloads every file the selected snapshots list (each distinct file once) and
    checks its size and SHA-256 against the manifest. `progress` is told bytes checked."""
    report = VerifyReport()
    with tempfile.TemporaryDirectory(prefix="eos-verify-") as scratch:
        target = Path(scratch) / "file"
        for catalog in catalogs:
            chosen = select(catalog) if select is not None else catalog.snapshots
            users: dict[FileEntry, list[str]] = {}
            for record in chosen:
                if record.status == DAMAGED:
                    where = storage.describe(f"{catalog.prefix}/{record.snapshot}/{MANIFEST_NAME}")
                    report.damaged.append(f"{where}: {record.problem}")
                if record.manifest is None:
                    continue
                report.snapshots += 1
                for entry in record.manifest.files:
                    users.setdefault(entry, []).append(record.snapshot)
            for entry, snapshots in users.items():
                key = f"{catalog.prefix}/{entry.key}"
                reason = _check_file(storage, key, entry, target)
                report.files += 1
                report.bytes += entry.size
                if progress is not None:
                    progress(entry.size)
                if reason is not None:
                    report.problems.append(FileProblem(storage.describe(key), reason, tuple(snapshots)))
    return report


def _check_file(storage: CheckpointStorage, key: str, entry: FileEntry, target: Path) -> str | None:
    try:
        storage.get_file(key, target)
    except ObjectNotFound:
        return "missing"
    except StorageError as exc:
        return f"unreadable: {exc}"
    try:
        size = target.stat().st_size
        digest = sha256_file(target)
    finally:
        target.unlink(missing_ok=True)
    if size != entry.size:
        return f"size {size} bytes, manifest says {entry.size}"
    if digest != entry.sha256:
        return f"sha256 {digest[:16]}..., manifest says {entry.sha256[:16]}..."
    return None
