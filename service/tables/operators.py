"""The operators of tables and of joins with tables, compiled into push functions like
every other operator (service/runtime/operators.py).

Values between table operators are `Change(old, new)`. A table's rows live in a value
state (`{uid}:rows`, or an aggregation's `{uid}:acc`), so a join reads the other side's
current row from the task's state: both sides of a join are in the same task, their
inputs being co-partitioned and read in timestamp order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.job.api import Node
from service.tables.change import Change

Push = Callable[[Any, Any], None]
Failure = Callable[[str, BaseException], Exception]


class Sides:
    """An operator with two inputs: which push a parent calls depends on its side."""

    __slots__ = ("left", "right", "right_parent")

    def __init__(self, left: Push, right: Push, right_parent: Node) -> None:
        self.left, self.right, self.right_parent = left, right, right_parent

    def of(self, parent: Node) -> Push:
        return self.right if parent is self.right_parent else self.left


def _codec_of(node: Node) -> Any:
    return node.options["codec"]


def build_table_source(node: Node, ctx: Any, down: Push) -> Push:
    """A table's topic: each record replaces its key's row, a null value deletes it."""
    rows = ctx.state.value_table(f"{node.uid}:rows", _codec_of(node))
    get, put, delete = rows.get, rows.put, rows.delete

    def push(key: Any, value: Any) -> None:
        old = get(key)
        if value is None:
            if old is None:
                return
            delete(key)
        else:
            put(key, value)
        down(key, Change(old, value))

    return push


def build_materialize(node: Node, ctx: Any, down: Push, failure: Failure) -> Push:
    """Keeps the latest row per key: of a table whose rows are not in state yet, or of a
    stream (`to_table()`, each value a row, None deleting it)."""
    rows = ctx.state.value_table(f"{node.uid}:rows", _codec_of(node))
    get, put, delete = rows.get, rows.put, rows.delete
    from_stream = node.options["from_stream"]

    def push(key: Any, value: Any) -> None:
        new = value if from_stream else value.new
        old = get(key)
        if new is None:
            if old is None:
                return
            delete(key)
        else:
            put(key, new)
        down(key, Change(old, new))

    return push


def build_to_stream(node: Node, ctx: Any, down: Push, failure: Failure) -> Push:
    def push(key: Any, change: Change) -> None:
        down(key, change.new)

    return push


def build_table_map(node: Node, ctx: Any, down: Push, failure: Failure) -> Push:
    fn, uid = node.fn, node.uid

    def push(key: Any, change: Change) -> None:
        try:
            old = None if change.old is None else fn(change.old)
            new = None if change.new is None else fn(change.new)
        except Exception as exc:
            raise failure(uid, exc) from exc
        if old is not None or new is not None:
            down(key, Change(old, new))

    return push


def build_table_filter(node: Node, ctx: Any, down: Push, failure: Failure) -> Push:
    predicate, uid = node.fn, node.uid

    def push(key: Any, change: Change) -> None:
        try:
            old = change.old if change.old is not None and predicate(change.old) else None
            new = change.new if change.new is not None and predicate(change.new) else None
        except Exception as exc:
            raise failure(uid, exc) from exc
        if old is not None or new is not None:
            down(key, Change(old, new))

    return push


def _joined(how: str, joiner: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """The join's row for a pair of rows (either may be None), or None when there is none."""
    if how == "inner":
        return lambda left, right: None if left is None or right is None else joiner(left, right)
    if how == "left":
        return lambda left, right: None if left is None else joiner(left, right)
    return lambda left, right: None if left is None and right is None else joiner(left, right)


def build_stream_table_join(node: Node, ctx: Any, down: Push, failure: Failure) -> Sides:
    """Each stream record meets its key's row; the table's changes emit nothing."""
    table = node.options["table"]
    rows = ctx.state.value_table(node.options["rows"], _codec_of(table))
    get, joiner, uid, inner = rows.get, node.fn, node.uid, node.options["how"] == "inner"

    def push(key: Any, value: Any) -> None:
        row = get(key)
        if row is None and inner:
            return
        try:
            joined = joiner(value, row)
        except Exception as exc:
            raise failure(uid, exc) from exc
        down(key, joined)

    def table_changed(key: Any, change: Change) -> None:
        return None

    return Sides(push, table_changed, right_parent=table)


def build_table_join(node: Node, ctx: Any, down: Push, failure: Failure) -> Sides:
    """A change on either side updates the result for its key; a result that
    disappears becomes a deletion."""
    options = node.options
    left_rows = ctx.state.value_table(options["left_rows"], _codec_of(options["left"]))
    right_rows = ctx.state.value_table(options["right_rows"], _codec_of(options["right"]))
    joined, uid = _joined(options["how"], node.fn), node.uid

    def emit(key: Any, old_left: Any, new_left: Any, old_right: Any, new_right: Any) -> None:
        try:
            old, new = joined(old_left, old_right), joined(new_left, new_right)
        except Exception as exc:
            raise failure(uid, exc) from exc
        if old is not None or new is not None:
            down(key, Change(old, new))

    def left(key: Any, change: Change) -> None:
        right = right_rows.get(key)
        emit(key, change.old, change.new, right, right)

    def right(key: Any, change: Change) -> None:
        current = left_rows.get(key)
        emit(key, current, current, change.old, change.new)

    return Sides(left, right, right_parent=options["right"])


def build_global_join(node: Node, ctx: Any, down: Push, failure: Failure) -> Push:
    """Each record meets the row of the worker's global table that `key(value)` names."""
    options = node.options
    table = ctx.global_tables[options["table"].uid]
    key_fn, joiner, uid, inner = options["key_fn"], node.fn, node.uid, options["how"] == "inner"

    def push(key: Any, value: Any) -> None:
        try:
            row = table.get(key_fn(value))
            if row is None and inner:
                return
            joined = joiner(value, row)
        except Exception as exc:
            raise failure(uid, exc) from exc
        down(key, joined)

    return push


RETRACT, ADD = "-", "+"


def build_table_aggregate(node: Node, ctx: Any, down: Push, failure: Failure) -> Push:
    """One accumulator per group: a row's old value is subtracted, its new value added
    (each arrives as its own record of the group_by's repartition topic)."""
    options = node.options
    accs = ctx.state.value_table(f"{node.uid}:acc", options["codec"])
    get, put, delete = accs.get, accs.put, accs.delete
    adder, subtractor, initial, uid = node.fn, options["subtractor"], options["initial"], node.uid

    def push(key: Any, value: tuple[str, Any]) -> None:
        op, row = value
        old = get(key)
        try:
            acc = initial() if old is None else old
            acc = adder(acc, row) if op == ADD else subtractor(acc, row)
        except Exception as exc:
            raise failure(uid, exc) from exc
        if acc is None:
            if old is None:
                return
            delete(key)
        else:
            put(key, acc)
        down(key, Change(old, acc))

    return push
