"""One worker process: one consumer, one transaction owner, all its tasks in one loop.

`Worker.run` is the process's life: claim the worker slot, build the parts, run the loop
(service/runtime/loop.py), finish with a final checkpoint, and turn whatever ended the
run into the exit code a supervisor reads.
"""

from __future__ import annotations

import gc
import logging
import signal
import uuid
from functools import partial
from typing import Any

from connectors.changelog import Changelog
from connectors.group import GroupView, client_id, new_stamp
from connectors.kafka_source import KafkaSource, consumer_config
from connectors.offsets import ClusterOffsets
from connectors.transactions import AtLeastOnceOwner, OutputOwner, TransactionOwner
from eos.errors import (
    CheckpointsFailingError,
    DuplicateWorkerError,
    EosError,
    RecordError,
    WorkerReplacedError,
)
from service.checkpointing.changelog import CheckpointChangelog
from service.checkpointing.coordinator import CheckpointCoordinator
from service.checkpointing.faults import FaultInjector
from service.checkpointing.recovery import restore_task
from service.checkpointing.scrubber import StorageScrubber
from service.job.api import Job
from service.job.planner import plan
from service.membership.departed import DepartedWorkerFencer
from service.membership.incarnation import Incarnation
from service.membership.register import SlotRegister
from service.membership.slot import SlotGuard, transactional_ids
from service.monitoring.metrics import WorkerMetrics
from service.monitoring.monitor import WorkerMonitor
from service.monitoring.status import FAILED, RUNNING, STOPPED, STOPPING
from service.runtime.colocation import Colocation
from service.runtime.config import EXACTLY_ONCE, OFFSET_COMMIT_INTERVAL_S, WorkerConfig
from service.runtime.error_policy import ErrorHandler, dead_letter_topic
from service.runtime.loop import ProcessingLoop
from service.runtime.missing_input import MissingInput
from service.runtime.task_manager import TaskManager
from service.runtime.topics import PartitionCounts, check_key_partitioning, ensure_topics
from service.savepoints.control import SavepointControl, default_savepoint_dir
from service.savepoints.publish import add_manifest_route
from service.web.state_queries import StateQueries, add_state_route
from service.savepoints.resume import SavepointResume
from service.tables.global_table import GlobalTable
from statestore.storage import open_storage

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_RECORD_ERROR = 2
EXIT_REPLACED = 3
EXIT_CHECKPOINTS_FAILING = 4
EXIT_DUPLICATE = 5

# What ended a run, and how a supervisor should read it.
_EXITS: tuple[tuple[type[EosError], int, str], ...] = (
    (RecordError, EXIT_RECORD_ERROR, "stopping on a bad record"),
    (WorkerReplacedError, EXIT_REPLACED, "replaced"),
    (DuplicateWorkerError, EXIT_DUPLICATE, "duplicate worker id"),
    (CheckpointsFailingError, EXIT_CHECKPOINTS_FAILING, "checkpoints keep failing"),
    (EosError, EXIT_ERROR, "stopping"),
)


class Worker:
    def __init__(self, config: WorkerConfig, job: Job, metrics: WorkerMetrics | None = None) -> None:
        config.validate()
        self.config = config
        self.job = job
        self.group = config.group or job.name
        self.plan = plan(job, self.group)
        self.metrics = metrics or WorkerMetrics(self.group, config.worker_id)
        # A fresh token per process incarnation names its snapshots and working dirs, so
        # nothing it writes can collide with a predecessor or a zombie of the same slot;
        # the stamp tells the group's members which process of a slot started last.
        self.token = uuid.uuid4().hex[:8]
        self.stamp = new_stamp()
        self._stop_requested = False
        self.owner: OutputOwner | None = None
        self.source: KafkaSource | None = None
        self.manager: TaskManager | None = None
        self.loop: ProcessingLoop | None = None
        self.scrubber: StorageScrubber | None = None
        self.global_tables: dict[str, GlobalTable] = {}
        self.slot: SlotGuard | None = None
        self.group_view: GroupView | None = None
        self.monitor = WorkerMonitor(config, self.group, job.name, self.metrics)
        self.incarnation = Incarnation(config.state_dir, self.group, config.worker_id, self.stamp)
        # The exception that ended run() with a failure (the restart strategy reads it).
        self.failure: BaseException | None = None
        self.savepoints = SavepointControl(
            worker_id=config.worker_id, group=self.group, job_name=job.name, params=config.params,
            default_dir=config.savepoint_dir or default_savepoint_dir(config.checkpoint_storage, self.group),
            # Per worker: workers of one job may share a state directory.
            scratch_dir=config.state_dir / self.group / "savepoint-scratch" / config.worker_id,
            request_stop=self.request_stop,
            s3=config.s3)
        self.queries = StateQueries(config.worker_id, self.group,
                                    {"bootstrap.servers": config.bootstrap_servers, **config.kafka_config})
        self.savepoints.add_routes(self.monitor.router)
        add_manifest_route(self.monitor.router, self.savepoints)
        add_state_route(self.monitor.router, self.queries)
        # True when a client could not be closed in time: the process should then exit at
        # once rather than wait on it again in the client's destructor.
        self.abandoned_clients = False

    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: finish the batch, take a final checkpoint, exit 0."""
        if not self._stop_requested:
            log.info("stop requested: finishing with a final checkpoint")
        self._stop_requested = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            self.monitor.count_restarts(self.incarnation.begin())
            self.monitor.start_server()
            self._start()
            _freeze_startup_objects()
            self.monitor.set_state(RUNNING)
            self.loop.run(lambda: self._stop_requested)
            self.monitor.set_state(STOPPING)
            self._finish()
            self.monitor.set_state(STOPPED)
            return EXIT_OK
        except EosError as exc:
            return self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected client failure
            log.exception("unexpected failure")
            return self._fail(exc)
        finally:
            self.savepoints.cancel_on_exit("the worker stopped")
            self._close()
            # Held by another process (newer, or alive at start): the next process of this
            # slot here waits for that one rather than take the slot back (see SlotGuard.claim).
            held = isinstance(self.failure, (WorkerReplacedError, DuplicateWorkerError)) and self.slot is not None
            self.incarnation.end(clean=self.failure is None, replaced_by=self.slot.replaced_by if held else None)
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
                                         errors.dlq_topic if errors.uses_dead_letter else None,
                                         changelogs=c.snapshot_interval_s > 0)
        check_key_partitioning(self.plan, {**client_config, "isolation.level": "read_committed"}, partition_counts)
        for node in self.plan.transactional_sinks():  # reachable and as declared, before any input is read
            sink = node.options["sink"]
            sink.check(c.processing_guarantee == EXACTLY_ONCE)
            log.info("sink %r: %s", node.uid, sink.describe())
        storage = open_storage(c.checkpoint_storage, c.s3)
        if not c.checkpoints_enabled:
            log.warning(
                "CHECKPOINTS ARE DISABLED (--checkpoint-interval 0): offsets alone are committed "
                "every %.0fs, no state is snapshotted, and after a restart, rebalance or failed "
                "commit every stateful operator starts with EMPTY state at the committed offsets. "
                "Outputs may repeat (at-least-once) and aggregates restart from scratch.",
                OFFSET_COMMIT_INTERVAL_S)
        call_timeout = max(10.0, c.checkpoint_timeout_s)
        self.group_view = GroupView(self.group, client_config, timeout_s=call_timeout)
        slot = self.slot = SlotGuard(self.group_view, SlotRegister(storage, self.group, c.worker_id, self.stamp),
                                     c.worker_id, self.stamp, static=c.static_membership,
                                     waits=self.monitor.kafka_waits)
        # One process per worker id: wait out a predecessor's expiring session, refuse a live twin.
        slot.claim(c.session_timeout_ms / 1000 + CLAIM_MARGIN_S, self.incarnation.known_dead,
                   predecessor_replaced=self.incarnation.predecessor_replaced)
        self.owner = self._output_owner(slot, {**kafka, **self.monitor.producer_settings()}, call_timeout)
        fencer = None
        if c.processing_guarantee == EXACTLY_ONCE and c.fence_departed_workers:
            fencer = DepartedWorkerFencer(
                self.group, c.worker_id,
                {**client_config, "transaction.timeout.ms": int(c.transaction_timeout_s * 1000)},
                timeout_s=call_timeout)
        # The user's auto.offset.reset says only where partitions with nothing committed
        # start: the consumer itself never resets (service/runtime/missing_input.py).
        start_from = str(kafka.pop("auto.offset.reset", c.auto_offset_reset))
        consumer_extra = {**kafka, **self.monitor.consumer_settings(self._positions)}
        self.source = KafkaSource(consumer_config(
            c.bootstrap_servers, self.group, client_id(self.group, c.worker_id, self.stamp, self.monitor.advertised_urls()),
            session_timeout_ms=c.session_timeout_ms, max_poll_interval_ms=c.max_poll_interval_ms,
            static_membership=c.static_membership, worker_id=c.worker_id, extra=consumer_extra),
            start_from=start_from, waits=self.monitor.kafka_waits)
        global_tables, global_positions = self._global_tables(partition_counts, c.bootstrap_servers,
                                                              {**kafka, "isolation.level": "read_committed"})
        offsets = ClusterOffsets(client_config, waits=self.monitor.kafka_waits)
        restore = restore_task
        if resume is not None:
            resume.check_group_history(partial(offsets.settled_commits, self.group), partition_counts)
            restore = resume.restore_fn(restore_task)
        owner = self.owner
        missing_input = MissingInput(c.on_missing_input, offsets, self.metrics)
        changelog = Changelog(client_config, timeout_s=call_timeout)
        self.manager = TaskManager(self.plan, c, self.source, lambda: owner.produce, storage, self.token,
                                   self.metrics, errors, PartitionCounts(client_config), missing_input, restore,
                                   global_tables, changelog=changelog,
                                   colocation=Colocation(self.plan, partition_counts))
        coordinator = CheckpointCoordinator(
            self.manager, self.owner, self.source, job=self.plan.job.name,
            worker=c.worker_id, token=self.token, interval_s=c.checkpoint_interval_s,
            timeout_s=c.checkpoint_timeout_s, min_pause_s=c.min_pause_s, metrics=self.metrics,
            faults=self._faults(),
            changelog=CheckpointChangelog(changelog, self.group, c.snapshot_interval_s) if c.snapshot_interval_s > 0
            else None)
        self.monitor.attach(self.manager, coordinator)
        manager = self.manager
        self.scrubber = StorageScrubber(lambda: manager.tasks.values(), c.storage_scrub_interval_s, self.metrics)
        self.savepoints.attach(self.plan, self.manager, self.source, partition_counts, offsets)
        self.queries.attach(self.plan, self.manager, partition_counts)
        self.loop = ProcessingLoop(
            source=self.source, owner=self.owner, manager=self.manager, coordinator=coordinator,
            missing_input=missing_input, global_positions=global_positions,
            monitor=self.monitor, metrics=self.metrics, input_topics=self.plan.all_input_topics + [t.options["topic"] for t in self.plan.global_tables],
            consume_batch=c.consume_batch, state_cache_bytes=c.state_cache_bytes,
            tolerable_failures=c.tolerable_failures, fencer=fencer, tick=self._tick,
            group_view=self.group_view)
        # The producer starts with the first assignment (ProcessingLoop._assigned).
        self.source.subscribe(self.manager.colocation.group_topics)
        offsets.connect()  # while the consumer joins
        self.scrubber.start()
        log.info("worker %s of job %s (group %s, incarnation %s) started: stages %s", c.worker_id,
                 self.plan.job.name, self.group, self.stamp,
                 ", ".join(f"{s.id}<-{s.topic}" for s in self.plan.stages))

    def _global_tables(self, partition_counts: dict[str, int], bootstrap: str,
                       kafka: dict[str, Any]) -> tuple[dict[str, GlobalTable], list[Any]]:
        """Each global table of the job, read to the end of its topic before the worker
        joins the group; and where the consumer continues reading them."""
        tables, positions = {}, []
        for node in self.plan.global_tables:
            table = self.global_tables[node.uid] = tables[node.uid] = GlobalTable(
                node, self.config.state_dir, self.group, self.config.worker_id)
            positions += table.bootstrap({"bootstrap.servers": bootstrap, **kafka},
                                         partition_counts[table.topic], GLOBAL_TABLE_BOOTSTRAP_S)
        return tables, positions

    def _faults(self) -> FaultInjector:
        faults = FaultInjector()
        faults.fail_consumer = self.source.fail
        return faults

    def _output_owner(self, slot: SlotGuard, extra: dict[str, Any], call_timeout: float) -> OutputOwner:
        c = self.config
        if c.processing_guarantee == EXACTLY_ONCE:
            return TransactionOwner(
                c.bootstrap_servers, transactional_ids(self.group, c.worker_id), extra=extra,
                transaction_timeout_ms=int(c.transaction_timeout_s * 1000), call_timeout_s=call_timeout,
                slot_holder=slot.holder, waits=self.monitor.kafka_waits)
        return AtLeastOnceOwner(c.bootstrap_servers, extra=extra, call_timeout_s=call_timeout,
                                slot_holder=slot.holder, waits=self.monitor.kafka_waits)

    def _tick(self, loop: ProcessingLoop) -> None:
        """The loop's turn for requests that came over HTTP: savepoints, state queries."""
        self.savepoints.tick(loop)
        self.queries.tick(loop)

    def _positions(self) -> dict[tuple[str, int], int | None]:
        return self.manager.positions() if self.manager is not None else {}

    def _finish(self) -> None:
        loop = self.loop
        savepoint = self.savepoints.stopped_by_savepoint
        if savepoint is not None:
            # The savepoint is the job's last committed state: anything read since (say,
            # partitions a departing worker's rebalance handed over) must not commit.
            self.owner.close(abort=self.manager.changed())
            log.info("stopped with savepoint %s", savepoint)
            return
        record = loop.checkpoint("shutdown")
        if record is not None and not record.outcome.committed:
            if record.outcome.counts:
                raise CheckpointsFailingError(f"the final checkpoint failed: {record.error}")
            # The group moved on under it (KIP-447 refused the commit): the tasks are
            # back at their last checkpoint, and the partitions' next owner redoes the rest.
            log.warning("the final checkpoint %d was not committed: %s; the next owner of its partitions redoes "
                        "that work from the last completed checkpoint", record.checkpoint_id, record.error)
        last = max([loop.coordinator.last_id] + [t.completed.checkpoint_id for t in self.manager.tasks.values()])
        if self.config.leave_group_on_stop:
            # Nothing changed since the final checkpoint, so giving the partitions up aborts nothing.
            if loop.leave_group(max(30.0, self.config.checkpoint_timeout_s),
                                still_member=lambda: self.group_view.lists(self.config.worker_id)):
                log.info("left the group; the remaining workers take over its partitions")
            else:
                log.warning("could not confirm leaving the group; if still listed, its partitions move "
                            "after the session timeout")
        log.info("stopped cleanly; last completed checkpoint %d; %s", last, loop.coordinator.stats.summary())

    def _fail(self, exc: BaseException) -> int:
        self.failure = exc
        code, what = next(((code, what) for kind, code, what in _EXITS if isinstance(exc, kind)),
                          (EXIT_ERROR, "stopping"))
        log.error("%s: %s", what, exc)
        self.monitor.set_state(FAILED, error=f"{what}: {exc}")
        return code

    def _close(self) -> None:
        if self.scrubber is not None:
            self.scrubber.stop()
        for table in self.global_tables.values():
            table.close()
        if self.loop is not None:
            self.loop.coordinator.wait_in_flight()  # its snapshot writes into the stores closed next
        if self.manager is not None:
            self.manager.close_all()
        if self.source is not None:
            # Closing may wait on a group that is moving partitions (after a failure, or a
            # stop that came while this worker was still joining, seen with a static
            # member staying in the group); the session timeout bounds what waiting
            # longer could achieve.
            bound = self.config.session_timeout_ms / 1000 + 5
            if not self.source.close(bound):
                log.warning("the consumer did not close within %.0fs; the group drops this worker "
                            "after its session timeout", bound)
                self.abandoned_clients = True
        if self.owner is not None:
            # After a failure the open transaction is aborted on the way out, unless the
            # slot is another process's now: its transactions are not this one's to touch.
            self.owner.close(abort=self.failure is not None and not isinstance(self.failure, WorkerReplacedError))
            self.abandoned_clients = self.abandoned_clients or self.owner.abandoned
        if self.loop is not None:
            self.loop.coordinator.close()


def _freeze_startup_objects() -> None:
    """Moves everything alive after start (modules, the plan, clients: hundreds of
    thousands of objects) out of the garbage collector's reach. Without it every full
    collection, which the record path's allocations trigger over and over, walks all of
    them again: a worker writing 1,000,000 rows to PostgreSQL spent about a fifth of its
    CPU time on it."""
    gc.collect()
    gc.freeze()

# A global table is read to the end of its topic at start within this long.
GLOBAL_TABLE_BOOTSTRAP_S = 600.0

# A departing member is listed until its session expires and the coordinator notices;
# a claim waits this much longer than the session timeout before calling it alive.
CLAIM_MARGIN_S = 3.0
