"""The count window operator: windows of a number of records per key (Flink's
countWindow), fired by the record that completes them.

A key's records are numbered 0, 1, 2 ... in the order they reach the task. With
`Count(size, slide)` a window ends after every `slide`-th record, at position c (c =
slide, 2 * slide, ...), and holds the records at positions [max(0, c - size), c): the last
`size` records, fewer for the first windows (as Flink's evictor keeps them). `Count(size)`
is slide = size: consecutive batches of `size` records. Like hopping windows on
positions instead of time: a record is folded into each of the size / slide windows
that will hold it, so no record is kept, and a window is sent and deleted when its last
record arrives.

Outputs keep the record key; the value is {"start": position, "end": position, "value":
result} with positions as above (end exclusive); the timestamp is the event time of the
record that completed the window. `emit="update"` also sends every window's value after
each record it takes.

State: the key's record count (value state `count`) and its open windows (map state
`windows`: key -> end position -> accumulator), so both are in checkpoints and
savepoints and move with the key. A window fires in the same state change as the record
that completes it, and its output is in that record's transaction: exactly once.
Windows that never fill (a key that stops short) stay, like Flink's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.eventtime.window_operator import UPDATE, window_result
from service.job.api import Node
from statestore.codecs import JSON_CODEC
from statestore.tables import ABSENT


def build_count(node: Node, ctx: Any, down: Callable[[Any, Any], None],
                failure: Callable[[str, BaseException], Exception]) -> Callable[[Any, Any], None]:
    uid, options = node.uid, node.options
    shape, emit_updates = options["shape"], options["emit"] == UPDATE
    size, every = shape.size, shape.every
    fold, first, make_initial = options["fold"], options["first"], options["initial"]
    windows = ctx.state.map_table(f"{uid}:windows", options["codec"])
    counts = ctx.state.value_table(f"{uid}:count", JSON_CODEC)

    def push(key: Any, value: Any) -> None:
        position = counts.get(key, 0)
        fired = []
        try:
            for end in range((position // every + 1) * every, position + size + 1, every):
                acc = windows.get(key, end, ABSENT)
                if acc is ABSENT:
                    acc = first(value) if first is not None else fold(make_initial(), value)
                else:
                    acc = fold(acc, value)
                fired.append((end, acc))
        except Exception as exc:
            raise failure(uid, exc) from exc
        counts.put(key, position + 1)
        for end, acc in fired:
            if end == position + 1:
                windows.delete(key, end)
                down(key, window_result(max(0, end - size), end, acc))
            else:
                windows.put(key, end, acc)
                if emit_updates:
                    down(key, window_result(max(0, end - size), end, acc))

    return push
