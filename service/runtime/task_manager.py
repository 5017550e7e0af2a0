"""Owns the worker's tasks: creates and restores them when partitions are assigned,
closes them when partitions go, rewinds them after their transaction was aborted.

The worker's loop calls it after each rebalance the consumer recorded (Kafka Streams'
TaskManager role); checkpoint mechanics belong to the coordinator and state to TaskState.

Every (re)start of tasks bumps `task_starts`: records fetched for a task's old position
may still arrive after it, and the loop drops those of tasks started since the batch
was asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import TopicPartition

from connectors.kafka_sink import Produce
from connectors.kafka_source import KafkaSource
from connectors.two_phase import SinkContext, TwoPhaseCommitSink
from eos.errors import KafkaClientError, MissingInputError, RecordError
from service.checkpointing.recovery import Restored, restore_task
from service.job.planner import Plan, Stage
from service.monitoring.metrics import WorkerMetrics
from service.runtime.config import EXACTLY_ONCE, WorkerConfig
from service.runtime.error_policy import ErrorHandler
from service.runtime.missing_input import MissingInput
from service.runtime.task import Task, TimeLayout, task_id
from service.runtime.topics import PartitionCounts
from statestore.digests import DigestCache
from statestore.manifest import Manifest
from statestore.retention import RetainedSnapshots
from statestore.snapshots import task_prefix
from statestore.state_dir import TaskDirectory
from statestore.storage.base import CheckpointStorage
from statestore.task_state import TaskState

log = logging.getLogger(__name__)

Restore = Callable[..., Restored]
TaskKey = tuple[str, int]


class TaskManager:
    def __init__(self, plan: Plan, config: WorkerConfig, source: KafkaSource, produce: Callable[[], Produce],
                 storage: CheckpointStorage, token: str, metrics: WorkerMetrics, errors: ErrorHandler,
                 partition_counts: PartitionCounts, missing_input: MissingInput,
                 restore: Restore = restore_task) -> None:
        self.plan = plan
        self.config = config
        self.source = source
        # The current producer's produce functions: each (re)start binds the chains to them.
        self.produce = produce
        self.storage = storage
        self.token = token
        self.metrics = metrics
        self.errors = errors
        self.partition_counts = partition_counts
        self.missing_input = missing_input
        # How a task gets back to its committed state (a resumed savepoint wraps it).
        self.restore_task = restore
        self.digests = DigestCache()
        self.tasks: dict[TaskKey, Task] = {}
        self.retention: dict[TaskKey, RetainedSnapshots] = {}
        # True once the first assignment (even an empty one) is restored.
        self.ready = False
        self.rewinds = 0
        self.task_starts = 0
        # A pending transactional offset commit (of a worker that died between sending
        # offsets and committing) keeps committed offsets unreadable until it is aborted.
        self.committed_timeout_s = max(30.0, config.transaction_timeout_s + 15.0)

    # -- partitions come and go ------------------------------------------------------

    def assign(self, keys: Iterable[TaskKey]) -> list[TopicPartition]:
        """Creates and restores the tasks of newly assigned partitions; returns where
        each partition is to be read from."""
        keys = list(keys)
        if not keys:
            self.ready = True
            return []
        began = time.monotonic()
        topics = {topic for topic, _ in keys}
        counts = self.partition_counts.of(topics | {t for topic in topics for t in self.plan.time_topics(topic)})
        new = [self._create(topic, partition, counts) for topic, partition in keys]
        positions = self._restore(new)
        self.metrics.labels(self.metrics.recovery_duration).set(time.monotonic() - began)
        self.metrics.labels(self.metrics.tasks).set(len(self.tasks))
        log.info("assigned %s (restored in %.2fs)", ", ".join(t.id for t in new), time.monotonic() - began)
        self.ready = True
        return positions

    def release(self, keys: Iterable[TaskKey]) -> None:
        """Closes the tasks of partitions revoked or lost; their next owner restores
        them from the last committed checkpoint."""
        self._close(list(keys))

    def changed(self, keys: Iterable[TaskKey] | None = None) -> bool:
        """Whether any of these tasks (all, by default) has work no checkpoint covers."""
        tasks = self.tasks.values() if keys is None else [self.tasks[k] for k in keys if k in self.tasks]
        return any(t.changed for t in tasks)

    # -- life cycle ------------------------------------------------------------------

    def _create(self, topic: str, partition: int, counts: dict[str, int | None]) -> Task:
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
        task = Task(stage, partition, state, self.errors, counts[topic], self._time_layout(stage, counts),
                    sinks=self._open_sinks(stage, task_id(topic, partition)))
        self.tasks[(topic, partition)] = task
        return task

    def _open_sinks(self, stage: Stage, tid: str) -> dict[str, TwoPhaseCommitSink]:
        """The task's own participant in each transactional sink of its stage."""
        return {node.uid: node.options["sink"].open(SinkContext(
            job=self.plan.group, task=tid, sink=node.uid, owner=self.token,
            exactly_once=self.config.processing_guarantee == EXACTLY_ONCE,
            transaction_timeout_s=self.config.transaction_timeout_s, reject=self._reject_row))
            for node in self.plan.transactional_sinks(stage)}

    def _reject_row(self, error: RecordError, msg: object) -> None:
        """A row a sink's target refused: the sink operator's error policy, with dead
        letters in the current transaction."""
        self.errors.handle(error, msg, self.produce())

    def _time_layout(self, stage: Stage, counts: dict[str, int | None]) -> TimeLayout | None:
        if not stage.event_time:
            return None
        needed = self.plan.time_topics(stage.topic)
        unknown = [t for t in needed if counts.get(t) is None]
        if unknown:
            raise KafkaClientError(f"cannot run {stage.id!r} on event time: the partition counts of "
                                   f"{', '.join(unknown)} are unknown (the cluster did not say)")
        origins = counts[stage.upstream_topic] if stage.repartition else 1
        source = stage.root.options
        metrics = self.metrics
        idle_ms = None if stage.repartition else source.get("idle_timeout_ms")

        def late_counter(uid: str, routed: bool):
            counter = metrics.late_records_routed if routed else metrics.late_records_dropped
            return metrics.labels(counter, operator=uid).inc

        return TimeLayout(origins=origins, partitions={t: counts[t] for t in needed},
                          timestamp=None if stage.repartition else source.get("timestamp"),
                          out_of_orderness_ms=0 if stage.repartition else source.get("out_of_orderness_ms", 0),
                          idle_timeout_s=None if idle_ms is None else idle_ms / 1000, late_counter=late_counter)

    def _restore(self, tasks: list[Task], known: dict[str, list[Manifest]] | None = None,
                 rewind: bool = False) -> list[TopicPartition]:
        """Restores `tasks` from their committed offsets; returns where to consume from."""
        if not tasks:
            return []
        committed = self.source.committed_with_retry(
            [TopicPartition(t.topic, t.partition) for t in tasks], timeout=self.committed_timeout_s)
        by_tp = {(c.topic, c.partition): c for c in committed}
        produce = self.produce()
        self.task_starts += 1
        for task in tasks:
            restored = self.restore_task(task, by_tp[(task.topic, task.partition)], (known or {}).get(task.id),
                                    fallback=self.config.fallback_to_older_checkpoint)
            offset = restored.completed.offset
            replay_until = None
            if restored.replay_from is not None and restored.replay_from < offset:
                self._check_replayable(task, restored.replay_from)
                replay_until, offset = offset, restored.replay_from
            for sink in task.sinks.values():
                sink.recover(restored.completed.checkpoint_id)
                sink.begin()
            task.start(restored.completed, produce, replay_until, self.task_starts)
            task.read_from = offset
            retention = self.retention.get((task.topic, task.partition))
            if retention is not None:
                # A rewind follows a failed checkpoint, often a slow or unreachable store:
                # listing it now would stall processing, so orphans wait for the next
                # assignment's sweep.
                retention.restored(restored.completed.manifest, sweep_orphans=not rewind)
        self._skip_missing_input(tasks)
        return [self.position_of(task) for task in tasks]

    def _skip_missing_input(self, tasks: list[Task]) -> None:
        """Where a task's input was deleted before it was processed, the policy decides
        (service/runtime/missing_input.py): stop, or read on from the earliest offset left."""
        reading = {(t.topic, t.partition): t.read_from for t in tasks
                   if t.read_from is not None and t.read_from >= 0 and t.replay_until is None}
        decided = self.missing_input.read_from(reading)
        for task in tasks:
            offset = decided.get((task.topic, task.partition))
            if offset is not None and offset != task.read_from:
                task.read_from = task.next_offset = offset

    def tick_time(self) -> None:
        """Time passes for tasks on event time even without input: source tasks whose
        input went quiet say so (Task.check_idle), processing-time timers fire."""
        now, now_ms = time.monotonic(), int(time.time() * 1000)
        for task in self.tasks.values():
            if task.time is not None:
                task.check_idle(now)
                task.wall_clock(now_ms)

    def position_of(self, task: Task) -> TopicPartition:
        """Where the task's partition is read from since its (re)start."""
        return TopicPartition(task.topic, task.partition,
                              task.read_from if task.read_from is not None else self.source.reset_offset)

    def _check_replayable(self, task: Task, replay_from: int) -> None:
        """A fallback needs the input from the older snapshot's offset on; Kafka's
        retention may have deleted it, and replaying from later would corrupt state."""
        low = self.missing_input.offsets.starts([TopicPartition(task.topic, task.partition)])[(task.topic, task.partition)]
        if low > replay_from:
            raise MissingInputError(
                f"cannot fall back for {task.id}: the older snapshot needs topic {task.topic!r} "
                f"partition {task.partition} from offset {replay_from}, but the earliest record "
                f"left is at offset {low} (deleted by the topic's retention)")

    def rewind_all(self) -> None:
        """Back to the last committed checkpoint: the open transaction was aborted, so
        every task's state and position since then is void."""
        tasks = list(self.tasks.values())
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

    def _close(self, keys: list[TaskKey]) -> None:
        for key in keys:
            task = self.tasks.pop(key, None)
            self.retention.pop(key, None)
            if task is None:
                continue
            for sink in task.sinks.values():
                sink.close()
            if task.state is not None:
                task.state.close(remove_working_dir=True)
        self.metrics.labels(self.metrics.tasks).set(len(self.tasks))

    def positions(self) -> dict[tuple[str, int], int | None]:
        """Where each assigned task continues: its next offset (None: from the reset policy)."""
        return {key: task.next_offset for key, task in list(self.tasks.items())}

    def close_all(self) -> None:
        self._close(list(self.tasks))
