"""Keyed state as operators see it: handles bound to the record's current key.

`ctx.value_state("total").get()` reads the current key's value from the write-back
cache; the runtime sets the current key before calling the operator, as Flink's keyed
context does, so user code never passes keys to state by hand.
"""

from __future__ import annotations

from typing import Any

from statestore.codecs import JSON_CODEC, ValueCodec
from statestore.tables import MapTable, ValueTable


class KeyedContext:
    """Per task and operator: the current key and the operator's named states."""

    def __init__(self, task_state: Any, uid: str) -> None:
        self.key: Any = None
        self._task_state = task_state
        self._uid = uid

    def value_state(self, name: str, codec: ValueCodec = JSON_CODEC) -> ValueState:
        return ValueState(self._task_state.value_table(f"{self._uid}:{name}", codec), self)

    def map_state(self, name: str, codec: ValueCodec = JSON_CODEC) -> MapState:
        return MapState(self._task_state.map_table(f"{self._uid}:{name}", codec), self)


class ValueState:
    """One value per key."""

    __slots__ = ("_table", "_ctx")

    def __init__(self, table: ValueTable, ctx: KeyedContext) -> None:
        self._table = table
        self._ctx = ctx

    def get(self, default: Any = None) -> Any:
        return self._table.get(self._ctx.key, default)

    def set(self, value: Any) -> None:
        self._table.put(self._ctx.key, value)

    def clear(self) -> None:
        self._table.delete(self._ctx.key)


class MapState:
    """A map per key; entries are stored (and cached) individually."""

    __slots__ = ("_table", "_ctx")

    def __init__(self, table: MapTable, ctx: KeyedContext) -> None:
        self._table = table
        self._ctx = ctx

    def get(self, map_key: Any, default: Any = None) -> Any:
        return self._table.get(self._ctx.key, map_key, default)

    def put(self, map_key: Any, value: Any) -> None:
        self._table.put(self._ctx.key, map_key, value)

    def remove(self, map_key: Any) -> None:
        self._table.delete(self._ctx.key, map_key)

    def contains(self, map_key: Any) -> bool:
        return self.get(map_key, _NOTHING) is not _NOTHING

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._table.entries(self._ctx.key).items())

    def keys(self) -> list[Any]:
        return list(self._table.entries(self._ctx.key))


_NOTHING = object()
