"""The life of a checkpoint, in one place (Flink's PendingCheckpoint -> CompletedCheckpoint).

For checkpoint n, in one worker:

  PENDING      sources inject Barrier(n): each task's records so far belong to n
  FLUSHED      operators' write-back caches are written to RocksDB
  SNAPSHOTTED  each stateful task takes a local RocksDB checkpoint (hard links)
  PERSISTED    new files are in checkpoint storage, then each manifest (last, atomic)
  COMMITTED    offsets (metadata naming n and its snapshot) and outputs commit in
               one Kafka transaction; only now is n complete
  FAILED       anything above went wrong: the transaction's owner aborts it, and the
               record carries the outcome (rewind, replaced, fatal) for the worker's
               loop to act on

The invariant exactly-once rests on: snapshot n is durable before the transaction
that commits n's offsets. A crash anywhere before COMMITTED leaves the offsets at n-1,
and snapshot n an orphan that nothing references.

The knobs mean what Flink's mean: the interval runs from the start of one checkpoint
to the start of the next; the min pause from the end of one to the start of the next;
the timeout bounds the time until every snapshot is durable (Flink's acknowledgement),
after which the commit is the notification that n is complete. Counting failures
against the tolerated number is the loop's, which sees every outcome.

With checkpoints disabled (at-least-once only) the same life cycle runs without the
state phases: offsets alone are committed every OFFSET_COMMIT_INTERVAL_S, and a
stateful task restarts with empty state.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from confluent_kafka import KafkaException, TopicPartition

from connectors.transactions import DONE, Kind, Outcome, OutputOwner
from eos.errors import CheckpointTimeoutError, EosError, StateStoreError
from service.checkpointing.faults import FaultInjector
from service.checkpointing.recovery import format_metadata
from service.monitoring.metrics import WorkerMetrics
from service.runtime.config import OFFSET_COMMIT_INTERVAL_S
from service.runtime.task import CompletedCheckpoint, Task
from service.runtime.task_manager import TaskManager
from statestore.manifest import Manifest
from statestore.retention import snapshot_name
from statestore.snapshots import run_all
from statestore.storage.base import StorageError

log = logging.getLogger(__name__)

HISTORY_SIZE = 50
# Storage calls of one checkpoint run this many at a time (uploads, then manifests).
STORAGE_THREADS = 8


class Phase(enum.Enum):
    PENDING = "pending"
    FLUSHED = "flushed"
    SNAPSHOTTED = "snapshotted"
    PERSISTED = "persisted"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(frozen=True)
class Barrier:
    """The in-band marker a source injects: records before it belong to checkpoint n.
    A task with several inputs has one position per input: the lead's, and the others'
    (topic -> offset)."""

    checkpoint_id: int
    offset: int | None
    others: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def of(cls, checkpoint_id: int, task: Task) -> Barrier:
        return cls(checkpoint_id, task.next_offset, tuple((i.topic, i.next_offset) for i in task.others))


@dataclass
class CheckpointRecord:
    checkpoint_id: int
    reason: str
    started_at: float
    phase: Phase = Phase.PENDING
    duration_s: float = 0.0
    alignment_s: float = 0.0
    tasks: int = 0
    size_bytes: int = 0
    uploaded_bytes: int = 0
    state_keys: int = 0
    error: str | None = None
    # What became of the checkpoint's transaction, for the loop to act on.
    outcome: Outcome = DONE
    offsets: dict[str, int] = field(default_factory=dict)
    barriers: dict[str, Barrier] = field(default_factory=dict)
    # Seconds per step (flush, snapshot, upload, commit, retention): where the time of
    # the synchronous phase goes, e.g. how much an asynchronous upload could hide.
    step_s: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=lambda: time.monotonic())

    def step_done(self, step: str) -> None:
        now = time.monotonic()
        self.step_s[step] = now - self._mark
        self._mark = now


class CheckpointStats:
    """The whole run's checkpoints in a few numbers, for the shutdown summary: how much
    of the worker's time the synchronous phase took (processing stops meanwhile), and
    in which step."""

    SAMPLE = 10_000

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.completed_count = self.failed_count = 0
        self.seconds = 0.0
        self.step_seconds: dict[str, float] = {}
        self.durations: deque[float] = deque(maxlen=self.SAMPLE)

    def add(self, record: CheckpointRecord) -> None:
        if record.error is None:
            self.completed_count += 1
            self.durations.append(record.duration_s)
        else:
            self.failed_count += 1
        self.seconds += record.duration_s
        for step, seconds in record.step_s.items():
            self.step_seconds[step] = self.step_seconds.get(step, 0.0) + seconds

    def summary(self) -> str:
        wall = max(1e-9, time.monotonic() - self.started)
        ordered = sorted(self.durations)

        def pct(q: float) -> float:
            return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

        steps = ", ".join(f"{step} {100 * seconds / wall:.1f}%" for step, seconds in self.step_seconds.items())
        return (f"{self.completed_count} checkpoints completed, {self.failed_count} failed; duration p50 "
                f"{pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms; {100 * self.seconds / wall:.1f}% of "
                f"{wall:.0f}s spent in checkpoints ({steps})")


class CheckpointCoordinator:
    def __init__(self, manager: TaskManager, owner: OutputOwner, consumer: object,
                 *, job: str, worker: str, token: str, interval_s: float, timeout_s: float,
                 min_pause_s: float, metrics: WorkerMetrics,
                 faults: FaultInjector) -> None:
        self.manager = manager
        self.owner = owner
        self.consumer = consumer
        self.job, self.worker, self.token = job, worker, token
        # interval 0: no state snapshots, offsets alone are committed periodically.
        self.snapshots = interval_s > 0
        self.interval_s = interval_s if self.snapshots else OFFSET_COMMIT_INTERVAL_S
        self.timeout_s = timeout_s
        self.min_pause_s = min_pause_s
        self.metrics = metrics
        self.faults = faults
        self.history: deque[CheckpointRecord] = deque(maxlen=HISTORY_SIZE)
        # The checkpoint running right now, for the status page (read from its thread).
        self.current: CheckpointRecord | None = None
        self.pool = ThreadPoolExecutor(max_workers=STORAGE_THREADS, thread_name_prefix="eos-storage")
        self.stats = CheckpointStats()
        self.last_id = 0  # last completed (committed) checkpoint
        # Ids are never reused, not even a failed one's (as in Flink): its snapshot
        # directory may still exist locally and in storage.
        self.last_attempted_id = 0
        self._last_started = time.monotonic()
        self._last_ended = time.monotonic()

    def close(self) -> None:
        """Abandons storage calls of a failed checkpoint that are still running."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def due(self) -> bool:
        now = time.monotonic()
        return now - self._last_started >= self.interval_s and now - self._last_ended >= self.min_pause_s

    def trigger(self, reason: str = "interval") -> CheckpointRecord | None:
        """Runs one checkpoint of every task that made progress. Returns its record, or
        None when nothing changed since the last one. The record's outcome says what
        became of the transaction; the local state store failing (disk full, files
        gone) raises instead: as in Flink, a failure of the synchronous part fails the
        worker rather than counting as a tolerable checkpoint failure."""
        tasks = [t for t in self.manager.tasks.values() if t.changed]
        self._last_started = time.monotonic()
        if not tasks:
            self._last_ended = self._last_started
            return None
        checkpoint_id = 1 + max([self.last_attempted_id]
                                + [t.completed.checkpoint_id for t in self.manager.tasks.values()])
        self.last_attempted_id = checkpoint_id
        record = CheckpointRecord(checkpoint_id, reason, time.time(), tasks=len(tasks))
        self.history.append(record)
        self.current = record
        began = time.monotonic()
        try:
            manifests = self._run(record, tasks, began)
        except StateStoreError:
            raise
        except (EosError, StorageError, OSError, KafkaException) as exc:
            manifests = None
            record.outcome = self.owner.abort(f"checkpoint {checkpoint_id} failed: {type(exc).__name__}: {exc}",
                                              counts=True)
        finally:
            self._last_ended = time.monotonic()
            self.current = None
        if record.outcome.committed:
            self._completed(record, tasks, manifests, began)
        else:
            self._failed(record, began)
        return record

    def _run(self, record: CheckpointRecord, tasks: list[Task], began: float) -> dict[str, Manifest]:
        n = record.checkpoint_id
        barriers = {t.id: Barrier.of(n, t) for t in tasks}
        record.alignment_s = time.monotonic() - began
        record.step_done("barrier")
        self.faults.hit("after_barrier")

        stateful = [t for t in tasks if t.state is not None] if self.snapshots else []
        deadline = began + self.timeout_s
        for task in stateful:
            task.state.flush()
        record.step_done("flush")
        record.phase = Phase.FLUSHED
        self.faults.hit("after_flush")

        name = snapshot_name(n, self.token)
        local_dirs = {t.id: t.state.snapshot_local(name) for t in stateful}
        record.step_done("snapshot")
        record.phase = Phase.SNAPSHOTTED
        self.faults.hit("after_snapshot")

        # Every task's new files at once, then every manifest at once: on an object store
        # a checkpoint costs round trips in sequence, not bytes.
        plans = {t.id: t.state.plan_upload(local_dirs[t.id], t.completed.manifest) for t in stateful}
        run_all([call for t in stateful for call in t.state.persister.upload_calls(plans[t.id])],
                self.pool, deadline, f"checkpoint {n}")
        manifests: dict[str, Manifest] = {}
        writes = []
        for task in stateful:
            retention = self.manager.retention[(task.topic, task.partition)]
            build = partial(Manifest, job=self.job, task=task.id, topic=task.topic,
                            partition=task.partition, checkpoint_id=n, snapshot=name,
                            worker=self.worker, created_at=record.started_at,
                            source_offset=barriers[task.id].offset,
                            input_offsets={t: o for t, o in barriers[task.id].others if o is not None},
                            topic_partitions=task.topic_partitions,
                            lineage=retention.lineage_for_next())
            manifest = manifests[task.id] = task.state.manifest_for(plans[task.id], build)
            writes.append(partial(task.state.persister.write_manifest, manifest, self._mid_manifest_fault(task)))
            record.size_bytes += manifest.total_bytes
            record.uploaded_bytes += manifest.uploaded_bytes
            record.state_keys += sum(manifest.state_keys.values())
        run_all(writes, self.pool, deadline, f"checkpoint {n}'s manifests")
        for task in stateful:
            task.attempted_manifest = manifests[task.id]
        record.step_done("upload")
        record.phase = Phase.PERSISTED
        self.faults.hit("after_persist")

        elapsed = time.monotonic() - began
        if elapsed > self.timeout_s:
            raise CheckpointTimeoutError(
                f"checkpoint {n} took {elapsed:.1f}s until its snapshots were durable, over its "
                f"{self.timeout_s:g}s timeout")
        offsets = []
        for task in tasks:
            snapshot = manifests[task.id].snapshot if task.id in manifests else None
            metadata = format_metadata(n, snapshot, task.completed.savepoint)
            barrier = barriers[task.id]
            for topic, offset in ((task.topic, barrier.offset), *barrier.others):
                if offset is not None:  # an input never read stays where it was
                    offsets.append(TopicPartition(topic, task.partition, offset, metadata=metadata))
            record.offsets[task.id] = barrier.offset
            record.barriers[task.id] = barrier
        record.outcome = self.owner.commit(offsets, self.consumer)
        if not record.outcome.committed:
            return manifests
        record.step_done("commit")
        record.phase = Phase.COMMITTED
        self.faults.hit("after_commit")
        return manifests

    def _mid_manifest_fault(self, task: Task):
        """The hook that, under EOS_FAULT=mid_manifest, leaves a torn manifest behind
        (as a store without atomic writes might) before the process dies."""
        if self.faults.phase != "mid_manifest":
            return None
        storage = task.state.persister.storage

        def before_write(key: str, data: bytes) -> None:
            self.faults.hit("mid_manifest", lambda: storage.put_bytes(key, data[: len(data) // 2]))

        return before_write

    def _completed(self, record: CheckpointRecord, tasks: list[Task],
                   manifests: dict[str, Manifest], began: float) -> None:
        n = record.checkpoint_id
        self.last_id = n
        retention = []
        for task in tasks:
            manifest = manifests.get(task.id)
            task.completed = CompletedCheckpoint(n, record.offsets[task.id], manifest,
                                                 savepoint=task.completed.savepoint,
                                                 other_offsets=record.barriers[task.id].others)
            task.attempted_manifest = None
            task.records_since_checkpoint = 0
            if manifest is not None:
                task.state.directory.prune_snapshots(keep={manifest.snapshot})
                retention.append(partial(self.manager.retention[(task.topic, task.partition)].completed,
                                         manifest))
        # Tasks' deletions are independent (separate prefixes); each task's must finish
        # before its next upload, which may re-create a file it deletes.
        for future in [self.pool.submit(call) for call in retention]:
            if future.exception() is not None:
                log.warning("retention after checkpoint %d failed: %s", n, future.exception())
        record.step_done("retention")
        record.duration_s = time.monotonic() - began
        self.stats.add(record)
        m = self.metrics
        m.labels(m.checkpoints_completed).inc()
        m.labels(m.checkpoint_last_duration).set(record.duration_s)
        m.labels(m.checkpoint_duration).observe(record.duration_s)
        m.labels(m.checkpoint_last_size).set(record.size_bytes)
        m.labels(m.checkpoint_last_uploaded).set(record.uploaded_bytes)
        m.labels(m.checkpoint_alignment).set(record.alignment_s)
        m.labels(m.last_checkpoint_id).set(n)
        self._publish_state_keys()
        log.debug("checkpoint %d committed: %d tasks, %.3fs, %d bytes uploaded", n, record.tasks,
                  record.duration_s, record.uploaded_bytes)

    def _publish_state_keys(self) -> None:
        """eos_state_keys per operator: the latest manifest of every task of this worker
        (idle tasks keep their last one), column families `{uid}:{name}` summed by uid."""
        per_operator = {uid: 0 for stage in self.manager.plan.stages for uid in stage.stateful_uids}
        for task in self.manager.tasks.values():
            manifest = task.completed.manifest
            if manifest is None:
                continue
            for family, keys in manifest.state_keys.items():
                uid, sep, _ = family.rpartition(":")
                if sep:
                    per_operator[uid] = per_operator.get(uid, 0) + keys
        for uid, keys in per_operator.items():
            self.metrics.labels(self.metrics.state_keys, operator=uid).set(keys)

    def _failed(self, record: CheckpointRecord, began: float) -> None:
        """Not committed. A rebalance under the commit is no failure (the group moved on,
        KIP-447's zombie fence at work); anything else counts."""
        record.phase = Phase.FAILED
        record.error = record.outcome.reason
        record.duration_s = time.monotonic() - began
        if record.outcome.kind is Kind.REWIND and not record.outcome.counts:
            log.info("checkpoint %d not committed: %s", record.checkpoint_id, record.outcome.reason)
            return
        self.stats.add(record)
        self.metrics.labels(self.metrics.checkpoints_failed).inc()
