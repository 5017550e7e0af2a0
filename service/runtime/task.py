"""A task: one partition of one stage, with its operator chain and its state.

The task is where records meet the operator chain and where a failure gets its
address: any exception while processing a record becomes a `RecordError` naming the
topic, partition, offset and, when a user function raised, the operator's uid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import monotonic
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from connectors.kafka_sink import Produce
from connectors.serdes import BYTES, SerdeError
from connectors.two_phase import TwoPhaseCommitSink
from eos.errors import RecordError
from service.eventtime.clock import EventClock, time_of
from service.job.planner import Stage
from service.runtime.error_policy import ErrorHandler
from service.runtime.operators import ChainContext, OperatorFailure, build_chain
from statestore.manifest import Manifest
from statestore.task_state import TaskState

log = logging.getLogger(__name__)


def _muted(*_: Any) -> None:
    """Where outputs go while a task replays input whose outputs are committed already."""


MUTED = Produce(_muted, _muted)


@dataclass(frozen=True)
class CompletedCheckpoint:
    """The last checkpoint of a task known to be committed: where a rewind returns to."""

    checkpoint_id: int
    offset: int | None  # None: nothing committed yet, start from auto.offset.reset
    manifest: Manifest | None
    # The savepoint this task's history descends from; later checkpoints keep naming it.
    savepoint: str | None = None
    # Restored from a savepoint and not yet committed in this group: the next
    # checkpoint includes the task even if it reads nothing.
    uncommitted: bool = False


@dataclass(frozen=True)
class TimeLayout:
    """What a task on event time needs beyond its stage: how many upstream tasks feed its
    partition (1 for a source), the partition counts of the topics its key_by writes, the
    source's timestamp and out-of-orderness, and the late-record counter per operator."""

    origins: int
    partitions: dict[str, int]
    timestamp: Any = None
    out_of_orderness_ms: int = 0
    idle_timeout_s: float | None = None
    late_counter: Any = None


def task_id(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


class Task:
    def __init__(self, stage: Stage, partition: int, state: TaskState | None,
                 errors: ErrorHandler, topic_partitions: int | None = None,
                 time: TimeLayout | None = None, sinks: dict[str, TwoPhaseCommitSink] | None = None) -> None:
        self.stage = stage
        self.topic = stage.topic
        self.partition = partition
        self.id = task_id(stage.topic, partition)
        self.state = state
        self.errors = errors
        # The input topic's partition count when the task was assigned: keyed state is
        # only valid while keys keep their partition, so snapshots record it.
        self.topic_partitions = topic_partitions
        # Which (re)start of the worker's tasks this task's chain and position belong to,
        # and the offset its partition is read from since (None: the reset policy).
        self.incarnation = 0
        self.read_from: int | None = None
        self.next_offset: int | None = None
        self.records_since_checkpoint = 0
        self.completed = CompletedCheckpoint(0, None, None)
        # The manifest of a checkpoint persisted but not (yet known to be) committed:
        # if its commit's outcome was ambiguous, Kafka's committed offset decides.
        self.attempted_manifest: Manifest | None = None
        # While set, records below this offset are replayed with outputs muted: their
        # outputs were committed before the state that belonged to them was lost.
        self.replay_until: int | None = None
        # How the task runs on event time (None: it does not), when its input last brought
        # records and whether it told the tasks it feeds that it is idle.
        self.time = time
        # The task's transactional sinks by operator uid: its own transactions in other
        # systems, prepared and committed with its checkpoints.
        self.sinks = sinks or {}
        self.last_input = monotonic()
        self.idle = False
        self._produce: Produce | None = None
        self._push = None
        self._ctx: ChainContext | None = None
        key_serde, value_serde = stage.key_serde, stage.value_serde
        self._key_serde = None if key_serde is BYTES else key_serde
        self._value_serde = None if value_serde is BYTES else value_serde

    @property
    def stateful(self) -> bool:
        return bool(self.stage.stateful_uids)

    def start(self, completed: CompletedCheckpoint, produce: Produce,
              replay_until: int | None = None, incarnation: int = 0) -> None:
        """(Re)builds the operator chain over the task's current state, positioned at
        the given completed checkpoint; with `replay_until`, muted up to that offset."""
        self.incarnation = incarnation
        self.completed = completed
        self.attempted_manifest = None
        self.next_offset = completed.offset
        self.records_since_checkpoint = 0
        self._produce = produce
        self.replay_until = replay_until
        self._build_chain(MUTED if replay_until is not None else produce)

    def _build_chain(self, produce: Produce) -> None:
        layout = self.time
        sinks = None if produce is MUTED else self.sinks
        if layout is None:
            self._ctx = ChainContext(produce, self.state, sinks=sinks)
        else:
            self.state.flush()  # the clock and the window index are read from the store
            clock = EventClock.of(self.state, self.stage.id, layout.origins)
            self._ctx = ChainContext(produce, self.state, clock, self.partition, layout.partitions,
                                     layout.late_counter, sinks=sinks)
        self._push = build_chain(self.stage.root, self._ctx)

    def process(self, msgs: list) -> None:
        """Runs records of this task's partition through the chain, in order. A record
        that fails goes to the error handler; unless its policy is `fail`, processing
        continues with the next record."""
        if self.replay_until is not None:
            msgs = self._replay(msgs)
            if not msgs:
                return
        self._run_records(msgs)

    def _run_records(self, msgs: list) -> None:
        if self.time is None:
            self._run(msgs)
        else:
            self._run_timed(msgs, self._from_origins if self.stage.repartition else self._from_source)

    def _replay(self, msgs: list) -> list:
        """Runs the records below `replay_until` muted; returns the rest. Once caught up,
        the chain is rebuilt with real outputs and the task counts as changed, so the
        next checkpoint replaces the lost snapshot."""
        end = self.replay_until
        cut = 0
        while cut < len(msgs) and msgs[cut].offset() < end:
            cut += 1
        if cut:
            self._run_records(msgs[:cut])
        if cut == len(msgs) and self.next_offset < end:
            return []
        replayed = self.records_since_checkpoint
        log.info("%s caught up at offset %d after replaying %d records without outputs",
                 self.id, end, replayed)
        self.replay_until = None
        self.records_since_checkpoint = max(1, replayed)
        self._build_chain(self._produce)
        return msgs[cut:]

    def _run(self, msgs: list) -> None:
        push, ctx = self._push, self._ctx
        forwards_raw = self.stage.forwards_raw
        keeps_source = bool(ctx.sinks)
        fast_key = careful_key = fast_value = careful_value = None
        if self._key_serde is not None:
            fast_key, careful_key = self._key_serde.fast_deserialize, self._key_serde.deserialize
        if self._value_serde is not None:
            fast_value, careful_value = self._value_serde.fast_deserialize, self._value_serde.deserialize
        records = iter(msgs)
        msg = None
        while True:
            try:
                for msg in records:
                    key = msg.key()
                    if fast_key is not None:
                        try:
                            key = fast_key(key)
                        except Exception:
                            key = careful_key(key)
                    value = msg.value()
                    if forwards_raw:
                        ctx.raw = value
                    if keeps_source:
                        ctx.source = msg
                    if fast_value is not None:
                        try:
                            value = fast_value(value)
                        except Exception:
                            value = careful_value(value)
                    push(key, value)
                break
            except (OperatorFailure, SerdeError) as exc:
                self.errors.handle(self._record_error(msg, exc), msg, ctx.produce)
        self.next_offset = msgs[-1].offset() + 1
        self.records_since_checkpoint += len(msgs)

    def wall_clock(self, now_ms: int) -> None:
        """Fires processing-time timers that are due (outside replay: their outputs
        were committed already)."""
        if self._ctx is not None and self._ctx.clock_listeners and self.replay_until is None:
            self._ctx.wall_clock(now_ms)

    def check_idle(self, now: float) -> None:
        """A source task on event time whose partition brought nothing for the source's
        idle timeout tells the tasks it feeds, so they stop waiting for its watermark
        (Flink's `withIdleness`); its next record makes it active again."""
        layout = self.time
        if (layout is None or layout.idle_timeout_s is None or self.stage.repartition or self.idle
                or now - self.last_input < layout.idle_timeout_s):
            return
        self.idle = True
        log.info("%s had no input for %.0fs: idle, the tasks it feeds go on without its watermark",
                 self.id, layout.idle_timeout_s)
        self._ctx.went_idle()

    def _run_timed(self, msgs: list, step: Any) -> None:
        """The record loop of a task on event time: `step` runs one record and moves the
        clock (a source's, or one fed by upstream tasks)."""
        self.last_input, self.idle = monotonic(), False
        records = iter(msgs)
        msg = None
        while True:
            try:
                for msg in records:
                    step(msg)
                break
            except (OperatorFailure, SerdeError) as exc:
                self.errors.handle(self._record_error(msg, exc), msg, self._ctx.produce)
        self.next_offset = msgs[-1].offset() + 1
        self.records_since_checkpoint += len(msgs)

    def _decode(self, msg: Any) -> tuple[Any, Any]:
        key, value = msg.key(), msg.value()
        self._ctx.raw = value
        self._ctx.source = msg
        if self._key_serde is not None:
            key = self._key_serde.deserialize(key)
        if self._value_serde is not None:
            value = self._value_serde.deserialize(value)
        return key, value

    def _from_source(self, msg: Any) -> None:
        """A source record: its event time moves the task's own watermark, after it ran
        (it is judged against the watermark of the records before it)."""
        ctx, layout = self._ctx, self.time
        key, value = self._decode(msg)
        ts = self._event_time(msg, value)
        ctx.ts, ctx.record_watermark = ts, ctx.clock.watermark
        self._push(key, value)
        if ctx.clock.observe(0, ts - layout.out_of_orderness_ms):
            ctx.advance(ctx.clock.watermark)

    def _event_time(self, msg: Any, value: Any) -> int:
        extract = self.time.timestamp
        if extract is None:
            kind, ts = msg.timestamp()
            if kind == TIMESTAMP_NOT_AVAILABLE or ts < 0:
                raise OperatorFailure(self.stage.root.uid, ValueError("the record has no timestamp"))
            return ts
        try:
            return int(extract(value))
        except Exception as exc:
            raise OperatorFailure(self.stage.root.uid, exc) from exc

    def _from_origins(self, msg: Any) -> None:
        """A repartition record or marker: each carries its origin's watermark."""
        ctx = self._ctx
        carried = time_of(msg.headers())
        if carried is None:
            raise OperatorFailure(self.stage.root.uid, ValueError(
                "the repartition record carries no event time header (written by an older version?)"))
        origin, watermark, ts = carried
        if ts is not None:  # a record, not a marker
            key, value = self._decode(msg)
            ctx.ts, ctx.record_watermark = ts, watermark
            self._push(key, value)
        moved = ctx.clock.idle(origin) if watermark is None else ctx.clock.observe(origin, watermark)
        if moved:
            ctx.advance(ctx.clock.watermark)

    def _record_error(self, msg: Any, exc: Exception) -> RecordError:
        where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
        if isinstance(exc, OperatorFailure):
            return RecordError(f"{type(exc.cause).__name__}: {exc.cause}", operator=exc.uid,
                               cause=exc.cause, **where)
        part, serde = "value", self._value_serde
        if self._key_serde is not None:
            try:
                self._key_serde.deserialize(msg.key())
            except SerdeError:
                part, serde = "key", self._key_serde
        return RecordError(f"cannot deserialise the record {part} with the {serde.name} serde: {exc}",
                           operator=self.stage.root.uid, cause=exc, **where)

    @property
    def watermark(self) -> int | None:
        """The task's event-time watermark (None: the task is not on event time)."""
        return self._ctx.clock.watermark if self.time is not None and self._ctx is not None else None

    @property
    def changed(self) -> bool:
        """Whether the next checkpoint must cover this task. Not while it replays: its
        committed offset must not move back below what was committed already. A task
        restored from a savepoint is covered once even if it read nothing, so its
        committed offset records that it descends from the savepoint. A task whose sink
        holds work (say, a commit it could not make after its checkpoint completed) is
        covered too, so that the next checkpoint settles it."""
        return ((self.records_since_checkpoint > 0 or self.completed.uncommitted
                 or any(sink.pending for sink in self.sinks.values())) and self.replay_until is None)
