"""Deleting checkpoint files that no retained checkpoint needs.

Shared SST files are referenced by many manifests, so a file may go only when no
retained manifest lists it. Retention runs only in the task's owner, right after a
successful commit (which proves ownership) or a restore, and never touches snapshots
newer than the one it knows to be complete: those may belong to a concurrent attempt.
"""

from __future__ import annotations

import logging
import time

from eos.errors import SnapshotLostError
from statestore.manifest import Manifest
from statestore.snapshots import SHARED
from statestore.storage.base import CheckpointStorage

log = logging.getLogger(__name__)


def snapshot_name(checkpoint_id: int, token: str) -> str:
    return f"chk-{checkpoint_id:010d}-{token}"


def checkpoint_id_of(snapshot: str) -> int | None:
    parts = snapshot.split("-")
    if len(parts) >= 3 and parts[0] == "chk" and parts[1].isdigit():
        return int(parts[1])
    return None


def referenced_keys(manifests: list[Manifest]) -> set[str]:
    return {f.key for m in manifests for f in m.files}


def drop_snapshot(storage: CheckpointStorage, prefix: str, dropped: Manifest,
                  kept: list[Manifest]) -> int:
    """Deletes one snapshot that fell out of retention, keeping files others still use."""
    still_used = referenced_keys(kept)
    doomed = [f"{prefix}/{f.key}" for f in dropped.files if f.key not in still_used]
    # The manifest goes first, as it was written last: a snapshot whose manifest exists
    # has all its files (the storage scrub relies on it).
    storage.delete([f"{prefix}/{dropped.snapshot}/_manifest.json"])
    storage.delete(doomed)
    return len(doomed) + 1


def sweep(storage: CheckpointStorage, prefix: str, kept: list[Manifest], newest_id: int,
          shared_grace_s: float) -> int:
    """Deletes every snapshot directory up to `newest_id` that is not kept (orphans of
    failed or crashed attempts included), and every shared file no kept manifest lists
    that is older than `shared_grace_s`: a younger one may belong to a checkpoint another
    process is writing right now, whose manifest does not exist yet."""
    keep_snapshots = {m.snapshot for m in kept}
    still_used = referenced_keys(kept)
    doomed = []
    cutoff = time.time() - shared_grace_s
    for entry in storage.list_entries(prefix):
        key = entry.key
        relative = key[len(prefix) + 1:]
        head = relative.split("/", 1)[0]
        if head == SHARED:
            if relative not in still_used and entry.modified < cutoff:
                doomed.append(key)
            continue
        checkpoint_id = checkpoint_id_of(head)
        if checkpoint_id is not None and checkpoint_id <= newest_id and head not in keep_snapshots:
            doomed.append(key)
    if doomed:
        log.info("retention: deleting %d files under %s", len(doomed), prefix)
        storage.delete(doomed)
    return len(doomed)


class RetainedSnapshots:
    """The completed snapshots one task keeps (newest first), and the deletions that
    follow when a new one completes."""

    def __init__(self, storage: CheckpointStorage, prefix: str, retain: int,
                 load_manifest, shared_grace_s: float) -> None:
        self.storage = storage
        self.prefix = prefix
        self.retain = retain
        self._load = load_manifest
        self.shared_grace_s = shared_grace_s
        self.kept: list[Manifest] = []

    def lineage_for_next(self) -> tuple[str, ...]:
        """What the next manifest records as its retained predecessors."""
        return tuple(m.snapshot for m in self.kept[: self.retain - 1])

    def restored(self, manifest: Manifest | None, sweep_orphans: bool = True) -> None:
        """After a restore: re-learn the kept set from the manifest's lineage and, with
        `sweep_orphans`, clear what crashed or failed attempts left behind. Manifests
        already in memory are not read again (a rewind works while storage is down), and
        when a lineage manifest cannot be read for any reason but its absence or damage,
        nothing is swept: the files it lists are unknown and might be deleted."""
        if manifest is None:
            self.kept = []
            return
        in_memory = {m.snapshot: m for m in self.kept}
        kept = [manifest]
        unsure = False
        for snapshot in manifest.lineage[: self.retain - 1]:
            try:
                kept.append(in_memory.get(snapshot) or self._load(snapshot))
            except Exception as exc:  # noqa: BLE001 - anything but a clear loss: be careful
                if isinstance(exc, SnapshotLostError):
                    log.warning("retention: lineage snapshot %s of %s is lost (%s)",
                                snapshot, self.prefix, exc)
                    continue
                unsure = True
                log.warning("retention: lineage snapshot %s of %s is unreadable (%s); "
                            "not sweeping until it is", snapshot, self.prefix, exc)
        self.kept = kept
        if unsure or not sweep_orphans:
            return
        try:
            sweep(self.storage, self.prefix, kept, manifest.checkpoint_id, self.shared_grace_s)
        except OSError as exc:
            log.warning("retention sweep of %s failed (will retry later): %s", self.prefix, exc)

    def completed(self, manifest: Manifest) -> None:
        """After a commit: keep the new snapshot, delete those that fell out."""
        self.kept.insert(0, manifest)
        dropped, self.kept = self.kept[self.retain:], self.kept[: self.retain]
        for old in dropped:
            try:
                drop_snapshot(self.storage, self.prefix, old, self.kept)
            except OSError as exc:
                log.warning("retention: could not delete snapshot %s (%s)", old.snapshot, exc)
