"""Keyed state as operators see it: handles bound to the record's current key.

`ctx.value_state("total").get()` reads the current key's value from the write-back
cache; the runtime sets the current key before calling the operator, as Flink's keyed
context does, so user code never passes keys to state by hand.
"""

from __future__ import annotations

from typing import Any

from eos.errors import ConfigurationError
from statestore.codecs import JSON_CODEC, ValueCodec
from statestore.tables import MapTable, ValueTable
from statestore.ttl import ExpiringMap, ExpiringValues, TtlClock


class KeyedContext:
    """Per task and operator: the current key and the operator's named states.
    `ttl_clock` is what states with a time to live read their times from (None: the
    operator's stage has no time, and a TTL is refused)."""

    def __init__(self, task_state: Any, uid: str, ttl_clock: TtlClock | None = None) -> None:
        self.key: Any = None
        self._task_state = task_state
        self._uid = uid
        self._ttl_clock = ttl_clock

    def value_state(self, name: str, codec: ValueCodec = JSON_CODEC, ttl_ms: int | None = None) -> ValueState:
        """One value per key; with `ttl_ms`, a value expires that long (of event time)
        after it was last set."""
        cf = f"{self._uid}:{name}"
        if ttl_ms is None:
            return ValueState(self._task_state.value_table(cf, codec), self)
        return ValueState(self._task_state.expiring_values(cf, codec, self._ttl(name, ttl_ms), self._ttl_clock), self)

    def map_state(self, name: str, codec: ValueCodec = JSON_CODEC, ttl_ms: int | None = None) -> MapState:
        """A map per key; with `ttl_ms`, each entry expires that long (of event time)
        after it was last put."""
        cf = f"{self._uid}:{name}"
        if ttl_ms is None:
            return MapState(self._task_state.map_table(cf, codec), self)
        return MapState(self._task_state.expiring_map(cf, codec, self._ttl(name, ttl_ms), self._ttl_clock), self)

    def _ttl(self, name: str, ttl_ms: int) -> int:
        if ttl_ms <= 0:
            raise ConfigurationError(f"operator {self._uid!r}: state {name!r} needs a positive ttl_ms, not {ttl_ms}")
        if self._ttl_clock is None:
            raise ConfigurationError(
                f"operator {self._uid!r}: state {name!r} has a time to live, which counts event time, but its "
                "stage runs without it; declare the state in open() so the job finds it, or pass "
                "process(..., timers=True)")
        return ttl_ms


class ValueState:
    """One value per key."""

    __slots__ = ("_table", "_ctx")

    def __init__(self, table: ValueTable | ExpiringValues, ctx: KeyedContext) -> None:
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

    def __init__(self, table: MapTable | ExpiringMap, ctx: KeyedContext) -> None:
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
