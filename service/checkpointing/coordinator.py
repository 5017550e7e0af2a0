"""The life of a checkpoint, in one place (Flink's PendingCheckpoint -> CompletedCheckpoint).

For checkpoint n, in one worker:

  PENDING      sources inject Barrier(n): each task's records so far belong to n. The
               synchronous part, while processing waits: each stateful task's changes
               since n-1 are captured (swapped for an empty set; reads see them
               through the captured layer), every transactional sink of the tasks
               prepares its writes (durable, not yet visible; connectors/two_phase.py)
               and begins the next epoch, and the open transaction closes: what the
               tasks produce from now on goes into transaction n+1, begun beforehand
               on the other producer of the owner's pool, and held until n's records
               are in the log
  FLUSHED      (in the background from here on, while processing goes on) the captured
               changes are encoded (those the loop read were encoded then) and written
               to RocksDB, then merged into the cache
  SNAPSHOTTED  each stateful task takes a local RocksDB checkpoint (hard links)
  PERSISTED    new files are in checkpoint storage, then each manifest (last, atomic)
  COMMITTED    offsets (metadata naming n and its snapshot) and outputs commit in
               one Kafka transaction; only now is n complete. Back on the loop's
               thread the sinks commit what they prepared for n; a crash before they
               do is settled by their recovery, which commits what was prepared for
               the committed checkpoint
  FAILED       anything above went wrong: the transaction's owner aborts it (and n+1),
               the sinks roll back what they prepared (unless the Kafka commit was
               sent, whose outcome their recovery reads), and the record carries the
               outcome (rewind, replaced, fatal) for the worker's loop to act on

With a changelog (`--snapshot-interval`), a task whose snapshot is not due takes no
snapshot and uploads nothing: its written changes go into the closed transaction, to its
partition of the stage's changelog, just before COMMITTED, and its offsets keep naming
its last snapshot (service/checkpointing/changelog.py; recovery replays them).

At most one checkpoint is in flight: the next barrier waits until it completed, while
records keep flowing into the open transaction. The loop learns of the background
part's end at its next turn (`poll`), on its own thread, where every outcome is acted
on; `trigger` runs a checkpoint to its end (at shutdown, before a restore, for
savepoints). An owner without a pool (at-least-once) runs the whole life in the loop.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connectors.transactions import DONE, Kind, Outcome, OutputOwner, verdict
from connectors.two_phase import commit_prepared
from eos.errors import (
    CheckpointTimeoutError,
    EosError,
    RecordError,
    SinkFencedError,
    SinkUnavailableError,
    StateStoreError,
)
from service.checkpointing.changelog import CheckpointChangelog
from service.checkpointing.faults import FaultInjector
from service.checkpointing.recovery import format_metadata
from service.monitoring.metrics import WorkerMetrics
from service.runtime.config import OFFSET_COMMIT_INTERVAL_S
from service.runtime.task import CompletedCheckpoint, Task
from service.runtime.task_manager import TaskManager
from statestore.manifest import Manifest
from statestore.retention import snapshot_name
from statestore.snapshots import run_all
from statestore.task_state import WrittenCapture
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
    # Tasks that logged their changes to the changelog instead of a snapshot, and the bytes.
    logged_tasks: int = 0
    logged_bytes: int = 0
    state_keys: int = 0
    error: str | None = None
    # What became of the checkpoint's transaction, for the loop to act on.
    outcome: Outcome = DONE
    # The error the closed transaction's commit ended with (asynchronous checkpoints).
    commit_error: Any = None
    # Whether the Kafka commit was sent: from then on only Kafka knows whether n
    # completed, and the sinks' recovery asks it.
    commit_sent: bool = False
    # Whether a transactional sink had writes in n (the sink fault phases count these).
    sink_writes: bool = False
    offsets: dict[str, int] = field(default_factory=dict)
    barriers: dict[str, Barrier] = field(default_factory=dict)
    # Seconds per step (capture, flush, snapshot, upload, commit, retention).
    step_s: dict[str, float] = field(default_factory=dict)
    # Flink's split: the synchronous part (processing waits) and the asynchronous part.
    sync_s: float = 0.0
    async_s: float = 0.0
    settled: bool = False
    _mark: float = field(default_factory=lambda: time.monotonic())

    @property
    def ended(self) -> bool:
        """Whether the coordinator has settled the outcome (on the loop's thread)."""
        return self.settled

    def step_done(self, step: str) -> None:
        now = time.monotonic()
        self.step_s[step] = now - self._mark
        self._mark = now


class CheckpointStats:
    """The whole run's checkpoints in a few numbers, for the shutdown summary: how long
    they took, how long each paused processing (its synchronous part), and where the
    time went step by step."""

    SAMPLE = 10_000

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.completed_count = self.failed_count = 0
        self.seconds = 0.0
        self.step_seconds: dict[str, float] = {}
        self.durations: deque[float] = deque(maxlen=self.SAMPLE)
        self.pauses: deque[float] = deque(maxlen=self.SAMPLE)
        self.paused_s = 0.0

    def add(self, record: CheckpointRecord) -> None:
        self.paused_s += record.sync_s
        if record.error is None:
            self.completed_count += 1
            self.durations.append(record.duration_s)
            self.pauses.append(record.sync_s)
        else:
            self.failed_count += 1
        self.seconds += record.duration_s
        for step, seconds in record.step_s.items():
            self.step_seconds[step] = self.step_seconds.get(step, 0.0) + seconds

    def summary(self) -> str:
        wall = max(1e-9, time.monotonic() - self.started)

        def pct(values: deque[float], q: float) -> float:
            ordered = sorted(values)
            return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

        steps = ", ".join(f"{step} {100 * seconds / wall:.1f}%" for step, seconds in self.step_seconds.items())
        return (f"{self.completed_count} checkpoints completed, {self.failed_count} failed; duration p50 "
                f"{pct(self.durations, 0.5):.0f} ms, p99 {pct(self.durations, 0.99):.0f} ms; processing paused "
                f"p50 {pct(self.pauses, 0.5):.1f} ms, p99 {pct(self.pauses, 0.99):.1f} ms, "
                f"{100 * self.paused_s / wall:.2f}% of {wall:.0f}s; checkpoint steps ({steps})")


class CheckpointCoordinator:
    def __init__(self, manager: TaskManager, owner: OutputOwner, consumer: object,
                 *, job: str, worker: str, token: str, interval_s: float, timeout_s: float,
                 min_pause_s: float, metrics: WorkerMetrics,
                 faults: FaultInjector, changelog: CheckpointChangelog | None = None) -> None:
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
        # With a changelog, a task's state is snapshotted at most every snapshot interval;
        # the checkpoints in between log its changes in their transactions instead.
        self.changelog = changelog
        self.history: deque[CheckpointRecord] = deque(maxlen=HISTORY_SIZE)
        # The checkpoint running right now, for the status page (read from its thread).
        self.current: CheckpointRecord | None = None
        self.pool = ThreadPoolExecutor(max_workers=STORAGE_THREADS, thread_name_prefix="eos-storage")
        # The asynchronous part of checkpoints, one at a time.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eos-checkpoint")
        self._in_flight: tuple[CheckpointRecord, list[Task], float, Future] | None = None
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
        self._background.shutdown(wait=False, cancel_futures=True)

    def due(self) -> bool:
        now = time.monotonic()
        return now - self._last_started >= self.interval_s and now - self._last_ended >= self.min_pause_s

    def trigger(self, reason: str = "interval") -> CheckpointRecord | None:
        """Runs one checkpoint of every task that made progress to its end, after the one
        in flight. Returns its record, or None when nothing changed since the last one.
        The record's outcome says what became of the transaction; the local state store
        failing (disk full, files gone) raises instead: as in Flink, a failure of the
        snapshot fails the worker rather than counting as a tolerable checkpoint failure."""
        earlier = self.settle_in_flight()
        if earlier is not None and not earlier.outcome.committed:
            return earlier  # the loop acts on it; nothing it covered may commit now
        record = self.begin(reason)
        if record is not None and self._in_flight is not None:
            self.settle_in_flight()
        return record

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def wait_in_flight(self) -> None:
        """Waits for the background part of a checkpoint in flight to end, without acting
        on it (the worker is stopping)."""
        if self._in_flight is not None:
            try:
                self._in_flight[3].result()
            except Exception:  # noqa: BLE001 - its outcome no longer matters
                pass

    def begin(self, reason: str = "interval") -> CheckpointRecord | None:
        """The synchronous part of checkpoint n (see the module doc); the rest runs in the
        background and `poll` returns the record once it ended. None: nothing changed,
        or a checkpoint is still in flight; the interval then keeps running from the last
        checkpoint that ran."""
        if self._in_flight is not None:
            return None
        tasks = [t for t in self.manager.tasks.values() if t.changed]
        if not tasks:  # still due: the first records processed are checkpointed at once
            return None
        self._last_started = time.monotonic()
        checkpoint_id = 1 + max([self.last_attempted_id]
                                + [t.completed.checkpoint_id for t in self.manager.tasks.values()])
        self.last_attempted_id = checkpoint_id
        record = CheckpointRecord(checkpoint_id, reason, time.time(), tasks=len(tasks))
        self.history.append(record)
        self.current = record
        began = time.monotonic()
        barriers = {t.id: Barrier.of(checkpoint_id, t) for t in tasks}
        record.alignment_s = time.monotonic() - began
        record.step_done("barrier")
        self.faults.hit("after_barrier")
        stateful = [t for t in tasks if t.state is not None] if self.snapshots else []
        snapshotted = {t.id for t in stateful if self.changelog is None or self.changelog.snapshot_due(t)}
        captured = {t.id: t.state.capture() for t in stateful}
        record.step_done("capture")
        for task in tasks:
            task.checkpoint_began()  # from here on, records belong to n+1
        closed = self.owner.asynchronous
        try:
            self._prepare_sinks(record, tasks)
            if closed:
                record.outcome = self.owner.close_epoch(self.consumer)
                record.step_done("switch")
        except (SinkUnavailableError, SinkFencedError) as exc:
            fenced = isinstance(exc, SinkFencedError)  # a newer process claimed a task's sink
            record.outcome = self.owner.abort(f"checkpoint {checkpoint_id} failed: {type(exc).__name__}: {exc}",
                                              counts=not fenced, identity_in_doubt=fenced)
        except RecordError:  # a sink's target refused a row under policy `fail`
            self._drop_captures(stateful)
            self._abort_sinks(tasks)
            raise
        if not record.outcome.committed:
            self._drop_captures(stateful)
            return self._ended(record, tasks, None, began)
        record.sync_s = time.monotonic() - began
        epoch = self.owner.closed_epoch if closed else None
        job = partial(self._write_and_commit, record, tasks, stateful, barriers, captured, snapshotted, began, epoch)
        if not closed:
            manifests, failure = self._run_job(job)
            return self._ended(record, tasks, manifests, began, failure)
        self._in_flight = (record, tasks, began, self._background.submit(job))
        return record

    def _prepare_sinks(self, record: CheckpointRecord, tasks: list[Task]) -> None:
        """Every transactional sink of the checkpoint's tasks prepares what it was given
        before the barrier and begins the next epoch, as Flink's two-phase-commit sink
        does in its snapshot."""
        sinks = [sink for task in tasks for sink in task.sinks.values()]
        if not sinks:
            return
        record.sink_writes = any(sink.pending for sink in sinks)
        for sink in sinks:
            sink.prepare(record.checkpoint_id)
            sink.begin()
        if record.sink_writes:
            record.step_done("prepare")
            self.faults.hit("after_prepare")

    @staticmethod
    def _drop_captures(stateful: list[Task]) -> None:
        """Checkpoint n failed in its synchronous part: its captures will not be written
        (a rewind rebuilds the working database)."""
        for task in stateful:
            task.state.drop_capture()

    @staticmethod
    def _abort_sinks(tasks: list[Task]) -> None:
        """Checkpoint n will never complete (its Kafka commit was not sent): what the
        sinks prepared for it, and their writes since, can go now rather than at their
        recovery."""
        for task in tasks:
            for sink in task.sinks.values():
                sink.abort()

    def poll(self) -> CheckpointRecord | None:
        """The checkpoint in flight, once its background part ended: its outcome settled
        with the transaction's owner, for the loop to act on. None while it runs."""
        if self._in_flight is None or not self._in_flight[3].done():
            return None
        return self.settle_in_flight()

    def settle_in_flight(self) -> CheckpointRecord | None:
        """Waits for the checkpoint in flight (bounded by its timeout and the commit's) and
        settles it; None if there was none."""
        if self._in_flight is None:
            return None
        record, tasks, began, future = self._in_flight
        self._in_flight = None
        manifests, failure = self._run_job(future.result)
        return self._ended(record, tasks, manifests, began, failure)

    def _run_job(self, job) -> tuple[dict[str, Manifest] | None, Exception | None]:
        """Runs (or collects) the background part; its failures come back as values,
        but for the local store's, which fail the worker."""
        try:
            return job(), None
        except StateStoreError:
            raise
        except (EosError, StorageError, OSError, KafkaException) as exc:
            return None, exc

    def _ended(self, record: CheckpointRecord, tasks: list[Task], manifests: dict[str, Manifest] | None,
               began: float, failure: Exception | None = None) -> CheckpointRecord:
        self._last_ended = time.monotonic()
        self.current = None
        record.async_s = max(0.0, time.monotonic() - began - record.sync_s)
        closed = self.owner.asynchronous and record.outcome.committed
        if closed and not self.owner.closing:
            # The owner gave the transactions up meanwhile (a rewind for another reason,
            # acted on already): whatever became of this one, the rewind reads it back.
            record.outcome = DONE if record.phase is Phase.COMMITTED else Outcome(
                Kind.REWIND, self._why_not_committed(record, failure), counts=False)
        elif failure is not None:
            record.outcome = self.owner.abort(
                f"checkpoint {record.checkpoint_id} failed: {type(failure).__name__}: {failure}", counts=True)
        elif closed:
            record.outcome = self.owner.closed_committed(record.commit_error)
        if record.outcome.committed:
            self._completed(record, tasks, manifests or {}, began)
            self._commit_sinks(record, tasks)
        else:
            if not record.commit_sent:
                self._abort_sinks(tasks)
            self._failed(record, began)
        record.settled = True
        return record

    def _commit_sinks(self, record: CheckpointRecord, tasks: list[Task]) -> None:
        """n is complete: the sinks make what they prepared for it visible (a sink that
        cannot keeps it pending, and its task's next recovery commits it)."""
        if record.sink_writes:
            self.faults.hit("after_kafka_commit")
        commit_prepared((sink for task in tasks for sink in task.sinks.values()), record.checkpoint_id)
        if record.sink_writes:
            record.step_done("sink commit")

    @staticmethod
    def _why_not_committed(record: CheckpointRecord, failure: Exception | None) -> str:
        if record.commit_error is not None and record.commit_error.code() != KafkaError._STATE:
            return verdict(f"committing checkpoint {record.checkpoint_id}'s transaction", record.commit_error)[0]
        if failure is not None:
            return f"{type(failure).__name__}: {failure} (its transactions were given up already)"
        return "its transactions were given up for another reason before its commit"

    def _write_and_commit(self, record: CheckpointRecord, tasks: list[Task], stateful: list[Task],
                          barriers: dict[str, Barrier], captured: dict, snapshotted: set[str], began: float,
                          epoch: int | None) -> dict[str, Manifest]:
        """The asynchronous part (or, without a pool, the rest of the synchronous one):
        write, snapshot, upload, manifests (or, for tasks whose snapshot is not due, the
        changelog), commit. Returns the manifest each task's committed offsets name."""
        n = record.checkpoint_id
        deadline = began + self.timeout_s
        name = snapshot_name(n, self.token)
        written: dict[str, WrittenCapture] = {}
        try:
            for task in stateful:
                written[task.id] = task.state.write_snapshot(captured[task.id], name if task.id in snapshotted else None)
        finally:
            for task in stateful:
                if task.id not in written:
                    task.state.drop_capture()  # a rewind (or the worker's end) follows
        record.step_done("flush+snapshot")
        record.phase = Phase.FLUSHED
        self.faults.hit("after_flush")
        record.phase = Phase.SNAPSHOTTED
        self.faults.hit("after_snapshot")

        manifests = self._persist(record, [t for t in stateful if t.id in snapshotted], barriers, written,
                                  deadline, name)
        record.phase = Phase.PERSISTED
        self.faults.hit("after_persist")

        elapsed = time.monotonic() - began
        if elapsed > self.timeout_s:
            raise CheckpointTimeoutError(
                f"checkpoint {n} took {elapsed:.1f}s until its snapshots were durable, over its "
                f"{self.timeout_s:g}s timeout")
        logging_tasks = [t for t in stateful if t.id not in snapshotted]
        logged = self.changelog.records(n, logging_tasks, barriers, written) if logging_tasks else []
        record.logged_tasks, record.logged_bytes = len(logging_tasks), sum(len(r[2]) + len(r[3]) for r in logged)
        # The snapshot each task's offsets name: its new one, or the one its changelog continues.
        named = {**{t.id: t.completed.manifest for t in logging_tasks}, **manifests}
        if logged:
            if epoch is None:
                raise RuntimeError("a changelog needs checkpoints committed in the background (exactly-once)")
            record.commit_error = self.owner.produce_closed(epoch, logged)
            if record.commit_error is not None:
                return named
            record.step_done("changelog")
            self.faults.hit("after_changelog")
        offsets = []
        for task in tasks:
            snapshot = named[task.id].snapshot if task.id in named else None
            metadata = format_metadata(n, snapshot, task.completed.savepoint)
            barrier = barriers[task.id]
            for topic, offset in ((task.topic, barrier.offset), *barrier.others):
                if offset is not None:  # an input never read stays where it was
                    offsets.append(TopicPartition(topic, task.partition, offset, metadata=metadata))
            record.offsets[task.id] = barrier.offset
            record.barriers[task.id] = barrier
        record.commit_sent = True
        if epoch is not None:
            record.commit_error = self.owner.commit_closed(epoch, offsets)
            if record.commit_error is not None:
                return named
        else:
            record.outcome = self.owner.commit(offsets, self.consumer)
            if not record.outcome.committed:
                return named
        record.step_done("commit")
        record.phase = Phase.COMMITTED
        self.faults.hit("after_commit")
        self._retain(record, [t for t in stateful if t.id in manifests], manifests)
        return named

    def _persist(self, record: CheckpointRecord, tasks: list[Task], barriers: dict[str, Barrier],
                 written: dict[str, WrittenCapture], deadline: float, name: str) -> dict[str, Manifest]:
        """Every task's new files at once, then every manifest at once: on an object store
        a checkpoint costs round trips in sequence, not bytes."""
        n = record.checkpoint_id
        local_dirs = {t.id: written[t.id].local_dir for t in tasks}
        plans = {t.id: t.state.plan_upload(local_dirs[t.id], t.completed.manifest) for t in tasks}
        run_all([call for t in tasks for call in t.state.persister.upload_calls(plans[t.id])],
                self.pool, deadline, f"checkpoint {n}")
        continued_from = self.changelog.continued_from(tasks) if self.changelog is not None else {}
        manifests: dict[str, Manifest] = {}
        writes = []
        for task in tasks:
            retention = self.manager.retention[(task.topic, task.partition)]
            build = partial(Manifest, job=self.job, task=task.id, topic=task.topic,
                            partition=task.partition, checkpoint_id=n, snapshot=name,
                            worker=self.worker, created_at=record.started_at,
                            source_offset=barriers[task.id].offset,
                            input_offsets={t: o for t, o in barriers[task.id].others if o is not None},
                            topic_partitions=task.topic_partitions,
                            lineage=retention.lineage_for_next(),
                            changelog_offset=continued_from.get(task.id))
            manifest = manifests[task.id] = task.state.manifest_for(plans[task.id], build)
            writes.append(partial(task.state.persister.write_manifest, manifest, self._mid_manifest_fault(task)))
            record.size_bytes += manifest.total_bytes
            record.uploaded_bytes += manifest.uploaded_bytes
            record.state_keys += sum(manifest.state_keys.values())
        run_all(writes, self.pool, deadline, f"checkpoint {n}'s manifests")
        for task in tasks:
            task.attempted_manifest = manifests[task.id]
        record.step_done("upload")
        return manifests

    def _retain(self, record: CheckpointRecord, stateful: list[Task], manifests: dict[str, Manifest]) -> None:
        """After the commit: older local snapshot copies go, and each task's retention
        deletes what no retained checkpoint lists. Tasks' deletions are independent
        (separate directories and prefixes) and run at once; each task's finish before
        its next upload, which may re-create a file it deletes."""
        calls = [partial(self._retain_task, task, manifests[task.id]) for task in stateful]
        for future in [self.pool.submit(call) for call in calls]:
            if future.exception() is not None:
                log.warning("retention after checkpoint %d failed: %s", record.checkpoint_id, future.exception())
        record.step_done("retention")

    def _retain_task(self, task: Task, manifest: Manifest) -> None:
        task.state.directory.prune_snapshots(keep={manifest.snapshot})
        self.manager.retention[(task.topic, task.partition)].completed(manifest)
        if self.changelog is not None:
            self.changelog.trim(task, manifest)

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
        for task in tasks:
            task.completed = CompletedCheckpoint(n, record.offsets[task.id], manifests.get(task.id),
                                                 savepoint=task.completed.savepoint,
                                                 other_offsets=record.barriers[task.id].others)
            task.attempted_manifest = None
        record.duration_s = time.monotonic() - began
        self.stats.add(record)
        m = self.metrics
        m.labels(m.checkpoints_completed).inc()
        m.labels(m.checkpoint_last_duration).set(record.duration_s)
        m.labels(m.checkpoint_duration).observe(record.duration_s)
        m.labels(m.checkpoint_last_size).set(record.size_bytes)
        m.labels(m.checkpoint_last_uploaded).set(record.uploaded_bytes)
        m.labels(m.checkpoint_last_logged).set(record.logged_bytes)
        m.labels(m.checkpoint_alignment).set(record.alignment_s)
        m.labels(m.checkpoint_sync_duration).observe(record.sync_s)
        m.labels(m.checkpoint_async_duration).observe(record.async_s)
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
