"""The join of two keyed streams within a bound of event time.

Two records of one key meet when their event times are at most `within_ms` apart. Each
side's records wait in map state (key -> [event time, offset] -> [value, matched]) until
the watermark passes their time plus `within_ms` plus `grace_ms`, when no on-time record
of the other side can meet them any more; then they are deleted, and a left (or outer)
join emits those that met nothing, with None for the other side.

A record is late, and dropped (counted), when its event time is more than `grace_ms` behind
the watermark its own origin had when it was sent: the rule that makes the pairs the
same whatever the order the two inputs interleave in. An on-time record's partners have
not expired when it arrives, since the task's watermark is no further than its origin's.
Each pair is emitted once, when the later of its two records (in processing order)
arrives, with the later of their two event times.
"""

from __future__ import annotations

from typing import Any

from service.job.api import Node
from service.tables.operators import Failure, Push, Sides

LEFT, RIGHT = 0, 1


def build_stream_join(node: Node, ctx: Any, down: Push, failure: Failure) -> Sides:
    options = node.options
    uid, joiner, how = node.uid, node.fn, options["how"]
    within, grace = options["within_ms"], options["grace_ms"]
    tables = (ctx.state.map_table(f"{uid}:left", options["codec"]),
              ctx.state.map_table(f"{uid}:right", options["codec"]))
    # Which sides' records that met nothing are emitted when they expire.
    unmatched = {"inner": (), "left": (LEFT,), "outer": (LEFT, RIGHT)}[how]
    late = ctx.late_counter(uid, False)
    # Records waiting, by the watermark at which they expire: {expiry: {(side, key, entry)}}.
    expiring: dict[int, dict[tuple[int, Any, tuple[int, int]], None]] = {}
    for side, table in enumerate(tables):
        for (key, entry), _ in table.items():
            expiring.setdefault(entry[0] + within + grace, {})[(side, key, tuple(entry))] = None

    def call(left: Any, right: Any) -> Any:
        try:
            return joiner(left, right)
        except Exception as exc:
            raise failure(uid, exc) from exc

    def arrive(side: int, key: Any, value: Any) -> None:
        ts = ctx.ts
        if ts + grace < ctx.record_watermark:
            late()
            return
        other = 1 - side
        matched = False
        for entry, stored in tables[other].entries(key).items():
            their_ts = entry[0]
            if abs(their_ts - ts) > within:
                continue
            matched = True
            if not stored[1] and other in unmatched:
                tables[other].put(key, entry, [stored[0], True])
            saved = ctx.ts
            ctx.ts = max(ts, their_ts)
            down(key, call(value, stored[0]) if side == LEFT else call(stored[0], value))
            ctx.ts = saved
        entry = (ts, ctx.offset)
        tables[side].put(key, entry, [value, matched])
        expiring.setdefault(ts + within + grace, {})[(side, key, entry)] = None

    def expire(watermark: int) -> None:
        due = sorted(at for at in expiring if at < watermark)
        saved = ctx.ts
        for at in due:
            for side, key, entry in expiring.pop(at):
                stored = tables[side].get(key, entry)
                tables[side].delete(key, entry)
                if stored is not None and not stored[1] and side in unmatched:
                    ctx.ts = entry[0]
                    down(key, call(stored[0], None) if side == LEFT else call(None, stored[0]))
        ctx.ts = saved

    ctx.watermark_listeners.append(expire)
    return Sides(lambda key, value: arrive(LEFT, key, value), lambda key, value: arrive(RIGHT, key, value),
                 right_parent=options["right"])

