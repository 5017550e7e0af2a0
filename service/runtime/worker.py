"""One worker process: one consumer, one producer, all its tasks in one loop.

    consume a batch -> run each partition's records through its task's chain
    -> (checkpoint due?) -> coordinator runs a checkpoint -> repeat

Single-threaded on purpose: there is no lock anywhere on the record path, and a
checkpoint never races with processing because processing stops while it runs.
"""

from __future__ import annotations

import logging
import signal
import uuid
from typing import Any

from confluent_kafka import KafkaException

from connectors.kafka_sink import AtLeastOnceProducer, OutputCommitter, TransactionalProducer
from connectors.kafka_source import KafkaSource, consumer_config
from eos.errors import CheckpointError, EosError, ProducerFencedError, RecordError
from service.checkpointing.coordinator import CheckpointCoordinator
from service.checkpointing.faults import FaultInjector
from service.checkpointing.recovery import restore_task
from service.job.api import Job
from service.job.planner import plan
from service.membership.group import DepartedWorkerFencer, GroupView, SlotGuard, transactional_id
from service.membership.incarnation import Incarnations
from service.monitoring.metrics import WorkerMetrics
from service.monitoring.monitor import WorkerMonitor
from service.monitoring.status import FAILED, RUNNING, STOPPED, STOPPING
from service.runtime.config import EXACTLY_ONCE, OFFSET_COMMIT_INTERVAL_S, WorkerConfig
from service.runtime.error_policy import ErrorHandler, dead_letter_topic
from service.runtime.task_manager import TaskManager
from service.runtime.topics import PartitionCounts, ensure_topics
from service.savepoints.control import SavepointControl, default_savepoint_dir
from service.savepoints.resume import SavepointResume
from statestore.storage import open_storage

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_RECORD_ERROR = 2
EXIT_FENCED = 3
EXIT_CHECKPOINTS_FAILING = 4
EXIT_ERROR = 1


class Worker:
    def __init__(self, config: WorkerConfig, job: Job, metrics: WorkerMetrics | None = None) -> None:
        config.validate()
        self.config = config
        self.job = job
        self.group = config.group or job.name
        self.plan = plan(job, self.group)
        self.metrics = metrics or WorkerMetrics(self.group, config.worker_id)
        # A fresh token per process incarnation: names its snapshots and working dirs, so
        # nothing it writes can collide with a predecessor or a zombie of the same slot.
        self.token = uuid.uuid4().hex[:8]
        self._stop_requested = False
        self.committer: OutputCommitter | None = None
        self.source: KafkaSource | None = None
        self.manager: TaskManager | None = None
        self.coordinator: CheckpointCoordinator | None = None
        self.group_view: GroupView | None = None
        self.last_error: str | None = None
        self.monitor = WorkerMonitor(config, self.group, job.name, self.metrics)
        self.incarnations = Incarnations(config.state_dir, self.group, config.worker_id)
        # The exception that ended run() with a failure (the restart strategy reads it).
        self.failure: BaseException | None = None
        self.savepoints = SavepointControl(
            worker_id=config.worker_id, group=self.group, job_name=job.name, params=config.params,
            default_dir=config.savepoint_dir or default_savepoint_dir(config.checkpoint_storage, self.group),
            scratch_dir=config.state_dir / self.group / "savepoint-scratch", request_stop=self.request_stop,
            s3=config.s3)
        self.savepoints.add_routes(self.monitor.router)

    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: finish the batch, take a final checkpoint, exit 0."""
        if not self._stop_requested:
            log.info("stop requested: finishing with a final checkpoint")
        self._stop_requested = True

    # True when a client could not be closed in time: the process should then exit at
    # once rather than wait on it again in the client's destructor.
    abandoned_clients = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        code = EXIT_ERROR
        try:
            self.monitor.count_restarts(self.incarnations.begin())
            self.monitor.start_server()
            self._start()
            self.monitor.set_state(RUNNING)
            self._loop()
            self.monitor.set_state(STOPPING)
            self._finish()
            code = EXIT_OK
            self.monitor.set_state(STOPPED)
            return EXIT_OK
        except RecordError as exc:
            return self._fail(exc, EXIT_RECORD_ERROR, "stopping on a bad record")
        except ProducerFencedError as exc:
            return self._fail(exc, EXIT_FENCED, "fenced", abort=False)
        except CheckpointError as exc:
            return self._fail(exc, EXIT_CHECKPOINTS_FAILING, "checkpoints keep failing")
        except EosError as exc:
            return self._fail(exc, EXIT_ERROR, "stopping")
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected client failure
            # A fenced producer fails its next produce() with a bare fatal error; the
            # producer itself can say whether fencing is behind it.
            fenced = self.committer.fencing() if isinstance(exc, KafkaException) and self.committer else None
            if fenced is not None:
                return self._fail(fenced, EXIT_FENCED, "fenced", abort=False)
            log.exception("unexpected failure")
            return self._fail(exc, EXIT_ERROR, "stopping")
        finally:
            self.savepoints.cancel_on_exit("the worker stopped")
            self._close()
            self.incarnations.end(clean=code == EXIT_OK)
            self.monitor.stop()

    def _start(self) -> None:
        c = self.config
        kafka = dict(c.kafka_config)
        resume = None
        if c.from_savepoint:  # every check that needs no broker, before anything is created
            resume = SavepointResume.open(c.from_savepoint, self.plan,
                                          allow_non_restored_state=c.allow_non_restored_state,
                                          cache_dir=c.state_dir / self.group / "savepoint-cache", s3=c.s3)
        errors = ErrorHandler(c.error_policy, self.plan.error_overrides(), dead_letter_topic(self.group),
                              on_dead_letter=self.metrics.labels(self.metrics.dlq_records).inc)
        # Admin-style clients (topics, group view, fencer, partition counts) share these settings.
        client_config = {"bootstrap.servers": c.bootstrap_servers, **kafka}
        partition_counts = ensure_topics(self.plan, client_config,
                                         errors.dlq_topic if errors.uses_dead_letter else None)
        storage = open_storage(c.checkpoint_storage, c.s3)
        if not c.checkpoints_enabled:
            log.warning(
                "CHECKPOINTS ARE DISABLED (--checkpoint-interval 0): offsets alone are committed "
                "every %.0fs, no state is snapshotted, and after a restart, rebalance or failed "
                "commit every stateful operator starts with EMPTY state at the committed offsets. "
                "Outputs may repeat (at-least-once) and aggregates restart from scratch.",
                OFFSET_COMMIT_INTERVAL_S)
        call_timeout = max(10.0, c.checkpoint_timeout_s)
        producer_extra = {**kafka, **self.monitor.producer_settings()}
        self.group_view = GroupView(self.group, client_config,
                                    timeout_s=call_timeout)
        fencer = None
        # The producer starts inside the first assignment (TaskManager.on_assign).
        if c.processing_guarantee == EXACTLY_ONCE:
            self.committer = TransactionalProducer(
                c.bootstrap_servers, transactional_id(self.group, c.worker_id), extra=producer_extra,
                transaction_timeout_ms=int(c.transaction_timeout_s * 1000), call_timeout_s=call_timeout,
                waits=self.monitor.kafka_waits,
                confirm_slot=SlotGuard(self.group_view, c.worker_id, lambda: self.source.member_ids(),
                                       self.incarnations.superseded, self.monitor.kafka_waits).confirm)
            if c.fence_departed_workers:
                fencer = DepartedWorkerFencer(
                    self.group_view, c.worker_id,
                    {**client_config, "transaction.timeout.ms": int(c.transaction_timeout_s * 1000)},
                    timeout_s=call_timeout)
        else:
            self.committer = AtLeastOnceProducer(c.bootstrap_servers, extra=producer_extra,
                                                 call_timeout_s=call_timeout, waits=self.monitor.kafka_waits)
        consumer_extra = {**kafka, **self.monitor.consumer_settings(self._positions)}
        self.source = KafkaSource(consumer_config(
            c.bootstrap_servers, self.group, c.worker_id, session_timeout_ms=c.session_timeout_ms,
            max_poll_interval_ms=c.max_poll_interval_ms, auto_offset_reset=c.auto_offset_reset,
            static_membership=c.static_membership, extra=consumer_extra), waits=self.monitor.kafka_waits)
        self.manager = TaskManager(self.plan, c, self.source, self.committer, storage, self.token,
                                   self.metrics, errors,
                                   PartitionCounts(client_config), fencer)
        self.coordinator = CheckpointCoordinator(
            self.manager, self.committer, self.source.consumer, job=self.plan.job.name,
            worker=c.worker_id, token=self.token, interval_s=c.checkpoint_interval_s,
            timeout_s=c.checkpoint_timeout_s, min_pause_s=c.min_pause_s,
            tolerable_failures=c.tolerable_failures, metrics=self.metrics, faults=FaultInjector())
        self.manager.checkpoint_all = self.coordinator.trigger
        self.monitor.attach(self.manager, self.coordinator)
        if resume is not None:
            resume.check_group_history(self.source.consumer, partition_counts)
            self.manager.restore_task = resume.restore_fn(restore_task)
        self.savepoints.attach(self.plan, self.manager, self.coordinator, self.source.consumer, partition_counts,
                               client_config)
        self.source.subscribe(self.plan.input_topics, self.manager)
        log.info("worker %s of job %s (group %s) started: stages %s", c.worker_id, self.plan.job.name,
                 self.group, ", ".join(f"{s.id}<-{s.topic}" for s in self.plan.stages))

    def _positions(self) -> dict[tuple[str, int], int | None]:
        return self.manager.positions() if self.manager is not None else {}

    def _loop(self) -> None:
        source, committer, coordinator, monitor = self.source, self.committer, self.coordinator, self.monitor
        savepoints = self.savepoints
        manager = self.manager
        batch = self.config.consume_batch
        records_in = {t: self.metrics.labels(self.metrics.records_in, topic=t) for t in self.plan.input_topics}
        while not self._stop_requested:
            starts = manager.task_starts
            msgs = source.consume(batch, 0.1)
            if msgs and manager.task_starts != starts:
                msgs = self._drop_stale(msgs, starts)
            try:
                if msgs:
                    monitor.records_in += len(msgs)
                    self._dispatch(msgs, records_in)
                    self._bound_cache()
                committer.poll()
            except (ProducerFencedError, KafkaException) as exc:
                self._resume_after_fencing(exc)
                continue
            savepoints.tick()
            if coordinator.due():
                coordinator.trigger()
                monitor.publish()
            monitor.tick()

    def _resume_after_fencing(self, exc: Exception) -> None:
        """An output refused, or the producer's poll failing, because this worker's
        producer was fenced. A peer that saw it missing from the group (after a broker
        restart, say) ends its transaction as it would a dead worker's; the worker then
        initialises again and redoes the work since its last checkpoint. Replaced by a
        newer instance of its slot, it stops: the abort raises ProducerFencedError (see
        SlotGuard)."""
        fenced = exc if isinstance(exc, ProducerFencedError) else self.committer.fencing()
        if fenced is None:
            raise exc
        log.warning("the producer was fenced: %s; checking whether this process still holds its slot", fenced)
        self.committer.abort()
        self.manager.rewind_all()

    def _drop_stale(self, msgs: list, starts: int) -> list:
        """A rebalance or rewind served inside the last consume call (re)started some
        tasks at their committed offsets, and the batch may still hold records fetched
        for their old position, before or after them. Those tasks' records are dropped
        and their partitions sought back to where each task now begins."""
        tasks = self.manager.tasks
        restarted = {key for key, task in tasks.items() if task.incarnation > starts}
        if not restarted:
            return msgs
        kept, dropped = [], set()
        for m in msgs:
            key = (m.topic(), m.partition())
            if key in restarted:
                dropped.add(key)
            else:
                kept.append(m)
        for key in dropped:
            self.source.seek(self.manager.position_of(tasks[key]))
        if dropped:
            log.debug("dropped %d records fetched across a task restart; re-reading %d partitions",
                      len(msgs) - len(kept), len(dropped))
        return kept

    def _dispatch(self, msgs: list, records_in: dict) -> None:
        """Splits the batch into runs of one partition and hands each to its task."""
        tasks = self.manager.tasks
        start = 0
        first = msgs[0]
        current = (first.topic(), first.partition())
        for i in range(1, len(msgs)):
            m = msgs[i]
            tp = (m.topic(), m.partition())
            if tp != current:
                self._run_task(tasks.get(current), msgs[start:i], current, records_in)
                start, current = i, tp
        self._run_task(tasks.get(current), msgs[start:] if start else msgs, current, records_in)

    @staticmethod
    def _run_task(task: Any, run: list, tp: tuple[str, int], records_in: dict) -> None:
        if task is None:
            return  # the partition was revoked after these records were fetched
        task.process(run)
        records_in[tp[0]].inc(len(run))

    def _bound_cache(self) -> None:
        stateful = [t.state for t in self.manager.tasks.values() if t.state is not None]
        if not stateful:
            return
        budget = self.config.state_cache_bytes // len(stateful)
        for state in stateful:
            if state.cached_bytes() > budget:
                state.spill()

    def _finish(self) -> None:
        if self.coordinator is None:
            return
        savepoint = self.savepoints.stopped_by_savepoint
        if savepoint is not None:
            # The savepoint is the job's last committed state: anything read since (say,
            # partitions a departing worker's rebalance handed over) must not commit.
            if any(t.changed for t in self.manager.tasks.values()):
                self.committer.abort()
            log.info("stopped with savepoint %s", savepoint)
            return
        record = self.coordinator.trigger("shutdown")
        if record is not None and record.error and not record.interrupted:
            raise CheckpointError(f"the final checkpoint failed: {record.error}")
        last = max([self.coordinator.last_id] + [t.completed.checkpoint_id for t in self.manager.tasks.values()])
        if self.config.leave_group_on_stop:
            # Nothing changed since the final checkpoint, so the revocation commits nothing more.
            if self.source.leave_group(max(30.0, self.config.checkpoint_timeout_s),
                                       joined=lambda: self.manager.ready,
                                       still_member=lambda: self.group_view.lists(self.config.worker_id)):
                log.info("left the group; the remaining workers take over its partitions")
            else:
                log.warning("could not confirm leaving the group; if still listed, its partitions move "
                            "after the session timeout")
        log.info("stopped cleanly; last completed checkpoint %d; %s", last, self.coordinator.stats.summary())

    def _fail(self, exc: Exception, code: int, what: str, abort: bool = True) -> int:
        self.last_error = str(exc)
        self.failure = exc
        log.error("%s: %s", what, exc)
        self.monitor.set_state(FAILED, error=f"{what}: {exc}")
        if abort and self.committer is not None:
            try:
                self.committer.abort()
            except EosError as abort_exc:
                log.warning("aborting the open transaction: %s", abort_exc)
        return code

    def _close(self) -> None:
        if self.manager is not None:
            # Closing the consumer revokes its partitions; after a failure that must not
            # turn into a checkpoint of the failed epoch's work.
            self.manager.checkpoint_all = lambda reason: None
            self.manager.close_all()
        if self.source is not None:
            # After a failure, closing may wait on a group that is moving the partitions
            # away; the session timeout bounds what waiting longer could achieve.
            bound = None if self.failure is None else self.config.session_timeout_ms / 1000 + 5
            if not self.source.close(bound):
                log.warning("the consumer did not close within %.0fs; the group drops this worker "
                            "after its session timeout", bound)
                self.abandoned_clients = True
        if self.committer is not None:
            self.committer.close()
            self.abandoned_clients = self.abandoned_clients or self.committer.abandoned
        if self.coordinator is not None:
            self.coordinator.close()
