"""The sliding window operator: per key, a moving aggregate over the last `size` ms,
with windows defined by the records' times (Kafka Streams' SlidingWindows).

A window is [start, start + size], both ends inclusive. Per key, the windows that exist
are, for each record time t: [t - size, t] (the record's *left* window), and
[t + 1, t + 1 + size] (its *right* window) when some record lies in (t, t + 1 + size].
Each holds the fold of every record in its range. A new record is folded into every
window that contains it, and creates the windows it brings into being; their contents
come from windows that already hold exactly the records they need, so no record is
kept:

- its left window holds what the window with the greatest start among those ending
  before t holds (the records in [t - size, t), when its latest record is not older
  than t - size), plus the record;
- the right window of the previous record P (the latest before t), when missing and
  the record falls in it: no record lay in it before, so it holds the record alone;
- its own right window, when a later record already arrived (out of order): what the
  window with the greatest start in (max(P, t - size), t] held before the record.

A record is late when its event time is `grace_ms` or more behind the watermark its
origin had; then every window it belongs to has closed, and every window holds exactly
the on-time records of its range (Kafka Streams drops a record only when its right
window has closed, and adds it to the windows still open, so windows made from closed
ones miss it). A window closes when the task's watermark reaches its end plus the grace:
`emit="final"` sends it then, once (timestamp: its end, the last millisecond it covers).
A closed window stays in the state for another `size` ms of watermark, as the source of
left windows of records still on time, then it is deleted.

State: map state (key -> start -> [accumulator, latest record time, closed]), so
checkpoints and savepoints carry it and a rescale moves it with its key; the closed
flag keeps a window a resumed job's lower watermark would reopen from being sent again.
In memory: each key's window starts, sorted, and the windows by end.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from typing import Any

from service.eventtime.window_operator import UPDATE, late_gate, window_result
from service.job.api import Node

# A window in memory: [latest record time, closed].
MAX_TS, CLOSED = 0, 1


def build_sliding(node: Node, ctx: Any, down: Callable[[Any, Any], None],
                  failure: Callable[[str, BaseException], Exception]) -> Callable[[Any, Any], None]:
    uid, options = node.uid, node.options
    size, grace, emit_updates = options["shape"].size_ms, options["grace_ms"], options["emit"] == UPDATE
    fold, first, make_initial, codec = options["fold"], options["first"], options["initial"], options["codec"]
    table = ctx.state.map_table(f"{uid}:windows", codec)
    dropped = late_gate(uid, grace, options.get("late_topic"), ctx)
    starts_of: dict[Any, list[int]] = {}  # key -> its window starts, sorted
    windows_of: dict[Any, dict[int, list]] = {}  # key -> start -> [latest record time, closed]
    closing: dict[int, dict[tuple[Any, int], None]] = {}  # open windows by end
    expiring: dict[int, dict[tuple[Any, int], None]] = {}  # closed windows by end
    for (key, start), (_, max_ts, closed) in table.items():
        insort(starts_of.setdefault(key, []), start)
        windows_of.setdefault(key, {})[start] = [max_ts, closed]
        (expiring if closed else closing).setdefault(start + size, {})[(key, start)] = None

    def copy(acc: Any) -> Any:
        """An accumulator a new window starts from: its own object, since a fold may
        change its accumulator in place."""
        return codec.decode(codec.encode(acc))

    def fresh(value: Any) -> Any:
        return first(value) if first is not None else fold(make_initial(), value)

    def emit(key: Any, start: int, acc: Any, at: int) -> None:
        saved, ctx.ts = ctx.ts, at
        down(key, window_result(start, start + size, acc))
        ctx.ts = saved

    def create(key: Any, start: int, acc: Any, max_ts: int) -> None:
        insort(starts_of.setdefault(key, []), start)
        windows_of.setdefault(key, {})[start] = [max_ts, False]
        closing.setdefault(start + size, {})[(key, start)] = None
        table.put(key, start, [acc, max_ts, False])
        if emit_updates:
            emit(key, start, acc, max_ts)

    def push(key: Any, value: Any) -> None:
        if dropped(key):
            return
        t = ctx.ts
        starts = starts_of.get(key, [])
        windows = windows_of.get(key, {})
        left = windows.get(t - size)
        previous: int | None = None  # P: the latest record time before t
        left_source = None
        if left is not None:
            if left[MAX_TS] < t:
                previous = left[MAX_TS]
        else:
            i = bisect_left(starts, t - size) - 1
            if i >= 0:
                previous = windows[starts[i]][MAX_TS]
                if previous >= t - size:
                    left_source = starts[i]
        duplicate = left is not None and left[MAX_TS] == t  # a record at t came before
        try:
            right_acc = right_ts = None
            if not duplicate and t + 1 not in windows:
                i = bisect_right(starts, t) - 1
                if i >= 0:
                    source = starts[i]
                    floor = t - size if previous is None else max(previous, t - size)
                    if source > floor and windows[source][MAX_TS] > t:
                        right_acc, right_ts = copy(table.get(key, source)[0]), windows[source][MAX_TS]
            new_left = None
            if left is None:
                new_left = fold(copy(table.get(key, left_source)[0]), value) if left_source is not None \
                    else fresh(value)
            new_previous_right = None
            if not duplicate and previous is not None and previous >= t - size and previous + 1 not in windows:
                new_previous_right = fresh(value)
            updated = []
            for start in starts[bisect_left(starts, t - size):bisect_right(starts, t)]:
                row = table.get(key, start)
                updated.append((start, fold(row[0], value), max(row[1], t)))
        except Exception as exc:
            raise failure(uid, exc) from exc
        for start, acc, max_ts in updated:
            windows[start][MAX_TS] = max_ts
            table.put(key, start, [acc, max_ts, False])
            if emit_updates:
                emit(key, start, acc, max_ts)
        if new_left is not None:
            create(key, t - size, new_left, t)
        if new_previous_right is not None:
            create(key, previous + 1, new_previous_right, t)
        if right_acc is not None:
            create(key, t + 1, right_acc, right_ts)

    def forget(key: Any, start: int) -> None:
        starts = starts_of[key]
        del starts[bisect_left(starts, start)]
        del windows_of[key][start]
        if not starts:
            del starts_of[key], windows_of[key]
        table.delete(key, start)

    def close_until(watermark: int) -> None:
        for end in sorted(end for end in closing if end + grace <= watermark):
            for key, start in closing.pop(end):
                acc, max_ts, _ = table.get(key, start)
                windows_of[key][start][CLOSED] = True
                table.put(key, start, [acc, max_ts, True])
                expiring.setdefault(end, {})[(key, start)] = None
                if not emit_updates:
                    emit(key, start, acc, end)
        for end in sorted(end for end in expiring if end + size + grace <= watermark):
            for key, start in expiring.pop(end):
                forget(key, start)

    ctx.watermark_listeners.append(close_until)
    return push
