"""The Job API of tables: a table is a stream of changes to rows, one row per key.

    users = job.table("users", key=STRING, value=JSON)
    countries = (users.group_by(lambda user_id, user: (user["country"], user))
                     .count(uid="users-per-country"))
    countries.sink("users-per-country", key=STRING, value=JSON)

Operators after a table see each change (`Change(old, new)`, None for an absent row),
so a join can say when its result disappears and an aggregation can take back what a
row added to its old group. A table is *materialised* when its rows are in the task's
state: tables read from topics, aggregations and `to_table()` are; a join or a
`map_values` is materialised on demand when another join needs its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connectors.serdes import BYTES, Serde
from eos.errors import ConfigurationError
from service.job.api import JOIN_HOWS, Job, KeyedStream, Node, initial_factory
from statestore.codecs import JSON_CODEC, ValueCodec


class Table:
    """Rows by key, and the changes made to them."""

    def __init__(self, job: Job, node: Node, rows: str | None = None) -> None:
        self._job = job
        self._node = node
        # The column family holding the latest row per key, when materialised.
        self.rows = rows

    def _then(self, kind: str, uid: str | None, fn: Any = None, options: dict | None = None,
              on_error: str | None = None) -> Node:
        node = self._job._node(kind, uid, fn, options, on_error)
        self._node.children.append(node)
        return node

    def _materialized(self) -> Table:
        """This table with its rows in state: itself, or a materialising step after it."""
        if self.rows is not None:
            return self
        node = self._then("materialize", f"{self._node.uid}-rows", options={"codec": JSON_CODEC,
                                                                           "from_stream": False})
        return Table(self._job, node, rows=f"{node.uid}:rows")

    def join(self, other: Table, joiner: Callable[[Any, Any], Any], *, how: str = "inner",
             uid: str | None = None, on_error: str | None = None) -> Table:
        """A table of `joiner(row, other_row)` per key, kept current as either side changes.
        `how`: inner (both rows exist), left (this row exists; the other may be None) or
        outer (either exists). When a key's result disappears, the change deletes it (a
        tombstone when written to a topic). Both tables must be co-partitioned."""
        if not isinstance(other, Table):
            raise ConfigurationError(f"Table.join(): the other side must be a Table, not {type(other).__name__}")
        if how not in JOIN_HOWS:
            raise ConfigurationError(f"join(how={how!r}): how must be one of {', '.join(JOIN_HOWS)}")
        left, right = self._materialized(), other._materialized()
        node = left._then("table_join", uid, joiner, {"how": how, "left": left._node, "right": right._node,
                                                       "left_rows": left.rows, "right_rows": right.rows},
                          on_error=on_error)
        right._node.children.append(node)
        return Table(self._job, node)

    def map_values(self, fn: Callable[[Any], Any], *, uid: str | None = None,
                   on_error: str | None = None) -> Table:
        return Table(self._job, self._then("table_map", uid, fn, on_error=on_error))

    def filter(self, predicate: Callable[[Any], bool], *, uid: str | None = None,
               on_error: str | None = None) -> Table:
        """Keeps the rows `predicate` accepts; a row that stops passing is deleted."""
        return Table(self._job, self._then("table_filter", uid, predicate, on_error=on_error))

    def group_by(self, fn: Callable[[Any, Any], tuple[Any, Any]], *, uid: str | None = None,
                 partitions: int | None = None, on_error: str | None = None) -> GroupedTable:
        """Regroups the rows: `fn(key, row)` returns `(group_key, value)`. Each change
        travels through a repartition topic as a retraction of the old row's value from
        its old group and an addition of the new row's value to its new group, so an
        aggregation never keeps counting a row that moved away."""
        node = self._then("group_by", uid, fn, {"partitions": partitions}, on_error=on_error)
        return GroupedTable(self._job, node)

    def to_stream(self, *, uid: str | None = None) -> KeyedStream:
        """The table's changes as a stream of new rows (None where a row was deleted)."""
        return KeyedStream(self._job, self._then("to_stream", uid))

    def sink(self, topic: str, *, key: Serde = BYTES, value: Serde = BYTES, uid: str | None = None,
             on_error: str | None = None) -> None:
        """Writes every change to a topic: the new row, or a tombstone for a delete."""
        self.to_stream().sink(topic, key=key, value=value, uid=uid, on_error=on_error, tombstones=True)


class GroupedTable:
    """A table regrouped by a new key, waiting for its aggregation."""

    def __init__(self, job: Job, node: Node) -> None:
        self._job = job
        self._node = node

    def aggregate(self, adder: Callable[[Any, Any], Any], subtractor: Callable[[Any, Any], Any], *,
                  initial: Any = None, uid: str | None = None, codec: ValueCodec = JSON_CODEC,
                  on_error: str | None = None) -> Table:
        """A table of one accumulator per group: `adder(acc, value)` when a row joins the
        group or changes within it, `subtractor(acc, value)` with the row's old value
        when it leaves or changes. An accumulator that becomes None deletes the group."""
        node = self._job._node("table_aggregate", uid, adder, {"subtractor": subtractor, "codec": codec,
                                                               "initial": initial_factory(initial)},
                               on_error=on_error)
        self._node.children.append(node)
        return Table(self._job, node, rows=f"{node.uid}:acc")

    def count(self, *, uid: str | None = None) -> Table:
        return self.aggregate(lambda acc, _: acc + 1, lambda acc, _: acc - 1, initial=0, uid=uid)

    def sum(self, of: Callable[[Any], Any] | None = None, *, uid: str | None = None,
            on_error: str | None = None) -> Table:
        of = of or (lambda value: value)
        return self.aggregate(lambda acc, value: acc + of(value), lambda acc, value: acc - of(value), initial=0,
                              uid=uid, on_error=on_error)


class GlobalTable:
    """A table every worker holds whole; see `Job.global_table`."""

    def __init__(self, job: Job, node: Node) -> None:
        self._job = job
        self._node = node
