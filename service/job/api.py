"""The Job API: how a user describes a pipeline.

    job = Job("running-sum")
    (job.source("orders", value=JSON)
        .key_by(lambda order: order["user"])
        .aggregate(add_order, initial=dict)
        .sink("totals", key=STRING, value=JSON))

Building a job only records a graph of operator specs; nothing runs until a worker
plans it into stages and tasks. Every operator has a `uid` that names its state in
checkpoints and savepoints. It defaults to the operator's kind and position, which is
stable as long as the pipeline's shape is; set it explicitly before changing the shape
of a job whose state must survive.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connectors.serdes import BYTES, Serde
from connectors.two_phase import TransactionalSink
from eos.errors import ConfigurationError
from service.eventtime.windows import Count, Hopping, Session, Sliding, Tumbling
from statestore.codecs import JSON_CODEC, ValueCodec

if TYPE_CHECKING:
    from service.job.tables import GlobalTable, Table


@dataclass(eq=False)
class Node:
    """One operator in the job graph."""

    kind: str
    uid: str
    fn: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    on_error: str | None = None  # None: the job's default policy

    @property
    def stateful(self) -> bool:
        return self.kind in STATEFUL_KINDS


STATEFUL_KINDS = {"aggregate", "reduce", "process", "window", "table", "materialize", "table_aggregate",
                  "stream_join"}
# Kinds that meet several streams in one task: their inputs must be co-partitioned.
JOIN_KINDS = {"stream_table_join", "table_join", "stream_join"}
# A sink to a system other than Kafka, driven through connectors/two_phase.py.
TRANSACTIONAL_SINK = "transactional_sink"
# What happens to a record on which an operator (or the source's serde) fails:
# stop the job (default), send the original record to the job's dead-letter topic in
# the same transaction, or log it and go on (only when explicitly chosen).
ERROR_POLICIES = ("fail", "dead-letter", "skip-and-log")
# Kinds after which the record value is no longer the source's bytes.
VALUE_CHANGING_KINDS = {"map", "flat_map", "aggregate", "reduce", "process", "window", "merge", "to_stream",
                        "stream_table_join", "global_join", "stream_join"}
JOIN_HOWS = ("inner", "left", "outer")


class Params(Mapping[str, str]):
    """Job parameters from `-p NAME=VALUE`; a missing one is a clear error."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            raise ConfigurationError(
                f"the job needs parameter {name!r}: pass -p {name}=VALUE "
                f"(given: {', '.join(sorted(self._values)) or 'none'})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def get(self, name: str, default: str | None = None) -> str | None:
        """An optional parameter: its value, or `default` when not given."""
        return self._values.get(name, default)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class Job:
    """A named pipeline: one or more sources and what follows them."""

    def __init__(self, name: str) -> None:
        if not name or any(c in name for c in "/\\ \t"):
            raise ConfigurationError(f"job name {name!r} must be non-empty without '/', '\\' or spaces")
        self.name = name
        # Topics the job reads, in the order declared: streams and tables.
        self.sources: list[Node] = []
        # Tables every worker holds whole (no co-partitioning needed to look them up).
        self.global_tables: list[Node] = []
        self._uids: set[str] = set()
        self._position = 0

    def source(self, topic: str, *, value: Serde = BYTES, key: Serde = BYTES,
               timestamp: Callable[[Any], int] | None = None, max_out_of_orderness_ms: int = 0,
               idle_timeout_ms: int | None = None, uid: str | None = None,
               on_error: str | None = None) -> Stream:
        """Reads a Kafka topic. The stream is keyed by the record key (deserialised with
        `key`); use `key_by` to key it by something else. `on_error` applies to records
        the serdes (or `timestamp`) cannot read.

        Event time, for windows: each record's Kafka timestamp, or what `timestamp`
        returns for its value (milliseconds since the epoch). The watermark trails the
        largest event time seen by `max_out_of_orderness_ms`. A partition that brings
        nothing for `idle_timeout_ms` (of processing time) stops holding back the
        watermark of the tasks it feeds until it brings records again; without it, one
        empty partition stops every window downstream from closing."""
        if max_out_of_orderness_ms < 0:
            raise ConfigurationError(f"max_out_of_orderness_ms must not be negative, not {max_out_of_orderness_ms}")
        if idle_timeout_ms is not None and idle_timeout_ms <= 0:
            raise ConfigurationError(f"idle_timeout_ms must be positive, not {idle_timeout_ms}")
        node = self._node("source", uid, options={"topic": topic, "key_serde": key, "value_serde": value,
                                                  "timestamp": timestamp,
                                                  "out_of_orderness_ms": max_out_of_orderness_ms,
                                                  "idle_timeout_ms": idle_timeout_ms},
                          on_error=on_error)
        self.sources.append(node)
        return Stream(self, node)

    def table(self, topic: str, *, key: Serde = BYTES, value: Serde = BYTES, uid: str | None = None,
              codec: ValueCodec = JSON_CODEC, on_error: str | None = None) -> Table:
        """Reads a topic as a table: the latest value per key, a record with a null value
        (a tombstone) deletes its key. The table lives in the tasks' state (RocksDB), in
        checkpoints and savepoints; its topic is read like a source, so joins with it are
        co-partitioned: the same partition of each input meets in one task."""
        from service.job.tables import Table

        node = self._node("table", uid, options={"topic": topic, "key_serde": key, "value_serde": value,
                                                 "codec": codec, "timestamp": None, "out_of_orderness_ms": 0,
                                                 "idle_timeout_ms": None},
                          on_error=on_error)
        self.sources.append(node)
        return Table(self, node, rows=f"{node.uid}:rows")

    def global_table(self, topic: str, *, key: Serde = BYTES, value: Serde = BYTES, uid: str | None = None,
                     codec: ValueCodec = JSON_CODEC) -> GlobalTable:
        """Reads every partition of a topic into every worker (Kafka Streams'
        GlobalKTable): lookups need no co-partitioning, any value of the record can name
        the key. Each worker restores it from the topic before it processes anything
        and keeps it current as the topic changes."""
        from service.job.tables import GlobalTable

        node = self._node("global_table", uid, options={"topic": topic, "key_serde": key, "value_serde": value,
                                                        "codec": codec})
        self.global_tables.append(node)
        return GlobalTable(self, node)

    def _node(self, kind: str, uid: str | None, fn: Any = None, options: dict | None = None,
              on_error: str | None = None) -> Node:
        self._position += 1
        uid = uid or f"{kind}-{self._position}"
        if uid in self._uids:
            raise ConfigurationError(f"operator uid {uid!r} is used twice in job {self.name!r}")
        if on_error is not None and on_error not in ERROR_POLICIES:
            raise ConfigurationError(
                f"operator {uid!r}: on_error={on_error!r} is not one of {', '.join(ERROR_POLICIES)}")
        self._uids.add(uid)
        return Node(kind, uid, fn, options or {}, on_error=on_error)


class Stream:
    """A stream of records; stateless transformations keep its key."""

    def __init__(self, job: Job, node: Node) -> None:
        self._job = job
        self._node = node

    def _then(self, kind: str, uid: str | None, fn: Any = None, options: dict | None = None,
              cls: type[Stream] | None = None, on_error: str | None = None) -> Any:
        node = self._job._node(kind, uid, fn, options, on_error)
        self._node.children.append(node)
        return (cls or type(self))(self._job, node)

    def map(self, fn: Callable[[Any], Any], *, uid: str | None = None,
            on_error: str | None = None) -> Stream:
        return self._then("map", uid, fn, on_error=on_error)

    def filter(self, predicate: Callable[[Any], bool], *, uid: str | None = None,
               on_error: str | None = None) -> Stream:
        return self._then("filter", uid, predicate, on_error=on_error)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, uid: str | None = None,
                 on_error: str | None = None) -> Stream:
        return self._then("flat_map", uid, fn, on_error=on_error)

    def key_by(self, key_fn: Callable[[Any], Any], *, uid: str | None = None,
               value: Serde | None = None, partitions: int | None = None,
               on_error: str | None = None) -> KeyedStream:
        """Re-keys the stream. Records travel through an internal repartition topic,
        inside the same transaction, so each key's state lives in exactly one task.
        `value` is the serde for that topic (default: the source's bytes when the value
        is unchanged, else pickle); `partitions` its partition count (default: the
        source topic's)."""
        return self._then("key_by", uid, key_fn, {"value_serde": value, "partitions": partitions},
                          cls=KeyedStream, on_error=on_error)

    def merge(self, *others: Stream, uid: str | None = None) -> Stream:
        """One stream of the records of this stream and `others`, in the order each task
        reads them. Stateless operators after a merge run in each input's own task; a
        stateful one needs the inputs co-partitioned (key_by first, or topics with the
        same partitions and keys), and then they share one task per partition."""
        node = self._then("merge", uid)._node
        for other in others:
            if other._job is not self._job:
                raise ConfigurationError("merge(): the streams belong to different jobs")
            other._node.children.append(node)
        return Stream(self._job, node)

    def join(self, other: Any, joiner: Callable[[Any, Any], Any], *, how: str = "inner",
             key: Callable[[Any], Any] | None = None, within_ms: int | None = None, grace_ms: int = 0,
             uid: str | None = None, codec: ValueCodec = JSON_CODEC, on_error: str | None = None) -> KeyedStream:
        """Joins each record with `other`, calling `joiner(value, other_value)`:

        - a `Table` (co-partitioned: the same key, a topic with the same partitions; a
          stream re-keyed by `key_by` is repartitioned to match): each record meets the
          table's row of its key as of the record's timestamp. `how`: inner (records
          without a row are dropped) or left (they meet None).
        - a `GlobalTable`: `key(value)` names the row; inner or left.
        - another keyed stream, within `within_ms` of event time either way (both
          co-partitioned, on event time): every pair once; inner, left or outer (a
          record that met nothing is emitted with None once its time has passed,
          `grace_ms` after the watermark passed it plus `within_ms`).
        """
        from service.job.tables import GlobalTable, Table

        if how not in JOIN_HOWS:
            raise ConfigurationError(f"join(how={how!r}): how must be one of {', '.join(JOIN_HOWS)}")
        if isinstance(other, GlobalTable):
            if key is None:
                raise ConfigurationError("join() with a global table needs key=: a function of the record's "
                                         "value that names the table's key")
            return self._join_global(other, joiner, how, key, uid, on_error)
        if key is not None:
            raise ConfigurationError("join(key=...) is for global tables; re-key a stream with key_by")
        if isinstance(other, Table):
            if how == "outer":
                raise ConfigurationError("a stream-table join is inner or left: a table row alone emits nothing")
            right = other._materialized()
            node = self._then("stream_table_join", uid, joiner, {"how": how, "rows": right.rows,
                                                                 "table": right._node},
                              cls=KeyedStream, on_error=on_error)._node
            right._node.children.append(node)
            return KeyedStream(self._job, node)
        if isinstance(other, Stream):
            if within_ms is None or within_ms < 0:
                raise ConfigurationError("a stream-stream join needs within_ms >= 0: how far apart in event "
                                         "time two records may be and still meet")
            if grace_ms < 0:
                raise ConfigurationError(f"grace_ms must not be negative, not {grace_ms}")
            node = self._then("stream_join", uid, joiner, {"how": how, "within_ms": within_ms, "grace_ms": grace_ms,
                                                           "left": self._node, "right": other._node, "codec": codec},
                              cls=KeyedStream, on_error=on_error)._node
            other._node.children.append(node)
            return KeyedStream(self._job, node)
        raise ConfigurationError(f"join(): cannot join with {type(other).__name__}; give a Table, a GlobalTable "
                                 "or a stream")

    def _join_global(self, table: Any, joiner: Callable[[Any, Any], Any], how: str,
                     key: Callable[[Any], Any], uid: str | None, on_error: str | None) -> KeyedStream:
        if how == "outer":
            raise ConfigurationError("a join with a global table is inner or left")
        return self._then("global_join", uid, joiner, {"how": how, "key_fn": key, "table": table._node},
                          cls=KeyedStream, on_error=on_error)

    def to_table(self, *, uid: str | None = None, codec: ValueCodec = JSON_CODEC) -> Table:
        """The stream as a table: each record's value becomes its key's row (None
        deletes it). An aggregate followed by to_table() is a table of the aggregates."""
        from service.job.tables import Table

        node = self._then("materialize", uid, options={"codec": codec, "from_stream": True})._node
        return Table(self._job, node, rows=f"{node.uid}:rows")

    def key_by_record_key(self) -> KeyedStream:
        """Treats the record key as the state key, without repartitioning. Correct when
        the input topic is partitioned by that key (as Kafka producers do by default)."""
        return KeyedStream(self._job, self._node)

    def sink(self, target: str | TransactionalSink, *, key: Serde = BYTES, value: Serde = BYTES,
             uid: str | None = None, on_error: str | None = None, tombstones: bool = False) -> None:
        """Writes to a Kafka topic (`target` names it) inside the worker's transaction, or
        to another system through a transactional sink (`PostgresSink(...)`, or your own
        `TransactionalSink`), whose writes commit with the same checkpoints. A sink's uid
        names its transactions in the target: keep it stable. `on_error` also applies to
        rows the target refuses. With `tombstones`, a None value is written to a topic as
        a null value (a delete, for a compacted topic or a table downstream) rather than
        through the value serde."""
        if isinstance(target, str):
            self._then("sink", uid, None, {"topic": target, "key_serde": key, "value_serde": value,
                                           "tombstones": tombstones},
                       on_error=on_error)
        elif isinstance(target, TransactionalSink):
            self._then(TRANSACTIONAL_SINK, uid, None, {"sink": target}, on_error=on_error)
        else:
            raise ConfigurationError(f"sink({target!r}): give a topic name or a transactional sink such as "
                                     "PostgresSink(...)")


class KeyedStream(Stream):
    """A stream whose records each belong to one key: stateful operators live here."""

    def aggregate(self, fn: Callable[[Any, Any], Any], *, initial: Any = None,
                  uid: str | None = None, codec: ValueCodec = JSON_CODEC,
                  on_error: str | None = None, ttl_ms: int | None = None) -> KeyedStream:
        """Folds each record into its key's accumulator and emits the new accumulator.
        `initial` is a value (copied per key) or a zero-argument factory. With `ttl_ms`,
        an accumulator not written for that long (of event time: the stage runs on it)
        is gone, and the key's next record starts from `initial`."""
        return self._then("aggregate", uid, fn, {"initial": initial, "codec": codec, **_ttl_option(ttl_ms)},
                          on_error=on_error)

    def reduce(self, fn: Callable[[Any, Any], Any], *, uid: str | None = None,
               codec: ValueCodec = JSON_CODEC, on_error: str | None = None,
               ttl_ms: int | None = None) -> KeyedStream:
        """Like aggregate, with the key's first record as the initial accumulator."""
        return self._then("reduce", uid, fn, {"codec": codec, **_ttl_option(ttl_ms)}, on_error=on_error)

    def process(self, factory: Callable[[], Any], *, uid: str | None = None,
                on_error: str | None = None, timers: bool | None = None) -> KeyedStream:
        """Runs a `KeyedProcessFunction` (made by `factory`, once per task) that reads and
        writes named keyed state and yields any number of outputs per record.

        With timers (the default when `factory` is a class that defines `on_timer`; say
        `timers=True` for another factory) the stage runs on event time: `ctx` also gives
        the record's `timestamp`, the `watermark` and `register_event_time_timer` /
        `register_processing_time_timer` (and their `delete_` twins). So it does when
        `open` declares a state with a time to live (`ttl_ms=`), found by calling `open`
        against a context that only records what is declared."""
        if timers is None:
            timers = getattr(factory, "on_timer", KeyedProcessFunction.on_timer) is not KeyedProcessFunction.on_timer
        options = {"timers": bool(timers), "event_time": bool(timers) or _declares_ttl(factory)}
        return self._then("process", uid, factory, options, on_error=on_error)

    def window(self, shape: Any, *, grace_ms: int = 0, late_topic: str | None = None) -> WindowedStream:
        """Groups each key's records into windows: on event time (`Tumbling`, `Hopping`,
        `Sliding`, `Session`) or on counts (`Count`). A time window closes when the
        watermark passes its end plus `grace_ms`; a record that arrives for a closed
        window is late: dropped and counted in eos_late_records_dropped_total, or, with
        `late_topic`, written there in the same transaction (its bytes as the window read
        them, headers saying why) and counted in eos_late_records_routed_total. Count
        windows know no time: no grace, nothing late. Follow with an aggregation."""
        if not isinstance(shape, (Tumbling, Hopping, Sliding, Session, Count)):
            raise ConfigurationError(
                f"window({shape!r}): the shape must be Tumbling(...), Hopping(...), Sliding(...), Session(...) "
                "or Count(...)")
        if grace_ms < 0:
            raise ConfigurationError(f"grace_ms must not be negative, not {grace_ms}")
        if isinstance(shape, Count) and (grace_ms or late_topic):
            raise ConfigurationError(f"window({shape!r}): count windows have no time, so no grace_ms or late_topic")
        return WindowedStream(self, shape, grace_ms, late_topic)


class WindowedStream:
    """A keyed stream cut into windows: each aggregation gives a keyed stream of window
    results, {"start": ms, "end": ms, "value": result} under the record key (sliding
    windows include their end; count windows give positions in the key's records
    instead of ms). `emit` is "update" (the window's value after every record) or
    "final" (once, when the window closes)."""

    def __init__(self, stream: KeyedStream, shape: Any, grace_ms: int, late_topic: str | None) -> None:
        self._stream = stream
        self._shape = shape
        self._grace_ms = grace_ms
        self._late_topic = late_topic

    def aggregate(self, fn: Callable[[Any, Any], Any], *, initial: Any = None,
                  merge: Callable[[Any, Any], Any] | None = None, emit: str = "update",
                  uid: str | None = None, codec: ValueCodec = JSON_CODEC,
                  on_error: str | None = None) -> KeyedStream:
        """Folds each record into its window's accumulator, which starts as `initial`
        (a value, copied, or a zero-argument factory). Session windows also need
        `merge(earlier, later)`, which combines the accumulators of two sessions a
        record joins."""
        return self._window(uid, fn, None, initial_factory(initial), merge, emit, codec, on_error)

    def reduce(self, fn: Callable[[Any, Any], Any], *, emit: str = "update", uid: str | None = None,
               codec: ValueCodec = JSON_CODEC, on_error: str | None = None) -> KeyedStream:
        """Like aggregate, with the window's first record as its accumulator (and `fn`
        as the merge of two sessions)."""
        return self._window(uid, fn, _same, None, fn, emit, codec, on_error)

    def count(self, *, emit: str = "update", uid: str | None = None) -> KeyedStream:
        return self._window(uid, _count, None, _zero, _add, emit, JSON_CODEC, None)

    def sum(self, of: Callable[[Any], Any] | None = None, *, emit: str = "update",
            uid: str | None = None, on_error: str | None = None) -> KeyedStream:
        of = of or _same
        return self._window(uid, lambda acc, value: acc + of(value), None, _zero, _add, emit, JSON_CODEC,
                            on_error)

    def min(self, of: Callable[[Any], Any] | None = None, *, emit: str = "update",
            uid: str | None = None, on_error: str | None = None) -> KeyedStream:
        of = of or _same
        return self._window(uid, lambda acc, value: min(acc, of(value)), of, None, min, emit, JSON_CODEC,
                            on_error)

    def max(self, of: Callable[[Any], Any] | None = None, *, emit: str = "update",
            uid: str | None = None, on_error: str | None = None) -> KeyedStream:
        of = of or _same
        return self._window(uid, lambda acc, value: max(acc, of(value)), of, None, max, emit, JSON_CODEC,
                            on_error)

    def collect(self, of: Callable[[Any], Any] | None = None, *, emit: str = "update",
                uid: str | None = None, codec: ValueCodec = JSON_CODEC,
                on_error: str | None = None) -> KeyedStream:
        """The window's values in the order they arrived (across a repartition, records of
        different upstream tasks may interleave differently after a retry)."""
        of = of or _same
        return self._window(uid, lambda acc, value: [*acc, of(value)], lambda value: [of(value)], None, _add,
                            emit, codec, on_error)

    def _window(self, uid: str | None, fold: Callable[[Any, Any], Any], first: Callable[[Any], Any] | None,
                initial: Callable[[], Any] | None, merge: Callable[[Any, Any], Any] | None, emit: str,
                codec: ValueCodec, on_error: str | None) -> KeyedStream:
        if emit not in ("update", "final"):
            raise ConfigurationError(f"emit={emit!r} is not one of update, final")
        if isinstance(self._shape, Session) and merge is None:
            raise ConfigurationError("aggregate() on session windows needs merge=: two sessions a record "
                                     "joins become one, and their accumulators must be combined")
        options = {"shape": self._shape, "grace_ms": self._grace_ms, "emit": emit, "fold": fold,
                   "first": first, "initial": initial, "merge": merge, "codec": codec,
                   "late_topic": self._late_topic}
        return self._stream._then("window", uid, fold, options, cls=KeyedStream, on_error=on_error)


def _ttl_option(ttl_ms: int | None) -> dict[str, Any]:
    """An operator with a time to live runs on event time, which the planner reads here."""
    if ttl_ms is None:
        return {}
    if ttl_ms <= 0:
        raise ConfigurationError(f"ttl_ms must be positive, not {ttl_ms}")
    return {"ttl_ms": ttl_ms, "event_time": True}


class _TtlProbe:
    """Stands in for a process function's context while `open` runs at build time: it
    only notes whether a state with a time to live is declared."""

    def __init__(self) -> None:
        self.found = False

    def value_state(self, name: str, codec: Any = None, ttl_ms: int | None = None) -> None:
        self.found = self.found or ttl_ms is not None

    map_state = value_state


def _declares_ttl(factory: Callable[[], Any]) -> bool:
    """Whether the function's `open` declares a state with a time to live; a function
    whose `open` needs more than declarations is taken to declare none (should it, the
    task says so when it opens the state)."""
    probe = _TtlProbe()
    try:
        factory().open(probe)
    except Exception:  # noqa: BLE001 - user code run early; the task reports a real problem
        return False
    return probe.found


def _same(value: Any) -> Any:
    return value


def _zero() -> int:
    return 0


def _count(acc: int, _: Any) -> int:
    return acc + 1


def _add(earlier: Any, later: Any) -> Any:
    return earlier + later


_SCALARS = (int, float, str, bytes, bool, type(None))


def initial_factory(initial: Any) -> Callable[[], Any]:
    """`initial` as a factory: a callable as it is, an immutable value shared, any
    other value copied per key (so no two keys share one mutable accumulator).

    With state larger than the cache most records meet a key for the first time, so
    the copy is on the hot path: a flat dict or list of scalars (the usual
    accumulator) is copied shallowly, which is 15 times cheaper than `deepcopy`."""
    if callable(initial):
        return initial
    if isinstance(initial, (*_SCALARS, tuple)):
        return lambda: initial
    if isinstance(initial, (dict, list)):
        members = initial.values() if isinstance(initial, dict) else initial
        if all(isinstance(member, _SCALARS) for member in members):
            return initial.copy
    return lambda: copy.deepcopy(initial)


class KeyedProcessFunction:
    """Base for general stateful operators. `open` declares state through the context;
    `process` is called per record with the current key set."""

    def open(self, ctx: Any) -> None:
        """Declare state here, e.g. `self.total = ctx.value_state("total")`."""

    def process(self, key: Any, value: Any, ctx: Any) -> Iterable[Any] | None:
        raise NotImplementedError

    def on_timer(self, key: Any, timestamp: int, ctx: Any) -> Iterable[Any] | None:
        """Called once per timer that fires, with the current key set; may update state
        and yield outputs (their event time: the timer's)."""
        return None
