"""The worker's loop: the one place that acts on what happens to its transaction.

    consume a batch -> act on the rebalances it brought -> run each partition's records
    through its task -> (checkpoint due?) -> checkpoint -> act on the outcome -> repeat

Single-threaded on purpose: there is no lock on the record path, and a checkpoint never
races with processing because processing stops while it runs. Every call on the
transaction's owner returns an outcome, and `settle` alone acts on it: a rewind of every
task to its last completed checkpoint (counted against --tolerable-failures when it
followed a failure), or the end of the worker (replaced, fatal). Rebalances are acted on
here too, after `consume()` returns, never inside the consumer's callbacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from connectors.group import GroupView
from connectors.kafka_source import ASSIGNED, LOST, ConsumerFailed, KafkaSource, OutOfRange, Rebalance
from connectors.transactions import Kind, Outcome, OutputOwner
from eos.errors import (
    CheckpointsFailingError,
    KafkaClientError,
    SinkFencedError,
    SinkUnavailableError,
    WorkerReplacedError,
)
from service.checkpointing.coordinator import CheckpointCoordinator, CheckpointRecord
from service.membership.departed import DepartedWorkerFencer
from service.monitoring.metrics import WorkerMetrics
from service.monitoring.monitor import WorkerMonitor
from service.runtime.missing_input import MissingInput
from service.runtime.task import task_id
from service.runtime.task_manager import TaskKey, TaskManager

log = logging.getLogger(__name__)

# Leaving the group drains rebalances with calls this short, dropping what they fetch.
LEAVE_POLL_S = 0.1


class ConsumerRenewals:
    """How often the consumer was renewed lately: a consumer that fails again at once
    each time has a cause a new one does not cure."""

    def __init__(self, limit: int = 3, window_s: float = 600.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._times: list[float] = []

    def allow(self) -> bool:
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < self.window_s]
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


class ProcessingLoop:
    def __init__(self, *, source: KafkaSource, owner: OutputOwner, manager: TaskManager,
                 coordinator: CheckpointCoordinator, missing_input: MissingInput | None,
                 global_positions: list[TopicPartition] | None = None,
                 monitor: WorkerMonitor, metrics: WorkerMetrics,
                 input_topics: list[str], consume_batch: int, state_cache_bytes: int, tolerable_failures: int,
                 fencer: DepartedWorkerFencer | None, tick: Callable[["ProcessingLoop"], None],
                 group_view: GroupView | None = None) -> None:
        self.source = source
        self.owner = owner
        self.manager = manager
        self.coordinator = coordinator
        self.missing_input = missing_input
        self.monitor = monitor
        self.fencer = fencer
        # The group's members, looked at once after each rebalance by those that need them
        # (fencing, colocation): the look is a call to the cluster on the loop's thread.
        self.group_view = group_view
        # Where the global tables' partitions continue: read from the next assignment on
        # (the first, and the first of each new consumer).
        self.global_positions = global_positions or []
        self.renewals = ConsumerRenewals()
        self.consume_batch = consume_batch
        self.state_cache_bytes = state_cache_bytes
        self.tolerable_failures = tolerable_failures
        # Work done between batches on the loop's thread (savepoint commands).
        self.tick = tick
        self.failures = 0  # consecutive rewinds that count, since the last committed checkpoint
        self._records_in = {t: metrics.labels(metrics.records_in, topic=t) for t in input_topics}

    def run(self, stop_requested: Callable[[], bool]) -> None:
        while not stop_requested():
            self.turn()

    def turn(self) -> None:
        manager = self.manager
        starts = manager.task_starts
        try:
            msgs = self.source.consume(self.consume_batch, 0.1)
        except ConsumerFailed as exc:
            self.settle(self.owner.consumer_failed(exc))
            return
        rebalances = self.source.take_rebalances()
        if rebalances:
            self.rebalanced(rebalances)
        for gone in self.source.take_out_of_range():
            self._read_past_deleted(gone)
        if msgs and manager.task_starts != starts:
            msgs = self._drop_stale(msgs, starts)
        if msgs:
            self.monitor.records_in += len(msgs)
            try:
                self._dispatch(msgs)
            except KafkaException as exc:  # produce() refused by the producer itself
                self.settle(self.owner.failed(exc))
            except (SinkUnavailableError, SinkFencedError) as exc:  # a transactional sink gave up the epoch
                fenced = isinstance(exc, SinkFencedError)
                self.settle(self.owner.abort(str(exc), counts=not fenced, identity_in_doubt=fenced))
            self._bound_cache()
        manager.tick()
        self.settle(self.owner.poll())
        self.tick(self)
        ended = self.coordinator.poll()
        if ended is not None:
            self._checkpoint_ended(ended)
            self.monitor.publish()
        if self.coordinator.due():
            begun = self.coordinator.begin("interval")
            if begun is not None and begun.ended:  # it ran in the loop, or failed at its barrier
                self._checkpoint_ended(begun)
                self.monitor.publish()
        self.monitor.tick()

    # -- outcomes -----------------------------------------------------------------------

    def checkpoint(self, reason: str) -> CheckpointRecord | None:
        """One checkpoint of every changed task, run to its end (after the one in flight),
        its outcome acted on."""
        record = self.coordinator.trigger(reason)
        if record is not None:
            self._checkpoint_ended(record)
        return record

    def _checkpoint_ended(self, record: CheckpointRecord) -> None:
        if record.outcome.committed:
            self.failures = 0
            return
        if record.outcome.counts:
            log.warning("checkpoint %d failed (%d in a row): %s", record.checkpoint_id, self.failures + 1,
                        record.error)
        self.settle(record.outcome)

    def settle(self, outcome: Outcome) -> None:
        if outcome.committed:
            return
        # A checkpoint still in flight ends first: its transaction is gone with the
        # others (the owner gave them all up), but it may have committed before.
        self.coordinator.settle_in_flight()
        if outcome.kind is Kind.REPLACED:
            raise WorkerReplacedError(outcome.reason)
        if outcome.kind is Kind.FATAL:
            raise KafkaClientError(outcome.reason)
        if outcome.kind is Kind.RENEW:
            self._renew_consumer(outcome.reason)
            return
        self.monitor.note_error(outcome.reason)
        if outcome.counts:
            self.failures += 1
            if self.failures > self.tolerable_failures:
                raise CheckpointsFailingError(
                    f"{self.failures} consecutive checkpoints failed, more than the {self.tolerable_failures} "
                    f"tolerated; last error: {outcome.reason}")
        self.manager.rewind_all()

    # -- rebalances -----------------------------------------------------------------------

    def rebalanced(self, rebalances: list[Rebalance]) -> None:
        """Acts on what one or more rebalances did, taken together: a task whose partition
        was revoked or lost at any point is released first (its partition may have been
        another member's meanwhile), then the partitions assigned in the end get tasks,
        with the tasks their anchor partitions carry (service/runtime/colocation.py)."""
        looks = self.group_view is not None and (self.fencer is not None or self.manager.colocation.carries)
        members = self.group_view.members() if looks else None
        if self.fencer is not None:
            self.fencer.after_rebalance(members)
        self.manager.colocation.check_members(members or ())
        assigned = set(self.manager.tasks)
        taken: set[TaskKey] = set()
        lost = False
        for rebalance in rebalances:
            keys = self.manager.colocation.tasks_of(rebalance.partitions)
            if rebalance.kind == ASSIGNED:
                assigned.update(keys)
            else:
                assigned.difference_update(keys)
                taken.update(keys)
                lost = lost or rebalance.kind == LOST
        released = sorted(taken & set(self.manager.tasks))
        if released:
            self._release(tuple(released), lost)
        if any(r.kind == ASSIGNED for r in rebalances):
            self._assigned(tuple(sorted(assigned - set(self.manager.tasks))))

    def _assigned(self, keys: tuple[TaskKey, ...]) -> None:
        if not self.owner.started:
            # Only once a rebalance that includes this worker completed: a peer looking
            # for departed workers then lists it and leaves its transactional id alone.
            self.settle(self.owner.start())
        if self.global_positions:
            self.manager.read_global_tables(self.global_positions)
            self.global_positions = []
        if keys and self.manager.changed():
            # Restoring may take long (downloads): commit what the open transaction
            # holds first, so that it cannot outlive its timeout meanwhile.
            self.checkpoint("assign")
        self.source.start_reading(self.manager.assign(keys))

    def _release(self, keys: tuple[TaskKey, ...], lost: bool) -> None:
        """The partitions are gone when the callback returns (confluent-kafka completes
        the unassignment itself), so work on them that no checkpoint covers can no longer
        be committed: their next owner redoes it from the last checkpoint, and the open
        transaction, which holds its outputs, is aborted. Lost partitions (the session
        expired) abort in any case, with the slot in doubt: a newer process of this slot
        may have started meanwhile. A checkpoint in flight covers these tasks and its
        background part reads them until it ends, so it ends before they go."""
        if lost:
            outcome = self.owner.abort(f"lost partitions {_ids(keys)} without a chance to commit (session "
                                       "expired?)", counts=False, identity_in_doubt=True)
        elif self.manager.changed(keys) or self.coordinator.in_flight:
            outcome = self.owner.abort(f"partitions {_ids(keys)} were revoked with work no checkpoint covers; "
                                       "their next owner redoes it", counts=False)
        else:
            self.manager.release(keys)
            return
        self.coordinator.settle_in_flight()
        self.manager.release(keys)
        self.settle(outcome)

    def _renew_consumer(self, reason: str) -> None:
        """The consumer failed for good while this process still holds its slot: every
        task goes, as after lost partitions (their work since the last checkpoint is
        aborted and redone), and a new consumer joins the group under the same identity.
        Renewing over and over is not a cure: past a few in a row the worker stops."""
        if not self.renewals.allow():
            raise KafkaClientError(f"{reason}; the consumer was renewed {self.renewals.limit} times within "
                                   f"{self.renewals.window_s:.0f}s: stopping for a restart")
        log.warning("%s", reason)
        self.monitor.note_error(reason)
        outcome = self.owner.abort(reason, counts=False)
        if outcome.kind in (Kind.REPLACED, Kind.FATAL):
            self.settle(outcome)
        self.manager.release(tuple(self.manager.tasks))
        self.global_positions = self.manager.global_positions()
        self.source.renew()

    def leave_group(self, timeout_s: float, still_member: Callable[[], bool | None]) -> bool:
        """Gives up every partition and leaves the group now, so the remaining workers
        take the partitions over at once rather than after the session timeout (a static
        member does not leave when it merely closes; unsubscribing makes it). Records
        fetched meanwhile are dropped unprocessed: the next owner reads them from the
        committed offsets.

        librdkafka sends the LeaveGroup request only once the unassignment is done, not
        at all for a member that is still joining, and (for a static member) not once
        closing has begun. So this waits for a join in progress to finish, and after
        unsubscribing until `still_member()` (asked of the group, None: unknown) says the
        group no longer lists this worker. Returns whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        while not self.manager.ready and time.monotonic() < deadline:
            self._drain_rebalances()
        self.source.consumer.unsubscribe()
        while time.monotonic() < deadline:
            self._drain_rebalances()
            if not self.source.group_assignment() and still_member() is False:
                return True
        return False

    def _drain_rebalances(self) -> None:
        self.source.consume(1000, LEAVE_POLL_S)
        rebalances = self.source.take_rebalances()
        if rebalances:
            self.rebalanced(rebalances)

    # -- records ------------------------------------------------------------------------

    def _read_past_deleted(self, gone: OutOfRange) -> None:
        """Records were deleted ahead of a task while it read (the consumer's fetch
        position is gone; what it fetched before is in this batch or was in an earlier
        one): the policy stops the worker, or the task reads on from the earliest offset
        left. A position behind the task's next offset is not where it reads (the
        report was queued before a restart placed the task): seeking back to the
        earliest offset would run records the task has run already."""
        key = (gone.topic, gone.partition)
        if key not in self.manager.routes:
            return  # revoked meanwhile: its next owner finds the gap itself
        reading_at = self.manager.positions().get(key)
        if reading_at is not None and gone.offset < reading_at:
            log.info("ignored deleted position %d of %s: its task reads on from %d", gone.offset, key, reading_at)
            return
        earliest = self.missing_input.out_of_range(gone.topic, gone.partition, gone.offset)
        self.source.seek(TopicPartition(gone.topic, gone.partition, earliest))

    def _drop_stale(self, msgs: list, starts: int) -> list:
        """Some tasks (re)started at their committed offsets since this batch was asked
        for, and it may still hold records fetched for their old position. Those tasks'
        records are dropped: each restart sought its partitions to where the task begins,
        after this batch was fetched, so the consumer reads them from there anyway."""
        restarted = {i.key for task in self.manager.tasks.values() if task.incarnation > starts
                     for i in task.inputs}
        if not restarted:
            return msgs
        kept = [m for m in msgs if (m.topic(), m.partition()) not in restarted]
        if len(kept) < len(msgs):
            log.debug("dropped %d records fetched across a task restart", len(msgs) - len(kept))
        return kept

    def _dispatch(self, msgs: list) -> None:
        """Splits the batch into runs of one partition and hands each to its task."""
        routes, records_in = self.manager.routes, self._records_in
        start = 0
        first = msgs[0]
        current = (first.topic(), first.partition())
        for i in range(1, len(msgs)):
            m = msgs[i]
            tp = (m.topic(), m.partition())
            if tp != current:
                _run_task(routes.get(current), msgs[start:i], current, records_in)
                start, current = i, tp
        _run_task(routes.get(current), msgs[start:] if start else msgs, current, records_in)

    def _bound_cache(self) -> None:
        stateful = [t.state for t in self.manager.tasks.values() if t.state is not None]
        if not stateful:
            return
        budget = self.state_cache_bytes // len(stateful)
        for state in stateful:
            if state.cached_bytes() > budget:
                state.spill()


def _run_task(route: Any, run: list, tp: tuple[str, int], records_in: dict) -> None:
    if route is None:
        return  # the partition was revoked after these records were fetched
    route(run)
    records_in[tp[0]].inc(len(run))


def _ids(keys: tuple[TaskKey, ...]) -> str:
    return ", ".join(task_id(topic, partition) for topic, partition in keys)
