"""A checkpoint's part in the changelog (`--snapshot-interval`): which tasks log their
changes instead of a snapshot, the records they log, where a snapshot continues the
changelog, and what a committed snapshot lets go (docs/architecture.md, "Changelog
state")."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import TopicPartition

from connectors.changelog import Changelog, changelog_topic
from service.runtime.task import Task
from statestore.changelog import encode_parts
from statestore.manifest import Manifest
from statestore.task_state import WrittenCapture

# (topic, partition, key, value)
ChangelogRecord = tuple[str, int, bytes, bytes]


class CheckpointChangelog:
    def __init__(self, changelog: Changelog, group: str, snapshot_interval_s: float) -> None:
        self.changelog = changelog
        self.group = group
        self.snapshot_interval_s = snapshot_interval_s

    def snapshot_due(self, task: Task) -> bool:
        """Whether the checkpoint snapshots the task's state rather than logging its
        changes: the changelog needs a snapshot to continue (none yet, one written without
        a changelog, or state rebuilt by replaying input), and replays grow with the time
        since the last one."""
        base = task.completed.manifest
        return (base is None or base.changelog_offset is None or task.completed.snapshot_due
                or time.time() - base.created_at >= self.snapshot_interval_s)

    def partition(self, task: Task) -> TopicPartition:
        return TopicPartition(changelog_topic(self.group, task.stage.id), task.partition)

    def continued_from(self, tasks: list[Task]) -> dict[str, int]:
        """Where each snapshotted task's changelog continues: its end now, which every
        earlier checkpoint's changes lie below (they committed before this checkpoint
        began) and the next one's above."""
        if not tasks:
            return {}
        partitions = {t.id: self.partition(t) for t in tasks}
        ends = self.changelog.written_ends(list(partitions.values()))
        return {tid: ends[(tp.topic, tp.partition)] for tid, tp in partitions.items()}

    def records(self, checkpoint_id: int, tasks: list[Task], barriers: dict[str, Any],
                written: dict[str, WrittenCapture]) -> list[ChangelogRecord]:
        """Each task's changes, with its input offsets at the barrier, for its partition
        of its stage's changelog."""
        records = []
        for task in tasks:
            barrier = barriers[task.id]
            where = self.partition(task)
            for key, value in encode_parts(checkpoint_id, barrier.offset, barrier.others, written[task.id].changes):
                records.append((where.topic, where.partition, key, value))
        return records

    def trim(self, task: Task, manifest: Manifest) -> None:
        """After the snapshot's commit: what it holds goes from the changelog."""
        if manifest.changelog_offset is not None:
            partition = self.partition(task)
            partition.offset = manifest.changelog_offset
            self.changelog.trim([partition])
