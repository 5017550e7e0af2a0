"""Write-back cached state tables: the hot path reads and writes Python objects in
dicts; RocksDB sees the changes only when the cache is flushed (at a barrier, or when
the cache outgrows its byte budget).

Two dicts: `pending` holds what changed since the last flush (a write is one dict store,
no separate dirty set), `cache` holds clean entries read from RocksDB or flushed.
Sentinels tell a value from a key known to be absent from RocksDB (so a new key costs one
miss, not one per record) and from a deletion not yet written.
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

# Per-entry cost of a cached entry beyond its encoded size: the dict slot, the key object
# and the decoded value object. Measured with tracemalloc for running-sum totals (a str
# key, a 4-field dict value, 69 bytes encoded): 428 bytes an entry. An estimate that is
# too low lets the cache grow past its budget by the same factor.
ENTRY_OVERHEAD_BYTES = 360


class _CachedTable:
    """What both table kinds share: the clean cache, the pending changes and how they
    drain into a RocksDB write batch."""

    __slots__ = ("cf", "store", "codec", "cache", "pending", "avg_encoded_bytes")

    def __init__(self, store: TaskStore, cf: str, codec: ValueCodec) -> None:
        self.cf = cf
        self.store = store
        self.codec = codec
        self.cache: dict[Any, Any] = {}
        self.pending: dict[Any, Any] = {}
        self.avg_encoded_bytes = 64

    def _raw_key(self, entry: Any) -> bytes:
        raise NotImplementedError

    def _lookup(self, entry: Any) -> Any:
        value = self.pending.get(entry, MISS)
        if value is MISS:
            value = self.cache.get(entry, MISS)
        return value

    def _forget(self, entry: Any) -> None:
        """A deletion: written at the next flush, or, for an entry known to be absent from
        RocksDB (created since the last flush), simply dropped."""
        if self.cache.get(entry, MISS) is ABSENT:
            self.pending.pop(entry, None)
        else:
            self.pending[entry] = DELETED

    def drain_into(self, batch: Any, handle: Any) -> int:
        """Puts the pending changes into `batch`; written values stay cached as clean
        entries, deleted ones leave the cache (state that churns, such as closed windows
        or expired values, would otherwise fill it with entries never read again; a key
        read again after its deletion costs one miss). The caller commits the batch before
        anything reads the table again."""
        encode, raw_key, cache, total = self.codec.encode, self._raw_key, self.cache, 0
        pending = self.pending
        for entry, value in pending.items():
            if value is DELETED:
                cache.pop(entry, None)
                batch.delete(raw_key(entry), handle)
            else:
                cache[entry] = value
                raw = encode(value)
                total += len(raw)
                batch.put(raw_key(entry), raw, handle)
        count = len(pending)
        if count:
            self.avg_encoded_bytes = max(16, total // count)
        pending.clear()
        return count

    def entry_bytes(self) -> int:
        return (len(self.cache) + len(self.pending)) * (self.avg_encoded_bytes + ENTRY_OVERHEAD_BYTES)

    def evict(self) -> None:
        assert not self.pending, "evicting unflushed state would lose it"
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
        value = self._lookup(key)
        if value is MISS:
            value = self.load(key)
        return default if value is ABSENT or value is DELETED else value

    def put(self, key: Any, value: Any) -> None:
        self.pending[key] = value

    def delete(self, key: Any) -> None:
        self._forget(key)

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
        value = self._lookup(entry)
        if value is MISS:
            raw = self.store.get(self.cf, composite_key(encode_key(key), encode_key(map_key)))
            value = ABSENT if raw is None else self.codec.decode(raw)
            self.cache[entry] = value
        return default if value is ABSENT or value is DELETED else value

    def put(self, key: Any, map_key: Any, value: Any) -> None:
        self.pending[(key, map_key)] = value
        self.dirty_by_key.setdefault(key, set()).add(map_key)

    def delete(self, key: Any, map_key: Any) -> None:
        self._forget((key, map_key))
        self.dirty_by_key.setdefault(key, set()).add(map_key)

    def entries(self, key: Any) -> dict[Any, Any]:
        """The whole map of `key`: RocksDB's entries overlaid with unflushed changes."""
        prefix = composite_prefix(encode_key(key))
        result = {
            decode_key(split_composite(raw_key)[1]): self.codec.decode(raw)
            for raw_key, raw in self.store.items(self.cf, prefix)
        }
        for map_key in self.dirty_by_key.get(key, ()):
            value = self.pending.get((key, map_key), MISS)
            if value is MISS:
                continue  # created and deleted since the last flush
            if value is DELETED:
                result.pop(map_key, None)
            else:
                result[map_key] = value
        return result

    def drain_into(self, batch: Any, handle: Any) -> int:
        self.dirty_by_key.clear()
        return super().drain_into(batch, handle)

    def items(self) -> Iterator[tuple[tuple[Any, Any], Any]]:
        for raw_key, raw in self.store.items(self.cf):
            key_bytes, map_key_bytes = split_composite(raw_key)
            yield (decode_key(key_bytes), decode_key(map_key_bytes)), self.codec.decode(raw)
