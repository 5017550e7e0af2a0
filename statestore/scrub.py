"""Keeping checkpoint storage honest: files a task's latest snapshot references are
checked against storage, and a damaged one is written again from an intact local copy.

Incremental checkpoints reuse the files storage already holds, so a file damaged there
(a disk error, an operator's mistake) would otherwise stay referenced checkpoint after
checkpoint while the worker, restoring from its own intact local copy, never notices;
only another machine restoring the task would. A scrub round costs one listing of the
task's files (sizes: missing and truncated files show at once) and the download of a
bounded number of bytes, taken in turn, whose SHA-256 is compared with the manifest's.
A damaged file is uploaded again from a local copy whose digest is right: the snapshot's
own, or any other local snapshot of the task holding a file of that name (RocksDB never
changes a file once written, and the digest is checked), so a round still mends while a
newer checkpoint has already replaced the snapshot it checks. Otherwise the file is
marked, and the next checkpoint of the task uploads it again from its new local snapshot
instead of reusing it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from statestore.digests import sha256_file
from statestore.manifest import FileEntry, Manifest
from statestore.snapshots import manifest_key
from statestore.storage.base import CheckpointStorage, ObjectNotFound

log = logging.getLogger(__name__)

# Bytes of file content downloaded and hashed per round, taken in turn over the files.
DIGEST_BUDGET_BYTES = 64 << 20


@dataclass
class ScrubRound:
    checked: int = 0
    damaged: list[str] = field(default_factory=list)
    mended: list[str] = field(default_factory=list)


class TaskScrub:
    """Scrubs the files of one task's snapshots, one round at a time."""

    def __init__(self, storage: CheckpointStorage, prefix: str, damaged: set[str],
                 digest_budget_bytes: int = DIGEST_BUDGET_BYTES) -> None:
        self.storage = storage
        self.prefix = prefix
        # Keys (relative to the task's prefix) the next checkpoint must not reuse; shared
        # with the task's SnapshotPersister.
        self.damaged = damaged
        self.digest_budget_bytes = digest_budget_bytes
        self._cursor = 0

    def round(self, manifest: Manifest, local_dirs: list[Path]) -> ScrubRound:
        result = ScrubRound()
        stored = {entry.key[len(self.prefix) + 1:]: entry.size for entry in self.storage.list_entries(self.prefix)}
        files = list(manifest.files)
        bad = [f for f in files if stored.get(f.key) != f.size]
        result.checked = len(files)
        for entry in self._in_turn(files, exclude={f.key for f in bad}):
            if not self._content_intact(entry):
                bad.append(entry)
        if bad and not self.storage.exists(manifest_key(self.prefix, manifest.snapshot)):
            # Retired by retention meanwhile (this worker's, or a new owner's of the task):
            # a manifest is deleted before its files, so its files are no longer wanted.
            return ScrubRound()
        for entry in bad:
            where = self.storage.describe(f"{self.prefix}/{entry.key}")
            state = "missing" if entry.key not in stored else "damaged"
            result.damaged.append(where)
            if self._mend(entry, local_dirs):
                result.mended.append(where)
                log.warning("checkpoint storage: %s of snapshot %s was %s; written again from the intact local copy",
                            where, manifest.snapshot, state)
            else:
                self.damaged.add(entry.key)
                log.warning("checkpoint storage: %s of snapshot %s is %s and no intact local copy is at hand; the "
                            "next checkpoint uploads it again instead of reusing it", where, manifest.snapshot, state)
        return result

    def _in_turn(self, files: list[FileEntry], exclude: set[str]) -> list[FileEntry]:
        """The next files whose content fits this round's budget (at least one)."""
        chosen: list[FileEntry] = []
        budget = self.digest_budget_bytes
        for _ in range(len(files)):
            entry = files[self._cursor % len(files)]
            if chosen and entry.size > budget:
                break
            self._cursor += 1
            if entry.key in exclude:
                continue
            chosen.append(entry)
            budget -= entry.size
        return chosen

    def _content_intact(self, entry: FileEntry) -> bool:
        with tempfile.TemporaryDirectory(prefix="eos-scrub-") as scratch:
            copy = Path(scratch) / "file"
            try:
                self.storage.get_file(f"{self.prefix}/{entry.key}", copy)
            except ObjectNotFound:
                return False
            return sha256_file(copy) == entry.sha256

    def _mend(self, entry: FileEntry, local_dirs: list[Path]) -> bool:
        for local_dir in local_dirs:
            local = local_dir / entry.name
            try:
                intact = local.is_file() and sha256_file(local) == entry.sha256
            except OSError:  # pruned meanwhile
                continue
            if intact:
                self.storage.put_file(f"{self.prefix}/{entry.key}", local)
                self.damaged.discard(entry.key)
                return True
        return False
