"""The window operator: folds each record into the windows of its key it falls into, and
closes windows when the task's watermark passes their end plus the grace period.

Open windows live in a map state (key -> window start -> accumulator), so they are in
checkpoints like any state and a savepoint moves them with their key. An index of open
windows by end time, in memory, finds the windows a watermark closes; it is rebuilt from
the state when the chain is built. A closed window is deleted: the store keeps only what
the grace period still needs.

Outputs keep the record key; the value is {"start": ms, "end": ms, "value": result}.
`emit="update"` sends the window's new value with every record (timestamp: the
record's); `emit="final"` sends it once, when the window closes (timestamp: its end
minus 1 ms, as Kafka Streams does, so it falls inside the window).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.job.api import Node
from statestore.keys import encode_key
from service.eventtime.clock import NO_TIME
from statestore.tables import ABSENT, DELETED, MISS

FINAL, UPDATE = "final", "update"
EMIT_MODES = (UPDATE, FINAL)


def window_result(start: int, end: int, value: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "value": value}


def late_headers(uid: str, ts: int, watermark: int, grace_ms: int) -> list[tuple[str, bytes]]:
    """Why a record went to the late-data topic, for people and replays."""
    return [
        ("eos.operator", uid.encode()),
        ("eos.late.event-time", str(ts).encode()),
        ("eos.late.watermark", str(watermark).encode()),
        ("eos.late.reason", f"every window of event time {ts} had closed: the watermark {watermark} "
                            f"had passed its end plus the grace of {grace_ms} ms".encode()),
    ]


def late_gate(uid: str, grace_ms: int, late_topic: str | None, ctx: Any) -> Callable[[Any], bool]:
    """For windows where a record is late when its event time is `grace_ms` or more
    behind the watermark its origin had (sessions, sliding windows): a function that
    drops (counting it) or routes a late record of `key` and says whether it did."""
    late = ctx.late_counter(uid, late_topic is not None)
    out = ctx.produce

    def dropped(key: Any) -> bool:
        ts, passed = ctx.ts, max(ctx.record_watermark, ctx.clock.watermark)
        if ts + grace_ms > passed:
            return False
        late()
        if late_topic is not None:
            out.blocking(late_topic, ctx.raw, encode_key(key), headers=late_headers(uid, ts, passed, grace_ms))
        return True

    return dropped


def build_window(node: Node, ctx: Any, down: Callable[[Any, Any], None],
                 failure: Callable[[str, BaseException], Exception]) -> Callable[[Any, Any], None]:
    uid, options = node.uid, node.options
    shape, grace, emit_updates = options["shape"], options["grace_ms"], options["emit"] == UPDATE
    size = shape.size_ms
    fold, first, make_initial = options["fold"], options["first"], options["initial"]
    table = ctx.state.map_table(f"{uid}:windows", options["codec"])
    # The hot path reads and writes the table's pending changes inline (as aggregate
    # does). Window tables are never read whole per key, so their writes skip MapTable's
    # per-key index.
    cache, read_through = table.cache, table.read_through
    late_topic = options.get("late_topic")
    late = ctx.late_counter(uid, late_topic is not None)
    out = ctx.produce
    clock, starts_of = ctx.clock, shape.starts
    # Open windows by end: {end: {(key, start): None}} (a dict keeps insertion order).
    # Complete (rebuilt from the state), so a window it lacks needs no lookup.
    by_end: dict[int, dict[tuple[Any, int], None]] = {}
    for (key, start), _ in table.items():
        by_end.setdefault(start + size, {})[(key, start)] = None
    # The earliest end of an open window: the watermark closes nothing before it.
    next_end = [min(by_end, default=NO_TIME)]

    def push(key: Any, value: Any) -> None:
        # Late for a window: its origin had passed it (deterministic), or this task
        # closed it already (only when an idle origin came back behind the others).
        ts, passed = ctx.ts, ctx.record_watermark
        if clock.watermark > passed:
            passed = clock.watermark
        accepted = False
        for start in starts_of(ts):
            end = start + size
            if end + grace <= passed:
                continue
            accepted = True
            entry = (key, start)
            open_windows = by_end.get(end)
            if open_windows is None:
                open_windows = by_end[end] = {}
                if end < next_end[0] or next_end[0] == NO_TIME:
                    next_end[0] = end
            pending = table.pending  # a capture replaces it
            if entry in open_windows:
                acc = pending.get(entry, MISS)
                if acc is MISS:
                    acc = read_through(entry)
            else:  # a new window, known to be absent from RocksDB
                acc = cache[entry] = ABSENT
            try:
                if acc is ABSENT or acc is DELETED:
                    acc = first(value) if first is not None else fold(make_initial(), value)
                else:
                    acc = fold(acc, value)
            except Exception as exc:
                raise failure(uid, exc) from exc
            pending[entry] = acc
            open_windows[entry] = None
            if emit_updates:
                down(key, window_result(start, end, acc))
        if not accepted:
            late()
            if late_topic is not None:
                out.blocking(late_topic, ctx.raw, encode_key(key), headers=late_headers(uid, ts, passed, grace))

    def close_until(watermark: int) -> None:
        if next_end[0] == NO_TIME or next_end[0] + grace > watermark:
            return
        due = sorted(end for end in by_end if end + grace <= watermark)
        saved_ts = ctx.ts
        for end in due:
            for entry in by_end.pop(end):
                key, start = entry
                acc = table.get(key, start, ABSENT)
                table.forget(entry)
                if acc is not ABSENT and not emit_updates:
                    ctx.ts = end - 1
                    down(key, window_result(start, end, acc))
        ctx.ts = saved_ts
        next_end[0] = min(by_end, default=NO_TIME)

    ctx.watermark_listeners.append(close_until)
    return push
