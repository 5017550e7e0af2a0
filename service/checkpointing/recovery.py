"""From a committed Kafka offset back to the state that belongs with it.

The committed offset of a task's input partition is the single source of truth: its
metadata names the checkpoint (and snapshot) committed in the same transaction. A
reference that cannot be honoured is a loud error, never an empty start, because an
empty start would silently drop every key's history while offsets moved on.

Asked to (`--fallback-to-older-checkpoint`), recovery instead restores the newest
intact older snapshot of the task and returns the offset to replay from: the task then
reprocesses its input from that snapshot's offset up to the committed one with its
outputs muted (they are committed already), which rebuilds exactly the lost state when
the job's functions are deterministic.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from connectors.changelog import Changelog, changelog_topic
from eos.errors import (
    CorruptSnapshotError,
    PartitionCountChangedError,
    SnapshotLostError,
    SnapshotMissingError,
    SnapshotUnreachableError,
)
from service.runtime.task import CompletedCheckpoint, Task
from statestore.manifest import Manifest
from statestore.retention import checkpoint_id_of
from statestore.snapshots import RestoreStats
from statestore.storage.base import StorageError

log = logging.getLogger(__name__)

METADATA_VERSION = "eos1"


def format_metadata(checkpoint_id: int, snapshot: str | None, savepoint: str | None = None) -> str:
    """`eos1:{checkpoint}:{snapshot}`, plus `:{savepoint}` once the task's history
    descends from a savepoint (so a restart never applies that savepoint again)."""
    text = f"{METADATA_VERSION}:{checkpoint_id}:{snapshot or '-'}"
    return f"{text}:{savepoint}" if savepoint else text


@dataclass(frozen=True)
class CheckpointReference:
    checkpoint_id: int
    snapshot: str | None
    savepoint: str | None = None


def parse_metadata(metadata: str | None) -> CheckpointReference | None:
    if not metadata:
        return None
    parts = metadata.split(":")
    if len(parts) not in (3, 4) or parts[0] != METADATA_VERSION or not parts[1].isdigit():
        return None
    savepoint = parts[3] if len(parts) == 4 and parts[3] else None
    return CheckpointReference(int(parts[1]), None if parts[2] == "-" else parts[2], savepoint)


@dataclass(frozen=True)
class Restored:
    completed: CompletedCheckpoint
    stats: RestoreStats | None
    seconds: float
    # Set after a fallback: the restored state belongs to this (older) offset, and the
    # records from here up to completed.offset must be replayed without outputs.
    replay_from: int | None = None
    # The other inputs' offsets (topic -> offset) the restored state belongs with, from
    # its snapshot or the changelog replayed after it (None: nothing recorded them).
    input_offsets: dict[str, int] | None = None


def restore_task(task: Task, committed: TopicPartition,
                 known: list[Manifest] | None = None, fallback: bool = False,
                 others: list[TopicPartition] | None = None, changelog: Changelog | None = None) -> Restored:
    """Opens the task's state at the checkpoint its committed offset names. The task's
    manifests in `known` (this process wrote or read them) are used without reading
    storage, so a rewind works while checkpoint storage is unreachable. With `fallback`,
    a missing or corrupt snapshot is replaced by the newest intact older one (see the
    module doc). `others` are the committed offsets of the task's other inputs: each
    committed in the same transaction as the lead's, so naming the same checkpoint.
    A snapshot older than the committed checkpoint is brought up to it by replaying
    the task's `changelog` from where the snapshot left it."""
    restored = _restore_lead(task, committed, known, fallback, changelog)
    if not others:
        return restored
    if restored.replay_from is not None:
        raise SnapshotMissingError(
            f"{task.id}: falling back to an older checkpoint is not supported for a task with several inputs "
            f"({', '.join(i.topic for i in task.inputs)})")
    completed = restored.completed
    offsets = tuple((tp.topic, _other_offset(task, completed, tp, restored.input_offsets)) for tp in others)
    return Restored(dataclasses.replace(completed, other_offsets=offsets), restored.stats, restored.seconds)


def _other_offset(task: Task, completed: CompletedCheckpoint, committed: TopicPartition,
                  recorded: dict[str, int] | None) -> int | None:
    """Where another input of the task continues: its committed offset, which must
    belong to the lead's checkpoint (and agree with its manifest)."""
    where = f"{task.id}: topic {committed.topic!r} partition {committed.partition}"
    if committed.offset < 0:
        return None
    reference = parse_metadata(committed.metadata)
    if completed.offset is None or reference is None:
        raise CorruptSnapshotError(
            f"{where} has committed offset {committed.offset} (metadata {committed.metadata!r}) but the task's lead "
            f"input {task.topic!r} has {'none' if completed.offset is None else 'no checkpoint reference'}: the "
            "inputs of one task always commit together, so these offsets are not this job's")
    if reference.checkpoint_id != completed.checkpoint_id:
        raise CorruptSnapshotError(
            f"{where} was committed with checkpoint {reference.checkpoint_id}, the lead input with "
            f"{completed.checkpoint_id}: the inputs of one task always commit together")
    if recorded is not None and recorded.get(committed.topic) != committed.offset:
        raise CorruptSnapshotError(
            f"the state of {task.id} (snapshot {completed.manifest.snapshot if completed.manifest else '-'}) "
            f"records offset {recorded.get(committed.topic)} for {committed.topic!r}, but offset "
            f"{committed.offset} is committed")
    return committed.offset


def _restore_lead(task: Task, committed: TopicPartition, known: list[Manifest] | None,
                  fallback: bool, changelog: Changelog | None) -> Restored:
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
    recorded: dict[str, int] | None = None
    if task.state is not None:
        if reference.snapshot is None:
            log.warning("%s: committed offset %d carries no state snapshot (written with "
                        "checkpoints disabled); its state starts EMPTY", task.id, committed.offset)
        else:
            try:
                manifest = next((m for m in known or () if m.snapshot == reference.snapshot), None) \
                    or task.state.restorer.load_manifest(reference.snapshot)
                _check_manifest(manifest, task, committed.offset, reference)
                _check_partition_count(manifest, task)
                stats = task.state.open(manifest)
                recorded = dict(manifest.input_offsets)
                if manifest.checkpoint_id < reference.checkpoint_id:
                    recorded = _replay_changelog(task, manifest, committed.offset, reference, changelog)
            except SnapshotLostError as exc:  # a store out of reach is not a lost snapshot: no fallback
                if not fallback:
                    raise
                return _fall_back(task, committed, reference, manifest, exc, began)
        if manifest is None:
            stats = task.state.open(None)
    elapsed = time.monotonic() - began
    if manifest is not None:
        log.info("restored %s from checkpoint %d (%s) in %.3fs: %d files, %d reused locally, "
                 "%d downloaded", task.id, reference.checkpoint_id, reference.snapshot, elapsed,
                 stats.files, stats.reused_local, stats.downloaded)
    return Restored(CompletedCheckpoint(reference.checkpoint_id, committed.offset, manifest,
                                        savepoint=reference.savepoint), stats, elapsed, input_offsets=recorded)


def _replay_changelog(task: Task, manifest: Manifest, offset: int, reference: CheckpointReference,
                      changelog: Changelog | None) -> dict[str, int]:
    """Brings the state opened from `manifest` up to the committed checkpoint with the
    changes later checkpoints logged; returns the other inputs' offsets they recorded."""
    if changelog is None:
        raise SnapshotMissingError(f"{task.id}: snapshot {manifest.snapshot} is older than the committed "
                                   f"checkpoint {reference.checkpoint_id}, and no changelog reader was given")
    topic = changelog_topic(task.state.job, task.stage.id)
    replayed = changelog.replay(topic, task.partition, manifest.changelog_offset, manifest.checkpoint_id,
                                reference.checkpoint_id, task.state.apply_changes)
    if replayed.header.offset != offset:
        raise CorruptSnapshotError(
            f"{task.id}: the changelog's checkpoint {reference.checkpoint_id} records offset "
            f"{replayed.header.offset}, but offset {offset} is committed")
    log.info("%s: replayed %d checkpoints (%d changes) of changelog %s[%d] after snapshot %s in %.3fs",
             task.id, replayed.checkpoints, replayed.entries, topic, task.partition, manifest.snapshot,
             replayed.seconds)
    return {other: at for other, at in replayed.header.others if at is not None}


def _fall_back(task: Task, committed: TopicPartition, reference: CheckpointReference,
               broken: Manifest | None, cause: SnapshotLostError, began: float) -> Restored:
    """Restores the newest older snapshot that is intact. The broken manifest's lineage
    (its retained predecessors) is tried first; without a readable manifest, every
    older manifest in storage is a candidate, newest first."""
    log.warning("%s: %s; falling back to an older checkpoint (--fallback-to-older-checkpoint)",
                task.id, cause)
    restorer = task.state.restorer
    if broken is not None:
        # A snapshot the changelog continued may itself be intact (its replay failed).
        intact_maybe = [broken.snapshot] if broken.checkpoint_id < reference.checkpoint_id else []
        candidates = intact_maybe + list(broken.lineage)
    else:
        try:
            stored = restorer.stored_snapshots()
        except StorageError as exc:
            raise SnapshotUnreachableError(f"{cause}; cannot list older snapshots: {exc}") from exc
        candidates = [name for name in reversed(stored)
                      if (checkpoint_id_of(name) or 0) < reference.checkpoint_id]
    failures = []
    for snapshot in candidates:
        try:
            older = restorer.load_manifest(snapshot)
            _check_older(older, task, committed.offset, reference)
            stats = task.state.open(older)
        except SnapshotLostError as exc:
            log.warning("%s: older snapshot %s cannot be restored either: %s", task.id, snapshot, exc)
            failures.append(f"{snapshot}: {exc}")
            continue
        elapsed = time.monotonic() - began
        log.warning("%s: restored older checkpoint %d (%s) at offset %d in %.3fs; replaying offsets "
                    "%d..%d without emitting outputs", task.id, older.checkpoint_id, snapshot,
                    older.source_offset, elapsed, older.source_offset, committed.offset - 1)
        return Restored(CompletedCheckpoint(reference.checkpoint_id, committed.offset, older,
                                            savepoint=reference.savepoint, snapshot_due=True), stats,
                        elapsed, replay_from=older.source_offset)
    if failures:
        tried = "; ".join(failures)
    elif broken is not None:
        tried = "its manifest lists no retained older snapshot (--checkpoints-retained 1?)"
    else:
        tried = "there is no older snapshot of this task in storage"
    raise SnapshotMissingError(f"{cause}; no older checkpoint to fall back to ({tried})") from cause


def _check_older(older: Manifest, task: Task, offset: int, reference: CheckpointReference) -> None:
    """An older snapshot must be this task's, from before the committed checkpoint."""
    if (older.topic, older.partition) != (task.topic, task.partition):
        raise CorruptSnapshotError(f"snapshot {older.snapshot} belongs to {older.topic}[{older.partition}]")
    if older.checkpoint_id >= reference.checkpoint_id or older.source_offset > offset:
        raise CorruptSnapshotError(
            f"snapshot {older.snapshot} (checkpoint {older.checkpoint_id}, offset {older.source_offset}) "
            f"is not older than the committed checkpoint {reference.checkpoint_id} at offset {offset}")


def _check_manifest(manifest: Manifest, task: Task, offset: int, reference: CheckpointReference) -> None:
    """The manifest must describe exactly the checkpoint the offset was committed with, or
    an earlier one of its history that a changelog continues (the replay then checks
    that it ends at the committed offset)."""
    problems = []
    if (manifest.topic, manifest.partition) != (task.topic, task.partition):
        problems.append(f"it belongs to {manifest.topic}[{manifest.partition}]")
    if manifest.checkpoint_id > reference.checkpoint_id:
        problems.append(f"it is checkpoint {manifest.checkpoint_id}, after {reference.checkpoint_id}")
    elif manifest.checkpoint_id < reference.checkpoint_id:
        if manifest.changelog_offset is None:
            problems.append(f"it is checkpoint {manifest.checkpoint_id}, not {reference.checkpoint_id}, and no "
                            "changelog continues it")
        elif manifest.source_offset > offset:
            problems.append(f"it records offset {manifest.source_offset}, past the committed offset {offset}")
    elif manifest.source_offset != offset:
        problems.append(f"it records offset {manifest.source_offset}, but offset {offset} is committed")
    if problems:
        raise CorruptSnapshotError(
            f"snapshot {reference.snapshot} does not match the committed offset of {task.id}: "
            + "; ".join(problems))


def _check_partition_count(manifest: Manifest, task: Task) -> None:
    """Keyed state is split by partition: once a topic has more (or fewer) partitions,
    keys land on other partitions than their state, and every result would be wrong."""
    recorded, now = manifest.topic_partitions, task.topic_partitions
    if recorded is None or now is None or recorded == now:
        return
    raise PartitionCountChangedError(
        f"topic {task.topic!r} has {now} partitions, but the state of task {task.id} was checkpointed "
        f"(checkpoint {manifest.checkpoint_id}, snapshot {manifest.snapshot}) when it had {recorded}: "
        "keys would no longer meet their state. Restore the partition count, or start the job under a "
        "new --group (and so new repartition topics) to rebuild its state.")
