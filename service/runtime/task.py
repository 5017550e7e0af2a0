"""A task: one partition of one stage, with its operator chain and its state.

The task is where records meet the operator chain and where a failure gets its
address: any exception while processing a record becomes a `RecordError` naming the
topic, partition, offset and, when a user function raised, the operator's uid.

A task reads the same partition of each of its stage's inputs (service/runtime/
inputs.py): one input runs batch by batch on the fast path; several run record by
record in timestamp order.
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
from service.job.planner import Stage, StageInput
from service.runtime.error_policy import ErrorHandler
from service.runtime.inputs import PartitionGroup, TaskInput, timestamp_of
from service.runtime.operators import ChainContext, OperatorFailure, build_input
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
    # Where the task's other inputs (topic -> offset) continue, when it has several.
    other_offsets: tuple[tuple[str, int | None], ...] = ()
    # The state was rebuilt in a way its changelog does not continue (an older snapshot
    # and its input replayed): the next checkpoint takes a snapshot.
    snapshot_due: bool = False

    def offset_of(self, topic: str, lead: str) -> int | None:
        return self.offset if topic == lead else dict(self.other_offsets).get(topic)


@dataclass(frozen=True)
class TimeLayout:
    """What a task on event time needs beyond its stage: how many upstream tasks feed each
    of its inputs (1 for a source or table), the partition counts of the topics its
    key_bys write, the idle timeout of a source, and the late-record counter per
    operator."""

    input_origins: tuple[int, ...]
    partitions: dict[str, int]
    idle_timeout_s: float | None = None
    late_counter: Any = None
    expired_counter: Any = None

    @property
    def origins(self) -> int:
        return sum(self.input_origins)


def task_id(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


class Task:
    def __init__(self, stage: Stage, partition: int, state: TaskState | None,
                 errors: ErrorHandler, topic_partitions: int | None = None,
                 time: TimeLayout | None = None, group: Any = None,
                 global_tables: dict[str, Any] | None = None,
                 sinks: dict[str, TwoPhaseCommitSink] | None = None) -> None:
        self.stage = stage
        self.topic = stage.topic
        self.partition = partition
        self.id = task_id(stage.topic, partition)
        self.state = state
        self.errors = errors
        # The input topic's partition count when the task was assigned: keyed state is
        # only valid while keys keep their partition, so snapshots record it.
        self.topic_partitions = topic_partitions
        # Which (re)start of the worker's tasks this task's chain and position belong to.
        self.incarnation = 0
        self.inputs = [TaskInput(i, spec, partition) for i, spec in enumerate(stage.inputs)]
        self.lead = self.inputs[0]
        # Several inputs run in timestamp order (a `PartitionGroup`, made by the manager).
        self.group: PartitionGroup | None = group(self.inputs) if group is not None and len(self.inputs) > 1 \
            else None
        self.global_tables = global_tables or {}
        self.records_since_checkpoint = 0
        # Whether the task sent output outside any record since the last checkpoint
        # began (the marker of its input going idle): only a checkpoint commits it.
        self.sent_without_records = False
        # Rewound after a failed checkpoint: the next checkpoint covers the task even if it
        # reads nothing, so that its failing again (storage still away) counts in the row.
        self.rewound = False
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

    @property
    def stateful(self) -> bool:
        return bool(self.stage.stateful_uids)

    # The lead input's position, which is all a task with one input has.
    @property
    def next_offset(self) -> int | None:
        return self.lead.next_offset

    @next_offset.setter
    def next_offset(self, offset: int | None) -> None:
        self.lead.next_offset = offset

    @property
    def read_from(self) -> int | None:
        return self.lead.read_from

    @read_from.setter
    def read_from(self, offset: int | None) -> None:
        self.lead.read_from = offset

    @property
    def others(self) -> list[TaskInput]:
        """The inputs besides the lead, whose partitions the task takes along."""
        return self.inputs[1:]

    def start(self, completed: CompletedCheckpoint, produce: Produce,
              replay_until: int | None = None, incarnation: int = 0) -> None:
        """(Re)builds the operator chain over the task's current state, positioned at
        the given completed checkpoint; with `replay_until`, muted up to that offset."""
        self.incarnation = incarnation
        self.completed = completed
        self.attempted_manifest = None
        for task_input in self.inputs:
            task_input.restart(completed.offset_of(task_input.topic, self.topic))
        self.checkpoint_began()
        self._produce = produce
        self.replay_until = replay_until
        self._build_chain(MUTED if replay_until is not None else produce)

    def _build_chain(self, produce: Produce) -> None:
        layout = self.time
        shared = {"global_tables": self.global_tables, "carry_time": self.stage.carries_time,
                  "sinks": None if produce is MUTED else self.sinks}
        if layout is None:
            self._ctx = ChainContext(produce, self.state, **shared)
        else:
            self.state.flush()  # the clock and the window index are read from the store
            clock = EventClock.of(self.state, self.stage.id, layout.origins)
            self._ctx = ChainContext(produce, self.state, clock, self.partition, layout.partitions,
                                     layout.late_counter, expired_counter=layout.expired_counter, **shared)
        first_origin = 0
        pushes = []
        for task_input in self.inputs:
            task_input.origins = first_origin
            if layout is not None:
                first_origin += layout.input_origins[task_input.index]
            pushes.append(build_input(task_input.spec, self._ctx))
            task_input.step = self._stepper(task_input, pushes[-1])
        self._push = pushes[0]

    @property
    def _fast(self) -> bool:
        """One input read batch by batch: no event time, no table, no timestamps to carry."""
        return (self.group is None and self.time is None and not self.stage.lead.table
                and not self.stage.carries_time)

    def process(self, msgs: list) -> None:
        """Runs records of this task's (lead) partition through the chain, in order. A
        record that fails goes to the error handler; unless its policy is `fail`,
        processing continues with the next record."""
        if self.replay_until is not None:
            msgs = self._replay(msgs)
            if not msgs:
                return
        self._run_records(msgs)

    def receive(self, task_input: TaskInput, msgs: list) -> None:
        """Records of one input of a task with several: buffered, then run in timestamp
        order as far as the inputs allow."""
        self.group.receive(task_input, msgs)
        self.run_buffered()

    def run_buffered(self) -> None:
        """Runs buffered records of a task with several inputs while the next one is
        known to be the earliest (see service/runtime/inputs.py)."""
        group, ctx = self.group, self._ctx
        taken = 0
        while True:
            picked = group.next()
            if picked is None:
                break
            task_input, msg = picked
            try:
                task_input.step(msg)
            except (OperatorFailure, SerdeError) as exc:
                self.errors.handle(self._record_error(msg, exc), msg, ctx.produce)
            task_input.next_offset = msg.offset() + 1
            taken += 1
        if taken:
            self.last_input, self.idle = monotonic(), False
            self.records_since_checkpoint += taken

    def _run_records(self, msgs: list) -> None:
        if self._fast:
            self._run(msgs)
        else:
            self._run_stepwise(msgs, self.lead.step)

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
        key_serde, value_serde = self.stage.key_serde, self.stage.value_serde
        keeps_source = bool(ctx.sinks)
        fast_key = careful_key = fast_value = careful_value = None
        if key_serde is not BYTES:
            fast_key, careful_key = key_serde.fast_deserialize, key_serde.deserialize
        if value_serde is not BYTES:
            fast_value, careful_value = value_serde.fast_deserialize, value_serde.deserialize
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
        (Flink's `withIdleness`); its next record makes it active again. In a task of
        several inputs, a source input idle that long stops holding back the task's own
        watermark the same way."""
        self._inputs_idle(now)
        layout = self.time
        if (layout is None or layout.idle_timeout_s is None or self.stage.repartition or self.idle
                or now - self.last_input < layout.idle_timeout_s):
            return
        self.idle = True
        log.info("%s had no input for %.0fs: idle, the tasks it feeds go on without its watermark",
                 self.id, layout.idle_timeout_s)
        self._ctx.went_idle()
        self.sent_without_records = True

    def _inputs_idle(self, now: float) -> None:
        if self.group is None or self.time is None or self._ctx is None:
            return
        clock = self._ctx.clock
        for task_input in self.inputs:
            idle_ms = task_input.spec.root.options.get("idle_timeout_ms") if not task_input.spec.repartition else None
            if idle_ms is None or task_input.buffer or now - task_input.last_input < idle_ms / 1000:
                continue
            if clock.idle(task_input.origins):
                self._ctx.advance(clock.watermark)

    def _run_stepwise(self, msgs: list, step: Any) -> None:
        """The record loop of a task whose records each need more than the fast path
        gives: event time, a table's tombstones, a timestamp to carry."""
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

    def _stepper(self, task_input: TaskInput, push: Any) -> Any:
        """The function that runs one record of `task_input` through the chain."""
        spec = task_input.spec
        decode = _decoder(spec, self._ctx)
        if self.time is None:
            ctx = self._ctx

            def step(msg: Any) -> None:
                key, value = decode(msg)
                ctx.ts, ctx.offset = timestamp_of(msg), msg.offset()
                push(key, value)

            return step
        if spec.repartition:
            return lambda msg: self._from_origins(msg, task_input, decode, push)
        return self._source_step(task_input, decode, push)

    def _source_step(self, task_input: TaskInput, decode: Any, push: Any) -> Any:
        """The step of a source record: its event time moves its input's watermark, after
        it ran (it is judged against the watermark of the records before it). The hot
        path of windowed jobs, so what does not change per record is bound once."""
        ctx = self._ctx
        clock, advance = ctx.clock, ctx.advance
        view, observe = clock.view, clock.observe
        root = task_input.spec.root
        extract, bound, uid = root.options.get("timestamp"), root.options.get("out_of_orderness_ms", 0), root.uid
        origin = task_input.origins

        def step(msg: Any) -> None:
            key, value = decode(msg)
            if extract is None:
                kind, ts = msg.timestamp()
                if kind == TIMESTAMP_NOT_AVAILABLE or ts < 0:
                    raise OperatorFailure(uid, ValueError("the record has no timestamp"))
            else:
                try:
                    ts = int(extract(value))
                except Exception as exc:
                    raise OperatorFailure(uid, exc) from exc
            ctx.ts, ctx.record_watermark, ctx.offset = ts, view(origin), msg.offset()
            push(key, value)
            if observe(origin, ts - bound):
                advance(clock.watermark)

        return step

    def _from_origins(self, msg: Any, task_input: TaskInput, decode: Any, push: Any) -> None:
        """A repartition record or marker: each carries its origin's watermark."""
        ctx = self._ctx
        carried = time_of(msg.headers())
        if carried is None:
            raise OperatorFailure(task_input.spec.root.uid, ValueError(
                "the repartition record carries no event time header (written by an older version?)"))
        origin, watermark, ts = carried
        origin += task_input.origins
        if ts is not None:  # a record, not a marker
            key, value = decode(msg)
            ctx.ts, ctx.record_watermark, ctx.offset = ts, watermark, msg.offset()
            push(key, value)
        moved = ctx.clock.idle(origin) if watermark is None else ctx.clock.observe(origin, watermark)
        if moved:
            ctx.advance(ctx.clock.watermark)

    def _record_error(self, msg: Any, exc: Exception) -> RecordError:
        where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
        if isinstance(exc, OperatorFailure):
            return RecordError(f"{type(exc.cause).__name__}: {exc.cause}", operator=exc.uid,
                               cause=exc.cause, **where)
        spec = next((i.spec for i in self.inputs if i.topic == msg.topic()), self.stage.lead)
        part, serde = "value", spec.value_serde
        if spec.key_serde is not BYTES:
            try:
                spec.key_serde.deserialize(msg.key())
            except SerdeError:
                part, serde = "key", spec.key_serde
        return RecordError(f"cannot deserialise the record {part} with the {serde.name} serde: {exc}",
                           operator=spec.root.uid, cause=exc, **where)

    @property
    def watermark(self) -> int | None:
        """The task's event-time watermark (None: the task is not on event time)."""
        return self._ctx.clock.watermark if self.time is not None and self._ctx is not None else None

    def checkpoint_began(self) -> None:
        """What the task does from here on belongs to the next checkpoint."""
        self.records_since_checkpoint = 0
        self.sent_without_records = False
        self.rewound = False

    @property
    def changed(self) -> bool:
        """Whether the next checkpoint must cover this task. Not while it replays: its
        committed offset must not move back below what was committed already. A task
        restored from a savepoint is covered once even if it read nothing, so its
        committed offset records that it descends from the savepoint. A task whose sink
        holds work (say, a commit it could not make after its checkpoint completed) is
        covered too, so that the next checkpoint settles it; so is one that sent output
        with no record, which nothing but a checkpoint commits, and one rewound after a
        failed checkpoint: a checkpoint without it (one of a stateless stage only) says
        nothing of whether its snapshot can be stored now."""
        return ((self.records_since_checkpoint > 0 or self.sent_without_records or self.rewound
                 or self.completed.uncommitted
                 or (self.state is not None and self.state.store is not None and self.state.changed_since_snapshot())
                 or any(sink.pending for sink in self.sinks.values()))
                and self.replay_until is None)


def _decoder(spec: StageInput, ctx: ChainContext) -> Any:
    """Turns one record of an input into (key, value), keeping its raw value for key_by
    passthrough. A table's record with a null value is a tombstone: its value is None."""
    key_serde = None if spec.key_serde is BYTES else spec.key_serde
    value_serde = None if spec.value_serde is BYTES else spec.value_serde
    table = spec.table

    def decode(msg: Any) -> tuple[Any, Any]:
        key, value = msg.key(), msg.value()
        ctx.raw, ctx.source = value, msg
        if key_serde is not None:
            key = key_serde.deserialize(key)
        if value_serde is not None and not (table and value is None):
            value = value_serde.deserialize(value)
        return key, value

    return decode
