"""The operator chain of one task, compiled into nested closures.

Each operator becomes a `push(key, value)` function that calls the next one directly:
no per-record objects, no queues, no virtual dispatch beyond one Python call per
operator. A user function's exception is wrapped with the operator's uid right where it
happens (a try block costs nothing in CPython 3.11 unless it fires), so the task can say
which operator failed on which record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException

from connectors.kafka_sink import Produce, oversized
from eos.errors import ConfigurationError, EosError
from service.eventtime.clock import MARKER_INTERVAL_MS, marker_header, time_header, ts_header
from service.eventtime.timers import EVENT_TIME, PROCESSING_TIME, ProcessContext
from service.eventtime.count_operator import build_count
from service.eventtime.session_operator import build_session
from service.eventtime.sliding_operator import build_sliding
from service.eventtime.window_operator import build_window
from service.eventtime.windows import Count, Session, Sliding
from connectors.serdes import KEY
from service.job.api import Node, initial_factory
from service.job.planner import StageInput
from service.tables import operators as tables
from service.tables.change import Change
from service.tables.stream_join import build_stream_join
from statestore.keys import encode_key
from statestore.state import KeyedContext
from statestore.tables import ABSENT, DELETED, MISS
from statestore.ttl import TtlClock

Push = Callable[[Any, Any], None]


class OperatorFailure(Exception):
    """A user function raised; carries the operator's uid to the error report."""

    def __init__(self, uid: str, cause: BaseException) -> None:
        super().__init__(f"operator {uid!r} raised {type(cause).__name__}: {cause}")
        self.uid = uid
        self.cause = cause


def _unsendable(uid: str, topic: str, key: bytes | None, value: bytes | None,
                exc: KafkaException) -> Exception:
    """An output the producer refuses for its size is this record's fault, so it goes to
    the error policy like a failing function; any other refusal is the producer's, and
    is raised as it is for the worker's loop to hand to the transaction's owner."""
    too_large = oversized(exc, topic, key, value)
    if too_large is None:
        raise exc
    return OperatorFailure(uid, too_large)


class ChainContext:
    """What operators of one task share: the producer, the task's state, the raw bytes
    of the record being processed (for `key_by` passthrough) and, in a stage that runs
    on event time, the record's timestamp, the watermark its origin had, the task's
    clock, who hears of the clock's progress, and the layout of the topics it feeds."""

    __slots__ = ("produce", "state", "raw", "ts", "offset", "record_watermark", "clock", "watermark_listeners",
                 "idle_listeners", "clock_listeners", "origin", "partitions", "late_counter", "built",
                 "global_tables", "carry_time", "expired_counter", "sinks", "source")

    def __init__(self, produce: Produce, state: Any, clock: Any = None, origin: int = 0,
                 partitions: dict[str, int] | None = None,
                 late_counter: Callable[[str, bool], Callable[[], None]] | None = None,
                 global_tables: dict[str, Any] | None = None, carry_time: bool = False,
                 expired_counter: Callable[[str], Callable[[int], None]] | None = None,
                 sinks: dict[str, Any] | None = None) -> None:
        self.produce = produce
        self.state = state
        # The task's transactional sinks by uid (none while outputs are muted), and the
        # Kafka record being processed, which they keep for errors and dead letters.
        self.sinks = sinks or {}
        self.source: Any = None
        self.raw: bytes | None = None
        self.ts = 0
        # The offset of the record being processed, in its own input partition.
        self.offset = 0
        self.record_watermark = 0
        self.clock = clock
        self.watermark_listeners: list[Callable[[int], None]] = []
        self.idle_listeners: list[Callable[[], None]] = []
        # Who hears of the wall clock (ms), once a loop turn: processing-time timers.
        self.clock_listeners: list[Callable[[int], None]] = []
        self.origin = origin
        self.partitions = partitions or {}
        # (operator uid, routed to a late-data topic?) -> the counter's increment
        self.late_counter = late_counter or (lambda uid, routed: lambda: None)
        # Operators built so far for this chain, by node: an operator reached from two
        # parents (a merge, a join) is built once.
        self.built: dict[int, Any] = {}
        # The worker's global tables, by uid, for lookups.
        self.global_tables = global_tables or {}
        # Whether key_bys carry each record's timestamp (they feed a task of several inputs).
        self.carry_time = carry_time
        # operator uid -> the counter of state values its time to live deleted
        self.expired_counter = expired_counter or (lambda uid: lambda count: None)

    @property
    def timed(self) -> bool:
        return self.clock is not None

    def ttl_clock(self, uid: str) -> TtlClock | None:
        """The times states with a time to live read, on event time: a read or write
        happens at the record's event time or its origin's watermark, whichever is later
        (what decides a record is late, so the same input expires the same values with
        or without failures); the cleanup deletes up to the task's watermark, behind
        which no later read happens. None off event time."""
        if self.clock is None:
            return None
        clock = self.clock
        return TtlClock(now=lambda: max(self.ts, self.record_watermark, clock.watermark),
                        settled=lambda: clock.watermark, expired=self.expired_counter(uid))

    def advance(self, watermark: int) -> None:
        for listener in self.watermark_listeners:
            listener(watermark)

    def wall_clock(self, now_ms: int) -> None:
        for listener in self.clock_listeners:
            listener(now_ms)

    def went_idle(self) -> None:
        for listener in self.idle_listeners:
            listener()


def build_input(stage_input: StageInput, ctx: ChainContext) -> Push:
    """The push function of one input of a task: its records go to the operators below
    its root (a source, a table, a key_by or a group_by)."""
    root = stage_input.root
    if root.kind == "table":
        return tables.build_table_source(root, ctx, _downstream(root, ctx))
    return _downstream(root, ctx)


def _discard(key: Any, value: Any) -> None:
    return None


def _build(child: Node, parent: Node, ctx: ChainContext) -> Push:
    """The push function of `child` as `parent` calls it; built once per chain."""
    built = ctx.built.get(id(child))
    if built is None:
        built = ctx.built[id(child)] = _BUILDERS[child.kind](child, ctx)
    return built.of(parent) if isinstance(built, tables.Sides) else built


def _downstream(node: Node, ctx: ChainContext) -> Push:
    pushes = [_build(child, node, ctx) for child in node.children]
    if not pushes:
        return _discard
    if len(pushes) == 1:
        return pushes[0]

    def fan_out(key: Any, value: Any) -> None:
        for push in pushes:
            push(key, value)

    return fan_out


def _map(node: Node, ctx: ChainContext) -> Push:
    fn, uid, down = node.fn, node.uid, _downstream(node, ctx)

    def push(key: Any, value: Any) -> None:
        try:
            result = fn(value)
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        down(key, result)

    return push


def _filter(node: Node, ctx: ChainContext) -> Push:
    fn, uid, down = node.fn, node.uid, _downstream(node, ctx)

    def push(key: Any, value: Any) -> None:
        try:
            keep = fn(value)
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        if keep:
            down(key, value)

    return push


def _flat_map(node: Node, ctx: ChainContext) -> Push:
    fn, uid, down = node.fn, node.uid, _downstream(node, ctx)

    def push(key: Any, value: Any) -> None:
        try:
            results = list(fn(value))
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        for result in results:
            down(key, result)

    return push


def _key_by(node: Node, ctx: ChainContext) -> Push:
    """Ends the stage: the record goes to the repartition topic, keyed by the new key."""
    if ctx.timed:
        return _timed_key_by(node, ctx)
    if ctx.carry_time or node.options["key_serde"] is not KEY:
        return _key_by_for_join(node, ctx)
    fn, uid = node.fn, node.uid
    out = ctx.produce
    topic = node.options["topic"]
    if node.options["passthrough"]:
        def push(key: Any, value: Any) -> None:
            try:
                new_key = encode_key(fn(value))
            except Exception as exc:
                raise OperatorFailure(uid, exc) from exc
            try:
                out.fast(topic, ctx.raw, new_key)
            except BufferError:
                out.blocking(topic, ctx.raw, new_key)
            except KafkaException as exc:
                raise _unsendable(uid, topic, new_key, ctx.raw, exc) from exc

        return push
    serialize = node.options["repartition_serde"].serialize

    def push_serialized(key: Any, value: Any) -> None:
        try:
            new_key = encode_key(fn(value))
            data = serialize(value)
        except EosError:  # not the record's fault: a serde's registry, or its schema refused
            raise
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        try:
            out.fast(topic, data, new_key)
        except BufferError:
            out.blocking(topic, data, new_key)
        except KafkaException as exc:
            raise _unsendable(uid, topic, new_key, data, exc) from exc

    return push_serialized


def _key_by_for_join(node: Node, ctx: ChainContext) -> Push:
    """key_by into a stage of several inputs: the key is serialised as the other side's
    keys are (so it lands on the partition its partner's do), and the record's timestamp
    travels in a header, since that stage orders records by it."""
    fn, uid, topic = node.fn, node.uid, node.options["topic"]
    out = ctx.produce
    serialize_key = node.options["key_serde"].serialize
    passthrough = node.options["passthrough"]
    serialize = node.options["repartition_serde"].serialize
    carry = ctx.carry_time

    def push(key: Any, value: Any) -> None:
        try:
            new_key = serialize_key(fn(value))
            data = ctx.raw if passthrough else serialize(value)
        except EosError:  # not the record's fault: a serde's registry, or its schema refused
            raise
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        try:
            if carry:
                out.blocking(topic, data, new_key, headers=ts_header(ctx.ts))
            else:
                out.blocking(topic, data, new_key)
        except KafkaException as exc:
            raise _unsendable(uid, topic, new_key, data, exc) from exc

    return push


def _group_by(node: Node, ctx: ChainContext) -> Push:
    """A table's rows regrouped: each change becomes a retraction of the old row from
    its old group and an addition of the new row to its new group, both through the
    repartition topic, in the transaction of the change."""
    if ctx.timed:
        raise ConfigurationError(f"group_by {node.uid!r}: tables do not run on event time")
    fn, uid, topic = node.fn, node.uid, node.options["topic"]
    out = ctx.produce
    serialize_key = node.options["key_serde"].serialize
    serialize = node.options["repartition_serde"].serialize
    carry = ctx.carry_time

    def send(key: Any, row: Any, op: str) -> None:
        try:
            group, value = fn(key, row)
            group_key, data = serialize_key(group), serialize((op, value))
        except EosError:  # not the record's fault: a serde's registry, or its schema refused
            raise
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        headers = ts_header(ctx.ts) if carry else None
        try:
            out.blocking(topic, data, group_key, headers=headers)
        except KafkaException as exc:
            raise _unsendable(uid, topic, group_key, data, exc) from exc

    def push(key: Any, change: Change) -> None:
        if change.old is not None:
            send(key, change.old, tables.RETRACT)
        if change.new is not None:
            send(key, change.new, tables.ADD)

    return push


def _timed_key_by(node: Node, ctx: ChainContext) -> Push:
    """key_by in a stage on event time: each record carries its event time, this task's
    origin and its watermark in a header; when the watermark passes a marker interval, a marker
    goes to every partition of the topic (service/eventtime/clock.py)."""
    fn, uid, topic = node.fn, node.uid, node.options["topic"]
    out = ctx.produce
    passthrough = node.options["passthrough"]
    serialize = node.options["repartition_serde"].serialize
    serialize_key = node.options["key_serde"].serialize
    clock, origin = ctx.clock, ctx.origin
    partitions = range(ctx.partitions[topic])
    marked = [clock.watermark // MARKER_INTERVAL_MS]

    def push(key: Any, value: Any) -> None:
        try:
            new_key = serialize_key(fn(value))
            data = ctx.raw if passthrough else serialize(value)
        except EosError:  # not the record's fault: a serde's registry, or its schema refused
            raise
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        headers = time_header(origin, clock.watermark, ctx.ts)
        try:
            out.fast(topic, data, new_key, headers=headers)
        except BufferError:
            out.blocking(topic, data, new_key, headers=headers)
        except KafkaException as exc:
            raise _unsendable(uid, topic, new_key, data, exc) from exc

    def mark(watermark: int) -> None:
        interval = watermark // MARKER_INTERVAL_MS
        if interval <= marked[0]:
            return
        marked[0] = interval
        send_marker(marker_header(origin, watermark))

    def send_marker(headers: list[tuple[str, bytes]]) -> None:
        for partition in partitions:
            out.blocking(topic, None, None, partition=partition, headers=headers)

    ctx.watermark_listeners.append(mark)
    ctx.idle_listeners.append(lambda: send_marker(marker_header(origin, None)))
    return push


def _fold(node: Node, ctx: ChainContext, first: Callable[[Any], Any] | None) -> Push:
    """aggregate / reduce: the hot path of stateful jobs, so the cache is used inline."""
    if node.options.get("ttl_ms") is not None:
        return _fold_expiring(node, ctx, first)
    fn, uid, down = node.fn, node.uid, _downstream(node, ctx)
    table = ctx.state.value_table(f"{uid}:acc", node.options["codec"])
    read_through = table.read_through
    make_initial = initial_factory(node.options.get("initial"))

    def push(key: Any, value: Any) -> None:
        pending = table.pending  # a capture replaces it
        acc = pending.get(key, MISS)
        if acc is MISS:
            acc = read_through(key)
        try:
            if acc is ABSENT or acc is DELETED:
                acc = first(value) if first is not None else fn(make_initial(), value)
            else:
                acc = fn(acc, value)
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        pending[key] = acc
        down(key, acc)

    return push


def _fold_expiring(node: Node, ctx: ChainContext, first: Callable[[Any], Any] | None) -> Push:
    """aggregate / reduce with a time to live: an accumulator not written for `ttl_ms`
    of event time is gone, and the key starts afresh (statestore/ttl.py)."""
    fn, uid, down, ttl = node.fn, node.uid, _downstream(node, ctx), node.options["ttl_ms"]
    clock = ctx.ttl_clock(uid)
    if clock is None:
        raise ConfigurationError(f"operator {uid!r}: a time to live needs its stage on event time")
    table = ctx.state.expiring_values(f"{uid}:acc", node.options["codec"], ttl, clock).table
    read_through, now = table.read_through, clock.now
    make_initial = initial_factory(node.options.get("initial"))

    def push(key: Any, value: Any) -> None:
        at = now()
        pending = table.pending  # a capture replaces it
        envelope = pending.get(key, MISS)
        if envelope is MISS:
            envelope = read_through(key)
        try:
            if envelope is ABSENT or envelope is DELETED or envelope[0] + ttl <= at:
                acc = first(value) if first is not None else fn(make_initial(), value)
            else:
                acc = fn(envelope[1], value)
                at = max(at, envelope[0])
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        pending[key] = (at, acc)
        down(key, acc)

    return push


def _aggregate(node: Node, ctx: ChainContext) -> Push:
    return _fold(node, ctx, None)


def _reduce(node: Node, ctx: ChainContext) -> Push:
    return _fold(node, ctx, lambda value: value)


def _process(node: Node, ctx: ChainContext) -> Push:
    uid, down = node.uid, _downstream(node, ctx)
    function = node.fn()
    timed = node.options.get("timers") and ctx.timed
    ttl_clock = ctx.ttl_clock(uid)
    keyed = ProcessContext(ctx.state, uid, ctx, ttl_clock) if timed else KeyedContext(ctx.state, uid, ttl_clock)
    function.open(keyed)
    process = function.process
    if timed:
        on_timer = function.on_timer
        ctx.watermark_listeners.append(lambda watermark: keyed.fire(EVENT_TIME, watermark, on_timer, down, uid))
        ctx.clock_listeners.append(lambda now_ms: keyed.fire(PROCESSING_TIME, now_ms, on_timer, down, uid))

    def push(key: Any, value: Any) -> None:
        keyed.key = key
        if timed:
            keyed.timestamp = ctx.ts
        try:
            produced = process(key, value, keyed)
            results = list(produced) if produced is not None else ()
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        for result in results:
            down(key, result)

    return push


def _sink(node: Node, ctx: ChainContext) -> Push:
    uid = node.uid
    out = ctx.produce
    topic = node.options["topic"]
    key_serde, value_serde = node.options["key_serde"], node.options["value_serde"]
    fast_key, careful_key = key_serde.fast_serialize, key_serde.serialize
    fast_value, careful_value = value_serde.fast_serialize, value_serde.serialize
    timed = ctx.timed  # outputs carry their event time as their Kafka timestamp
    tombstones = node.options.get("tombstones", False)

    def push(key: Any, value: Any) -> None:
        try:
            try:
                key_bytes = fast_key(key)
            except Exception:
                key_bytes = careful_key(key)
            if value is None and tombstones:
                value_bytes = None
            else:
                try:
                    value_bytes = fast_value(value)
                except Exception:
                    value_bytes = careful_value(value)
        except EosError:  # not the record's fault: a serde's registry, or its schema refused
            raise
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc
        try:
            if timed:
                out.fast(topic, value_bytes, key_bytes, timestamp=ctx.ts)
            else:
                out.fast(topic, value_bytes, key_bytes)
        except BufferError:
            out.blocking(topic, value_bytes, key_bytes, **({"timestamp": ctx.ts} if timed else {}))
        except KafkaException as exc:
            raise _unsendable(uid, topic, key_bytes, value_bytes, exc) from exc

    return push


def _transactional_sink(node: Node, ctx: ChainContext) -> Push:
    """Hands the record to the task's sink (connectors/two_phase.py); what the sink
    raises on its own account (unavailable, fenced, a refused row under `fail`) passes
    through, anything else is the record's fault."""
    sink = ctx.sinks.get(node.uid)
    if sink is None:
        return _discard  # outputs muted while replaying
    uid, write = node.uid, sink.write

    def push(key: Any, value: Any) -> None:
        try:
            write(key, value, ctx.source)
        except EosError:
            raise
        except Exception as exc:
            raise OperatorFailure(uid, exc) from exc

    return push


_WINDOW_BUILDERS: dict[type, Callable[..., Push]] = {Session: build_session, Sliding: build_sliding,
                                                     Count: build_count}


def _window(node: Node, ctx: ChainContext) -> Push:
    build = _WINDOW_BUILDERS.get(type(node.options["shape"]), build_window)
    return build(node, ctx, _downstream(node, ctx), OperatorFailure)


def _merge(node: Node, ctx: ChainContext) -> Push:
    return _downstream(node, ctx)


def _with_down(build: Callable[..., Any]) -> Callable[[Node, ChainContext], Any]:
    """A builder of service/tables that takes the operators below and the failure type."""
    return lambda node, ctx: build(node, ctx, _downstream(node, ctx), OperatorFailure)


_BUILDERS: dict[str, Callable[[Node, ChainContext], Any]] = {
    "map": _map,
    "filter": _filter,
    "flat_map": _flat_map,
    "key_by": _key_by,
    "group_by": _group_by,
    "aggregate": _aggregate,
    "reduce": _reduce,
    "process": _process,
    "sink": _sink,
    "transactional_sink": _transactional_sink,
    "window": _window,
    "merge": _merge,
    "materialize": _with_down(tables.build_materialize),
    "to_stream": _with_down(tables.build_to_stream),
    "table_map": _with_down(tables.build_table_map),
    "table_filter": _with_down(tables.build_table_filter),
    "table_aggregate": _with_down(tables.build_table_aggregate),
    "stream_table_join": _with_down(tables.build_stream_table_join),
    "table_join": _with_down(tables.build_table_join),
    "global_join": _with_down(tables.build_global_join),
    "stream_join": _with_down(build_stream_join),
}
