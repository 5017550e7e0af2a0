"""The session window operator: per key, sessions of activity that grow and merge.

A record at `ts` opens [ts, ts + gap); every open session of its key that overlaps it
merges into one, whose accumulator is the merge of theirs (in start order) with the
record folded in. A session closes when the task's watermark reaches its end plus the
grace period, and is then deleted.

Sessions live in a map state (key -> start -> [end, accumulator]), so checkpoints and
savepoints carry them and a rescale moves them with their key. In memory, the open
sessions of each key (start -> end) and an index by end are rebuilt from the state when
the chain is built.

Outputs: {"start": ms, "end": ms, "value": result}, with end = the last record's event
time + gap. With emit="update", a merge first sends {"start", "end", "value": None}
for each session it absorbed (so a reader keyed by (key, start) can drop them), then
the merged session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.eventtime.window_operator import UPDATE, late_gate, window_result
from service.job.api import Node


def build_session(node: Node, ctx: Any, down: Callable[[Any, Any], None],
                  failure: Callable[[str, BaseException], Exception]) -> Callable[[Any, Any], None]:
    uid, options = node.uid, node.options
    gap, grace, emit_updates = options["shape"].gap_ms, options["grace_ms"], options["emit"] == UPDATE
    fold, first, make_initial, merge = options["fold"], options["first"], options["initial"], options["merge"]
    table = ctx.state.map_table(f"{uid}:sessions", options["codec"])
    dropped = late_gate(uid, grace, options.get("late_topic"), ctx)
    open_sessions: dict[Any, dict[int, int]] = {}  # key -> {start: end}
    by_end: dict[int, dict[tuple[Any, int], None]] = {}
    for (key, start), (end, _) in table.items():
        open_sessions.setdefault(key, {})[start] = end
        by_end.setdefault(end, {})[(key, start)] = None

    def forget(key: Any, start: int, end: int) -> None:
        del open_sessions[key][start]
        by_end[end].pop((key, start), None)
        if not by_end[end]:
            del by_end[end]
        table.delete(key, start)

    def push(key: Any, value: Any) -> None:
        if dropped(key):
            return
        ts = ctx.ts
        sessions = open_sessions.setdefault(key, {})
        start, end = ts, ts + gap
        overlapping = sorted((s, e) for s, e in sessions.items() if s < end and ts < e)
        try:
            if not overlapping:
                acc = first(value) if first is not None else fold(make_initial(), value)
            else:
                acc = table.get(key, overlapping[0][0])[1]
                for s, _ in overlapping[1:]:
                    acc = merge(acc, table.get(key, s)[1])
                acc = fold(acc, value)
        except Exception as exc:
            raise failure(uid, exc) from exc
        for s, e in overlapping:
            forget(key, s, e)
            start, end = min(start, s), max(end, e)
        if emit_updates:
            for s, e in overlapping:
                if s != start:  # absorbed: its start no longer names a session
                    down(key, window_result(s, e, None))
        sessions[start] = end
        by_end.setdefault(end, {})[(key, start)] = None
        table.put(key, start, [end, acc])
        if emit_updates:
            down(key, window_result(start, end, acc))

    def close_until(watermark: int) -> None:
        due = sorted(end for end in by_end if end + grace <= watermark)
        saved_ts = ctx.ts
        for end in due:
            for key, start in list(by_end.get(end, ())):
                acc = table.get(key, start)[1]
                forget(key, start, end)
                if not open_sessions[key]:
                    del open_sessions[key]
                if not emit_updates:
                    ctx.ts = end - 1
                    down(key, window_result(start, end, acc))
        ctx.ts = saved_ts

    ctx.watermark_listeners.append(close_until)
    return push
