"""From a committed Kafka offset back to the state that belongs with it.

The committed offset of a task's input partition is the single source of truth: its
metadata names the checkpoint (and snapshot) committed in the same transaction. A
reference that cannot be honoured is a loud error, never an empty start, because an
empty start would silently drop every key's history while offsets moved on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from service.errors import CorruptSnapshotError, SnapshotMissingError
from service.task import CompletedCheckpoint, Task
from statestore.manifest import Manifest
from statestore.snapshots import RestoreStats

log = logging.getLogger(__name__)

METADATA_VERSION = "eos1"


def format_metadata(checkpoint_id: int, snapshot: str | None) -> str:
    return f"{METADATA_VERSION}:{checkpoint_id}:{snapshot or '-'}"


@dataclass(frozen=True)
class CheckpointReference:
    checkpoint_id: int
    snapshot: str | None


def parse_metadata(metadata: str | None) -> CheckpointReference | None:
    if not metadata:
        return None
    parts = metadata.split(":")
    if len(parts) != 3 or parts[0] != METADATA_VERSION or not parts[1].isdigit():
        return None
    return CheckpointReference(int(parts[1]), None if parts[2] == "-" else parts[2])


@dataclass(frozen=True)
class Restored:
    completed: CompletedCheckpoint
    stats: RestoreStats | None
    seconds: float


def restore_task(task: Task, committed: TopicPartition,
                 known: list[Manifest] | None = None) -> Restored:
    """Opens the task's state at the checkpoint its committed offset names. The task's
    manifests in `known` (this process wrote or read them) are used without reading
    storage, so a rewind works while checkpoint storage is unreachable."""
    began = time.monotonic()
    where = f"topic {task.topic!r} partition {task.partition}"
    if committed.offset < 0:
        if task.state is not None:
            task.state.open(None)
        return Restored(CompletedCheckpoint(0, None, None), None, time.monotonic() - began)
    reference = parse_metadata(committed.metadata)
    if reference is None:
        if task.stateful:
            raise SnapshotMissingError(
                f"{where} has committed offset {committed.offset} without a checkpoint reference "
                f"(metadata {committed.metadata!r}): these offsets were not committed by this job, "
                "so the state that belongs with them is unknown. Run with a new --group, or "
                "delete the group's offsets to start over.")
        return Restored(CompletedCheckpoint(0, committed.offset, None), None, time.monotonic() - began)
    manifest: Manifest | None = None
    stats = None
    if task.state is not None:
        if reference.snapshot is not None:
            manifest = next((m for m in known or () if m.snapshot == reference.snapshot), None) \
                or task.state.restorer.load_manifest(reference.snapshot)
            _check_manifest(manifest, task, committed.offset, reference)
        stats = task.state.open(manifest)
    elapsed = time.monotonic() - began
    if manifest is not None:
        log.info("restored %s from checkpoint %d (%s) in %.3fs: %d files, %d reused locally, "
                 "%d downloaded", task.id, reference.checkpoint_id, reference.snapshot, elapsed,
                 stats.files, stats.reused_local, stats.downloaded)
    return Restored(CompletedCheckpoint(reference.checkpoint_id, committed.offset, manifest), stats, elapsed)


def _check_manifest(manifest: Manifest, task: Task, offset: int, reference: CheckpointReference) -> None:
    """The manifest must describe exactly the checkpoint the offset was committed with."""
    problems = []
    if (manifest.topic, manifest.partition) != (task.topic, task.partition):
        problems.append(f"it belongs to {manifest.topic}[{manifest.partition}]")
    if manifest.checkpoint_id != reference.checkpoint_id:
        problems.append(f"it is checkpoint {manifest.checkpoint_id}, not {reference.checkpoint_id}")
    if manifest.source_offset != offset:
        problems.append(f"it records offset {manifest.source_offset}, but offset {offset} is committed")
    if problems:
        raise CorruptSnapshotError(
            f"snapshot {reference.snapshot} does not match the committed offset of {task.id}: "
            + "; ".join(problems))
