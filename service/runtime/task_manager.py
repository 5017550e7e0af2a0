"""Owns the worker's tasks: creates and restores them on assignment, hands them to a
checkpoint before release on revocation, drops them on loss, rewinds them after an
aborted transaction.

It is the rebalance listener's only delegate (Kafka Streams' TaskManager role), kept
small by leaving checkpoint mechanics to the coordinator and state to TaskState.

Every (re)start of tasks bumps `task_starts`: the worker compares it around each consume
call, because a rebalance or rewind served inside that call can leave records fetched
for the old position in the very batch it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import TopicPartition

from connectors.kafka_sink import OutputCommitter
from connectors.kafka_source import KafkaSource
from eos.errors import SnapshotMissingError
from service.checkpointing.recovery import restore_task
from service.job.planner import Plan
from service.membership.group import DepartedWorkerFencer
from service.monitoring.metrics import WorkerMetrics
from service.runtime.config import WorkerConfig
from service.runtime.error_policy import ErrorHandler
from service.runtime.task import Task, task_id
from service.runtime.topics import PartitionCounts
from statestore.digests import DigestCache
from statestore.manifest import Manifest
from statestore.retention import RetainedSnapshots
from statestore.snapshots import task_prefix
from statestore.state_dir import TaskDirectory
from statestore.storage.base import CheckpointStorage
from statestore.task_state import TaskState

log = logging.getLogger(__name__)

COMMITTED_TIMEOUT_S = 30.0

class TaskManager:
    def __init__(self, plan: Plan, config: WorkerConfig, source: KafkaSource,
                 committer: OutputCommitter, storage: CheckpointStorage, token: str,
                 metrics: WorkerMetrics, errors: ErrorHandler, partition_counts: PartitionCounts,
                 fencer: DepartedWorkerFencer | None = None) -> None:
        self.plan = plan
        self.config = config
        self.source = source
        self.committer = committer
        self.storage = storage
        self.token = token
        self.metrics = metrics
        self.errors = errors
        self.fencer = fencer
        self.partition_counts = partition_counts
        self.digests = DigestCache()
        self.tasks: dict[tuple[str, int], Task] = {}
        self.retention: dict[tuple[str, int], RetainedSnapshots] = {}
        # Set by the worker: runs a checkpoint of every task (before partitions go).
        self.checkpoint_all: Callable[[str], None] = lambda reason: None
        self.on_error: Callable[[str], None] = lambda message: None
        # True once the first assignment (even an empty one) is restored.
        self.ready = False
        self.rewinds = 0
        # How a task gets back to its committed state (a resumed savepoint wraps it).
        self.restore_task = restore_task
        self.task_starts = 0
        # Tasks being revoked while their last checkpoint runs: a failed checkpoint
        # rewinds the others, while these are released as they are.
        self._releasing: set[tuple[str, int]] = set()
        # A pending transactional offset commit (of a worker that died between sending
        # offsets and committing) keeps committed offsets unreadable until it is aborted.
        self.committed_timeout_s = max(30.0, config.transaction_timeout_s + 15.0)

    # -- rebalance listener -------------------------------------------------------

    def on_assign(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        began = time.monotonic()
        if self.fencer is not None:
            self.fencer.after_rebalance()
        if not self.committer.started:
            # Only now, inside the first assignment: see service/membership/group.py for why
            # this ordering keeps remaining workers from fencing a new instance.
            self.committer.start()
        if not partitions:  # a rebalance that gave this worker nothing (new)
            self.ready = True
            return []
        # Restoring may take long (downloads); commit what the open transaction holds
        # first, so it cannot outlive its timeout while new tasks restore.
        self.checkpoint_all("assign")
        counts = self.partition_counts.of({tp.topic for tp in partitions})
        new = [self._create(tp.topic, tp.partition, counts[tp.topic]) for tp in partitions]
        positioned = self._restore(new)
        self.metrics.labels(self.metrics.recovery_duration).set(time.monotonic() - began)
        self.metrics.labels(self.metrics.tasks).set(len(self.tasks))
        log.info("assigned %s (restored in %.2fs)", ", ".join(t.id for t in new), time.monotonic() - began)
        self.ready = True
        return positioned

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("revoking %s: checkpointing before release", ", ".join(task_id(*key) for key in keys))
        self._releasing = set(keys)
        try:
            self.checkpoint_all("revoke")
        finally:
            self._releasing = set()
            self._close(keys, keep_working_dir=False)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        lost = ", ".join(task_id(tp.topic, tp.partition) for tp in partitions)
        log.warning("lost %s without a chance to commit: aborting and rewinding the rest", lost)
        self.on_error(f"lost partitions {lost} (session timeout?): work since the last checkpoint was aborted")
        self.committer.abort()
        self._close([(tp.topic, tp.partition) for tp in partitions], keep_working_dir=False)
        self.rewind_all()

    # -- life cycle ------------------------------------------------------------------

    def _create(self, topic: str, partition: int, topic_partitions: int | None) -> Task:
        stage = self.plan.stage_of(topic)
        state = None
        if stage.stateful_uids:
            tid = task_id(topic, partition)
            directory = TaskDirectory(self.config.state_dir, self.plan.group, tid, self.token)
            state = TaskState(directory, self.storage, self.plan.group, tid, self.digests,
                              incremental=self.config.incremental_checkpoints)
            self.retention[(topic, partition)] = RetainedSnapshots(
                self.storage, task_prefix(self.plan.group, tid), self.config.checkpoints_retained,
                state.restorer.load_manifest,
                shared_grace_s=max(600.0, 4 * self.config.checkpoint_timeout_s))
        task = Task(stage, partition, state, self.errors, topic_partitions)
        self.tasks[(topic, partition)] = task
        return task

    def _restore(self, tasks: list[Task], known: dict[str, list[Manifest]] | None = None,
                 rewind: bool = False) -> list[TopicPartition]:
        """Restores `tasks` from their committed offsets; returns where to consume from."""
        if not tasks:
            return []
        committed = self.source.committed_with_retry(
            [TopicPartition(t.topic, t.partition) for t in tasks], timeout=self.committed_timeout_s)
        by_tp = {(c.topic, c.partition): c for c in committed}
        produce = self.committer.produce_fn()
        self.task_starts += 1
        positions = []
        for task in tasks:
            restored = self.restore_task(task, by_tp[(task.topic, task.partition)], (known or {}).get(task.id),
                                    fallback=self.config.fallback_to_older_checkpoint)
            offset = restored.completed.offset
            replay_until = None
            if restored.replay_from is not None and restored.replay_from < offset:
                self._check_replayable(task, restored.replay_from)
                replay_until, offset = offset, restored.replay_from
            task.start(restored.completed, produce, replay_until, self.task_starts)
            task.read_from = offset
            retention = self.retention.get((task.topic, task.partition))
            if retention is not None:
                # A rewind follows a failed checkpoint, often a slow or unreachable store:
                # listing it now would stall processing, so orphans wait for the next
                # assignment's sweep.
                retention.restored(restored.completed.manifest, sweep_orphans=not rewind)
            positions.append(self.position_of(task))
        return positions

    def position_of(self, task: Task) -> TopicPartition:
        """Where the task's partition is read from since its (re)start."""
        return TopicPartition(task.topic, task.partition,
                              task.read_from if task.read_from is not None else self.source.reset_offset)

    def _check_replayable(self, task: Task, replay_from: int) -> None:
        """A fallback needs the input from the older snapshot's offset on; Kafka's
        retention may have deleted it, and replaying from later would corrupt state."""
        low, _ = self.source.consumer.get_watermark_offsets(
            TopicPartition(task.topic, task.partition), timeout=COMMITTED_TIMEOUT_S)
        if low > replay_from:
            raise SnapshotMissingError(
                f"cannot fall back for {task.id}: the older snapshot needs topic {task.topic!r} "
                f"partition {task.partition} from offset {replay_from}, but the earliest record "
                f"left is at offset {low} (deleted by the topic's retention)")

    def rewind_all(self) -> None:
        """Back to the last committed checkpoint: the open transaction was aborted, so
        every task's state and position since then is void."""
        tasks = [t for key, t in self.tasks.items() if key not in self._releasing]
        self.rewinds += 1
        self.metrics.labels(self.metrics.restarts).inc()
        known: dict[str, list[Manifest]] = {}
        for task in tasks:
            if task.state is not None:
                task.state.discard_working_db()
            known[task.id] = [m for m in (task.completed.manifest, task.attempted_manifest) if m is not None]
        for position in self._restore(tasks, known, rewind=True):
            self.source.seek(position)
        log.info("rewound %d tasks to their last committed checkpoint", len(tasks))

    def _close(self, keys: list[tuple[str, int]], keep_working_dir: bool) -> None:
        for key in keys:
            task = self.tasks.pop(key, None)
            self.retention.pop(key, None)
            if task is not None and task.state is not None:
                task.state.close(remove_working_dir=not keep_working_dir)
        self.metrics.labels(self.metrics.tasks).set(len(self.tasks))

    def positions(self) -> dict[tuple[str, int], int | None]:
        """Where each assigned task continues: its next offset (None: from the reset policy)."""
        return {key: task.next_offset for key, task in list(self.tasks.items())}

    def close_all(self) -> None:
        self._close(list(self.tasks), keep_working_dir=False)
