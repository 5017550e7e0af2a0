"""Write-back cached state tables: the hot path reads and writes Python objects in a
dict; RocksDB sees the changes only when the cache is flushed (at a barrier, or when
the cache outgrows its byte budget).

Sentinels distinguish three kinds of cache entry without a second dict: a value, a key
known to be absent from RocksDB (so a new key costs one miss, not one per record), and
a deletion not yet written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from statestore.codecs import ValueCodec
from statestore.keys import (
    composite_key,
    composite_prefix,
    decode_key,
    encode_key,
    split_composite,
)
from statestore.rocks import TaskStore

MISS = object()
ABSENT = object()
DELETED = object()

# Rough per-entry cost of a Python dict entry holding a small object, added to the
# encoded size when estimating how many entries fit the byte budget.
ENTRY_OVERHEAD_BYTES = 160


class _CachedTable:
    """What both table kinds share: the cache, the dirty set and how changes drain."""

    __slots__ = ("cf", "store", "codec", "cache", "dirty", "avg_encoded_bytes")

    def __init__(self, store: TaskStore, cf: str, codec: ValueCodec) -> None:
        self.cf = cf
        self.store = store
        self.codec = codec
        self.cache: dict[Any, Any] = {}
        self.dirty: set[Any] = set()
        self.avg_encoded_bytes = 64

    def _raw_key(self, entry: Any) -> bytes:
        raise NotImplementedError

    def drain_writes(self) -> list[tuple[str, bytes, bytes | None]]:
        """The pending changes as RocksDB writes; the cache keeps them as clean entries."""
        writes = []
        encode, cf, cache, total = self.codec.encode, self.cf, self.cache, 0
        for entry in self.dirty:
            value = cache[entry]
            if value is DELETED:
                cache[entry] = ABSENT
                writes.append((cf, self._raw_key(entry), None))
            else:
                raw = encode(value)
                total += len(raw)
                writes.append((cf, self._raw_key(entry), raw))
        if writes:
            self.avg_encoded_bytes = max(16, total // len(writes))
        self.dirty.clear()
        return writes

    def entry_bytes(self) -> int:
        return len(self.cache) * (self.avg_encoded_bytes + ENTRY_OVERHEAD_BYTES)

    def evict(self) -> None:
        assert not self.dirty, "evicting unflushed state would lose it"
        self.cache.clear()


class ValueTable(_CachedTable):
    """Per-key single values of one operator state (`ValueState`)."""

    __slots__ = ()

    def _raw_key(self, entry: Any) -> bytes:
        return encode_key(entry)

    def load(self, key: Any) -> Any:
        """Reads through to RocksDB on a cache miss; returns ABSENT when there is no value."""
        raw = self.store.get(self.cf, encode_key(key))
        value = ABSENT if raw is None else self.codec.decode(raw)
        self.cache[key] = value
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        value = self.cache.get(key, MISS)
        if value is MISS:
            value = self.load(key)
        return default if value is ABSENT or value is DELETED else value

    def put(self, key: Any, value: Any) -> None:
        self.cache[key] = value
        self.dirty.add(key)

    def delete(self, key: Any) -> None:
        self.cache[key] = DELETED
        self.dirty.add(key)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) in RocksDB. Callers flush first (savepoints do)."""
        for raw_key, raw in self.store.items(self.cf):
            yield decode_key(raw_key), self.codec.decode(raw)


class MapTable(_CachedTable):
    """Per-key maps of one operator state (`MapState`): entries live under the key's
    prefix in RocksDB, so one key's map can be iterated without loading others."""

    __slots__ = ("dirty_by_key",)

    def __init__(self, store: TaskStore, cf: str, codec: ValueCodec) -> None:
        super().__init__(store, cf, codec)
        self.dirty_by_key: dict[Any, set[Any]] = {}

    def _raw_key(self, entry: Any) -> bytes:
        key, map_key = entry
        return composite_key(encode_key(key), encode_key(map_key))

    def get(self, key: Any, map_key: Any, default: Any = None) -> Any:
        entry = (key, map_key)
        value = self.cache.get(entry, MISS)
        if value is MISS:
            raw = self.store.get(self.cf, composite_key(encode_key(key), encode_key(map_key)))
            value = ABSENT if raw is None else self.codec.decode(raw)
            self.cache[entry] = value
        return default if value is ABSENT or value is DELETED else value

    def put(self, key: Any, map_key: Any, value: Any) -> None:
        entry = (key, map_key)
        self.cache[entry] = value
        self.dirty.add(entry)
        self.dirty_by_key.setdefault(key, set()).add(map_key)

    def delete(self, key: Any, map_key: Any) -> None:
        self.put(key, map_key, DELETED)

    def entries(self, key: Any) -> dict[Any, Any]:
        """The whole map of `key`: RocksDB's entries overlaid with unflushed changes."""
        prefix = composite_prefix(encode_key(key))
        result = {
            decode_key(split_composite(raw_key)[1]): self.codec.decode(raw)
            for raw_key, raw in self.store.items(self.cf, prefix)
        }
        for map_key in self.dirty_by_key.get(key, ()):
            value = self.cache[(key, map_key)]
            if value is DELETED:
                result.pop(map_key, None)
            else:
                result[map_key] = value
        return result

    def drain_writes(self) -> list[tuple[str, bytes, bytes | None]]:
        self.dirty_by_key.clear()
        return super().drain_writes()

    def items(self) -> Iterator[tuple[tuple[Any, Any], Any]]:
        for raw_key, raw in self.store.items(self.cf):
            key_bytes, map_key_bytes = split_composite(raw_key)
            yield (decode_key(key_bytes), decode_key(map_key_bytes)), self.codec.decode(raw)
