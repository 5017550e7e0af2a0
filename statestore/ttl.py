"""State time-to-live: values that expire a fixed time after they were last written.

A value with a TTL is stored with the time it was last written, as (written_at, value)
(the codec `TtlCodec` names it, `json+ttl`, so a savepoint says so and a job that adds
or drops the TTL of a state is refused instead of misreading it). Times come from the
runtime's `TtlClock`: the time a read or write happens at, and the time no later read
can be behind, up to which the cleanup may delete.

- On read, a value whose written_at + ttl is at or before the read's time is absent
  (and deleted): an expired value is never returned, whether or not the cleanup reached it.
- A write keeps the later of the value's time and the write's, so a record that arrives
  out of order never shortens a value's life.
- In the background, each time the task's state is flushed (every checkpoint), a
  `Sweeper` reads a slice of the state's RocksDB entries from where it stopped (and
  wraps around), deletes those expired by the settled time and counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from statestore.codecs import ValueCodec
from statestore.keys import decode_key, split_composite
from statestore.tables import ABSENT, MISS, MapTable, ValueTable

TTL_SUFFIX = "+ttl"
# RocksDB entries a sweeper reads per flush (per state with a TTL): a state of n entries
# is swept whole every n / SWEEP_ENTRIES checkpoints.
SWEEP_ENTRIES = 20_000


class TtlCodec:
    """(written_at, value) in the inner codec, as a two-item array."""

    def __init__(self, inner: ValueCodec) -> None:
        self.inner = inner
        self.name = inner.name + TTL_SUFFIX

    def encode(self, value: Any) -> bytes:
        return self.inner.encode(list(value))

    def decode(self, data: bytes) -> Any:
        return tuple(self.inner.decode(data))


def ttl_codec(codec: ValueCodec) -> TtlCodec:
    return codec if isinstance(codec, TtlCodec) else TtlCodec(codec)


@dataclass(frozen=True)
class TtlClock:
    """What a state with a TTL reads its times from (the runtime makes one per operator)."""

    now: Callable[[], int]  # the time of the read or write in progress
    settled: Callable[[], int]  # no later read happens at an earlier time
    expired: Callable[[int], None]  # counts values the cleanup deleted


class ExpiringValues:
    """A value per key, each expiring `ttl_ms` after its last write."""

    __slots__ = ("table", "ttl_ms", "clock")

    def __init__(self, table: ValueTable, ttl_ms: int, clock: TtlClock) -> None:
        self.table, self.ttl_ms, self.clock = table, ttl_ms, clock

    def get(self, key: Any, default: Any = None) -> Any:
        envelope = self.table.get(key, ABSENT)
        if envelope is ABSENT:
            return default
        if envelope[0] + self.ttl_ms > self.clock.now():
            return envelope[1]
        self.table.delete(key)
        return default

    def put(self, key: Any, value: Any) -> None:
        now = self.clock.now()
        envelope = self.table.get(key, ABSENT)
        if envelope is not ABSENT and envelope[0] + self.ttl_ms > now:
            now = max(now, envelope[0])
        self.table.put(key, (now, value))

    def delete(self, key: Any) -> None:
        self.table.delete(key)


class ExpiringMap:
    """A map per key, each entry expiring `ttl_ms` after its last write (as Flink's TTL
    of a MapState)."""

    __slots__ = ("table", "ttl_ms", "clock")

    def __init__(self, table: MapTable, ttl_ms: int, clock: TtlClock) -> None:
        self.table, self.ttl_ms, self.clock = table, ttl_ms, clock

    def get(self, key: Any, map_key: Any, default: Any = None) -> Any:
        envelope = self.table.get(key, map_key, ABSENT)
        if envelope is ABSENT:
            return default
        if envelope[0] + self.ttl_ms > self.clock.now():
            return envelope[1]
        self.table.delete(key, map_key)
        return default

    def put(self, key: Any, map_key: Any, value: Any) -> None:
        now = self.clock.now()
        envelope = self.table.get(key, map_key, ABSENT)
        if envelope is not ABSENT and envelope[0] + self.ttl_ms > now:
            now = max(now, envelope[0])
        self.table.put(key, map_key, (now, value))

    def delete(self, key: Any, map_key: Any) -> None:
        self.table.delete(key, map_key)

    def entries(self, key: Any) -> dict[Any, Any]:
        now, ttl = self.clock.now(), self.ttl_ms
        found = {}
        for map_key, envelope in self.table.entries(key).items():
            if envelope[0] + ttl > now:
                found[map_key] = envelope[1]
            else:
                self.table.delete(key, map_key)
        return found


class Sweeper:
    """The background cleanup of one state with a TTL: a slice of its RocksDB entries per
    flush, from where the last slice stopped."""

    def __init__(self, table: ValueTable | MapTable, ttl_ms: int, clock: TtlClock) -> None:
        self.table, self.ttl_ms, self.clock = table, ttl_ms, clock
        self._after: bytes | None = None  # the last entry read; None: start from the first

    def sweep(self, limit: int | None = None) -> int:
        """Deletes the expired entries among the next `limit` (SWEEP_ENTRIES); returns how many."""
        limit = limit or SWEEP_ENTRIES
        table, settled, ttl = self.table, self.clock.settled(), self.ttl_ms
        decode, pending = table.codec.decode, table.pending
        is_map = isinstance(table, MapTable)
        entries = table.store.scan(table.cf, self._after, limit)
        self._after = entries[-1][0] if len(entries) == limit else None
        deleted = 0
        for raw_key, raw in entries:
            if decode(raw)[0] + ttl > settled:
                continue
            if is_map:
                key_bytes, map_key_bytes = split_composite(raw_key)
                key, map_key = decode_key(key_bytes), decode_key(map_key_bytes)
                if pending.get((key, map_key), MISS) is not MISS:
                    continue  # written since: the flush stores the newer value
                table.delete(key, map_key)
            else:
                key = decode_key(raw_key)
                if pending.get(key, MISS) is not MISS:
                    continue
                table.delete(key)
            deleted += 1
        if deleted:
            self.clock.expired(deleted)
        return deleted
