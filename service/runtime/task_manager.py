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
from functools import partial
from typing import Any

from confluent_kafka import OFFSET_END, TopicPartition

from connectors.changelog import Changelog
from connectors.kafka_sink import Produce
from connectors.kafka_source import KafkaSource
from connectors.two_phase import SinkContext, TwoPhaseCommitSink
from eos.errors import KafkaClientError, MissingInputError, RecordError
from service.checkpointing.recovery import Restored, restore_task
from service.job.planner import Plan, Stage
from service.monitoring.metrics import WorkerMetrics
from service.runtime.colocation import Colocation
from service.runtime.config import EXACTLY_ONCE, WorkerConfig
from service.runtime.error_policy import ErrorHandler
from service.runtime.inputs import PartitionGroup
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


class StepTimes:
    """Seconds per step of taking over partitions, for the log line that reports it: a
    failover's time is spent here, and the total alone does not say where."""

    def __init__(self) -> None:
        self._began = self._mark = time.monotonic()
        self.steps: dict[str, float] = {}

    def done(self, step: str) -> None:
        now = time.monotonic()
        self.steps[step] = now - self._mark
        self._mark = now

    def total(self) -> float:
        return time.monotonic() - self._began

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds:.2f}s" for step, seconds in self.steps.items())


class TaskManager:
    def __init__(self, plan: Plan, config: WorkerConfig, source: KafkaSource, produce: Callable[[], Produce],
                 storage: CheckpointStorage, token: str, metrics: WorkerMetrics, errors: ErrorHandler,
                 partition_counts: PartitionCounts, missing_input: MissingInput,
                 restore: Restore = restore_task, global_tables: dict[str, Any] | None = None,
                 changelog: Changelog | None = None, colocation: Colocation | None = None) -> None:
        self.plan = plan
        # Which tasks come with the partitions the group assigns.
        self.colocation = colocation if colocation is not None else Colocation(plan, {})
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
        # Reads back the changes checkpoints logged after a task's snapshot.
        self.changelog = changelog
        self.digests = DigestCache()
        # The worker's global tables, by uid, for tasks' lookups.
        self.global_tables = global_tables or {}
        # Tasks by their lead partition, which the group assigns (or an anchor carries).
        self.tasks: dict[TaskKey, Task] = {}
        # Where each partition's records go: every input partition of every task.
        self.routes: dict[TaskKey, Callable[[list], None]] = {}
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
        steps = StepTimes()
        topics = {t for topic, _ in keys for t in self.plan.stage_of(topic).topics}
        counts = self.partition_counts.of(topics | {t for topic in topics for t in self.plan.time_topics(topic)})
        new = [self._create(topic, partition, counts) for topic, partition in keys]
        steps.done("create")
        positions = self._restore(new, steps=steps)
        leads = {(t.topic, t.partition) for t in new if not self.colocation.carried((t.topic, t.partition))}
        self.source.take([p for p in positions if (p.topic, p.partition) not in leads])
        steps.done("take")
        self.metrics.labels(self.metrics.recovery_duration).set(steps.total())
        self.metrics.labels(self.metrics.tasks).set(len(self.tasks))
        log.info("assigned %s (restored in %.2fs: %s)", ", ".join(t.id for t in new), steps.total(), steps)
        self.ready = True
        return [p for p in positions if (p.topic, p.partition) in leads]

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
                              incremental=self.config.incremental_checkpoints,
                              logs_changes=self.config.snapshot_interval_s > 0)
            self.retention[(topic, partition)] = RetainedSnapshots(
                self.storage, task_prefix(self.plan.group, tid), self.config.checkpoints_retained,
                state.restorer.load_manifest,
                shared_grace_s=max(600.0, 4 * self.config.checkpoint_timeout_s))
        task = Task(stage, partition, state, self.errors, counts[topic], self._time_layout(stage, counts),
                    group=self._partition_group, global_tables=self.global_tables,
                    sinks=self._open_sinks(stage, task_id(topic, partition)))
        self.tasks[(topic, partition)] = task
        if task.group is None:
            self.routes[(topic, partition)] = task.process
        else:
            for task_input in task.inputs:
                self.routes[task_input.key] = partial(task.receive, task_input)
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

    def read_global_tables(self, positions: list[TopicPartition]) -> None:
        """Adds the global tables' partitions to the consumer (at the first assignment of
        each consumer), at the offsets each table holds."""
        for table in self.global_tables.values():
            for position in positions:
                if position.topic == table.topic:
                    self.routes[(position.topic, position.partition)] = table.apply
        self.source.take(positions)

    def global_positions(self) -> list[TopicPartition]:
        """Where the global tables' partitions continue (a new consumer reads on there)."""
        return [position for table in self.global_tables.values() for position in table.positions()]

    def _partition_group(self, inputs: list) -> PartitionGroup:
        return PartitionGroup(inputs, self.source.ends, self.config.max_task_idle_s,
                              self.source.hold, self.source.release)

    def _time_layout(self, stage: Stage, counts: dict[str, int | None]) -> TimeLayout | None:
        if not stage.event_time:
            return None
        needed = self.plan.time_topics(stage.topic)
        unknown = [t for t in needed if counts.get(t) is None]
        if unknown:
            raise KafkaClientError(f"cannot run {stage.id!r} on event time: the partition counts of "
                                   f"{', '.join(unknown)} are unknown (the cluster did not say)")
        input_origins = tuple(counts[i.upstream_topic] if i.repartition else 1 for i in stage.inputs)
        source = stage.root.options
        metrics = self.metrics
        idle_ms = None if stage.repartition else source.get("idle_timeout_ms")

        def late_counter(uid: str, routed: bool):
            counter = metrics.late_records_routed if routed else metrics.late_records_dropped
            return metrics.labels(counter, operator=uid).inc

        def expired_counter(uid: str):
            return metrics.labels(metrics.state_expired, operator=uid).inc

        return TimeLayout(input_origins=input_origins, partitions={t: counts[t] for t in needed},
                          idle_timeout_s=None if idle_ms is None else idle_ms / 1000, late_counter=late_counter,
                          expired_counter=expired_counter)

    def _restore(self, tasks: list[Task], known: dict[str, list[Manifest]] | None = None,
                 rewind: bool = False, steps: StepTimes | None = None) -> list[TopicPartition]:
        """Restores `tasks` from their committed offsets; returns where to consume from."""
        if not tasks:
            return []
        steps = steps if steps is not None else StepTimes()
        committed = self.source.committed_with_retry(
            [TopicPartition(i.topic, i.partition) for t in tasks for i in t.inputs], timeout=self.committed_timeout_s)
        steps.done("committed offsets")
        by_tp = {(c.topic, c.partition): c for c in committed}
        produce = self.produce()
        self.task_starts += 1
        for task in tasks:
            restored = self.restore_task(task, by_tp[(task.topic, task.partition)], (known or {}).get(task.id),
                                         fallback=self.config.fallback_to_older_checkpoint,
                                         others=[by_tp[i.key] for i in task.others], changelog=self.changelog)
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
            for task_input in task.others:
                task_input.read_from = task_input.next_offset
            retention = self.retention.get((task.topic, task.partition))
            if retention is not None:
                # A rewind follows a failed checkpoint, often a slow or unreachable store:
                # listing it now would stall processing, so orphans wait for the next
                # assignment's sweep.
                retention.restored(restored.completed.manifest, sweep_orphans=not rewind)
        steps.done("state")
        self._place_unread_inputs(tasks)
        self._skip_missing_input(tasks)
        steps.done("input offsets")
        return [p for task in tasks for p in self.positions_of(task)]

    def _place_unread_inputs(self, tasks: list[Task]) -> None:
        """A task of several inputs commits every input's offset together, so each needs
        one even before it reads anything: where the reset policy would start it, asked
        of the cluster now."""
        unplaced = [i for t in tasks if t.group is not None for i in t.inputs if i.read_from is None]
        if not unplaced:
            return
        partitions = [TopicPartition(i.topic, i.partition) for i in unplaced]
        offsets = self.missing_input.offsets
        found = offsets.ends(partitions) if self.source.reset_offset == OFFSET_END else offsets.starts(partitions)
        for task_input in unplaced:
            task_input.read_from = task_input.next_offset = found[task_input.key]

    def _skip_missing_input(self, tasks: list[Task]) -> None:
        """Where a task's input was deleted before it was processed, the policy decides
        (service/runtime/missing_input.py): stop, or read on from the earliest offset left."""
        reading = {i.key: i.read_from for t in tasks for i in t.inputs
                   if i.read_from is not None and i.read_from >= 0 and t.replay_until is None}
        decided = self.missing_input.read_from(reading)
        for task in tasks:
            for task_input in task.inputs:
                offset = decided.get(task_input.key)
                if offset is not None and offset != task_input.read_from:
                    task_input.read_from = task_input.next_offset = offset

    def tick(self) -> None:
        """Time passes even without input: tasks of several inputs run what waited for an
        empty input (its end found, or its idle time over); on event time, source tasks
        whose input went quiet say so (Task.check_idle) and processing-time timers fire."""
        now, now_ms = time.monotonic(), int(time.time() * 1000)
        for table in self.global_tables.values():
            table.maybe_flush(now)
        for task in self.tasks.values():
            if task.group is not None and task.group.buffered():
                task.run_buffered()
            if task.time is not None:
                task.check_idle(now)
                task.wall_clock(now_ms)

    def positions_of(self, task: Task) -> list[TopicPartition]:
        """Where each of the task's partitions is read from since its (re)start."""
        return [i.position(self.source.reset_offset) for i in task.inputs]

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
        for task in tasks:
            task.rewound = True
        log.info("rewound %d tasks to their last committed checkpoint", len(tasks))

    def _close(self, keys: list[TaskKey]) -> None:
        for key in keys:
            task = self.tasks.pop(key, None)
            self.retention.pop(key, None)
            if task is None:
                continue
            for task_input in task.inputs:
                self.routes.pop(task_input.key, None)
            self.source.give_back([i.key for i in (task.inputs if self.colocation.carried(key) else task.others)])
            for sink in task.sinks.values():
                sink.close()
            if task.state is not None:
                task.state.close(remove_working_dir=True)
        self.metrics.labels(self.metrics.tasks).set(len(self.tasks))

    def positions(self) -> dict[tuple[str, int], int | None]:
        """Where each assigned task continues: its next offset (None: from the reset policy)."""
        return {i.key: i.next_offset for task in list(self.tasks.values()) for i in task.inputs}

    def close_all(self) -> None:
        self._close(list(self.tasks))
        if self.changelog is not None:
            self.changelog.close()
