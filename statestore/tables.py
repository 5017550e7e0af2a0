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

    __slots__ = ("cf", "store", "codec", "cache", "pending", "avg_encoded_bytes", "captured_deletes")

    def __init__(self, store: TaskStore, cf: str, codec: ValueCodec) -> None:
        self.cf = cf
        self.store = store
        self.codec = codec
        self.cache: dict[Any, Any] = {}
        self.pending: dict[Any, Any] = {}
        self.avg_encoded_bytes = 64
        # Deletions captured for a snapshot: cached as DELETED until RocksDB has them,
        # then dropped from the cache at the next flush or capture.
        self.captured_deletes: list[Any] = []

    def _raw_key(self, entry: Any) -> bytes:
        raise NotImplementedError

    def _lookup(self, entry: Any) -> Any:
        value = self.pending.get(entry, MISS)
        if value is MISS:
            value = self.cache.get(entry, MISS)
        return value

    def _forget(self, entry: Any) -> None:
        """A deletion: written at the next flush, or, for an entry known to be absent from
        RocksDB at the next flush (created since the last one), simply dropped."""
        cached = self.cache.get(entry, MISS)
        if cached is ABSENT or cached is DELETED:
            self.pending.pop(entry, None)
        else:
            self.pending[entry] = DELETED

    def drain_into(self, batch: Any, handle: Any) -> int:
        """Puts the pending changes into `batch`; written values stay cached as clean
        entries, deleted ones leave the cache (state that churns, such as closed windows
        or expired values, would otherwise fill it with entries never read again; a key
        read again after its deletion costs one miss). The caller commits the batch before
        anything reads the table again."""
        self._forget_captured_deletes()
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

    def capture(self) -> CapturedChanges | None:
        """The pending changes as they are now, serialised, for a snapshot written in the
        background; the table goes on with an empty set of changes. The values are
        encoded here, in one call for all of them, because user code may change an
        accumulator in place once it is read again; the captured entries stay readable
        in the cache. None when nothing changed."""
        self._forget_captured_deletes()
        if not self.pending:
            return None
        # A copy, then cleared in place: operators hold the pending dict itself (the hot
        # path writes to it without looking it up).
        pending = self.pending.copy()
        self.pending.clear()
        puts = [(entry, value) for entry, value in pending.items() if value is not DELETED]
        deletes = [entry for entry, value in pending.items() if value is DELETED] if len(puts) < len(pending) else []
        blob = self.codec.encode([value for _, value in puts]) if puts else b""
        self.cache.update(pending)
        self.captured_deletes = deletes
        return CapturedChanges(self, [entry for entry, _ in puts], blob, deletes, len(blob))

    def _forget_captured_deletes(self) -> None:
        """The last capture's deletions are in RocksDB now (callers wait for the write):
        they leave the cache, as a flush's deletions do."""
        cache = self.cache
        for entry in self.captured_deletes:
            if cache.get(entry) is DELETED:
                del cache[entry]
        self.captured_deletes = []

    def entry_bytes(self) -> int:
        return (len(self.cache) + len(self.pending)) * (self.avg_encoded_bytes + ENTRY_OVERHEAD_BYTES)

    def evict(self) -> None:
        assert not self.pending, "evicting unflushed state would lose it"
        self.cache.clear()


class CapturedChanges:
    """One table's changes captured at a barrier (see `_CachedTable.capture`), written to
    RocksDB later, off the loop's thread."""

    __slots__ = ("table", "entries", "blob", "deletes", "size")

    def __init__(self, table: _CachedTable, entries: list, blob: bytes, deletes: list, size: int) -> None:
        self.table, self.entries, self.blob, self.deletes, self.size = table, entries, blob, deletes, size

    def write_into(self, batch: Any, handle: Any) -> int:
        """Puts the captured changes into a RocksDB write batch (any thread: nothing here
        is shared with the loop but the codec)."""
        table, raw_key = self.table, self.table._raw_key
        if self.entries:
            encode = table.codec.encode
            values = table.codec.decode(self.blob)
            for entry, value in zip(self.entries, values):
                batch.put(raw_key(entry), encode(value), handle)
            table.avg_encoded_bytes = max(16, self.size // len(self.entries))
        for entry in self.deletes:
            batch.delete(raw_key(entry), handle)
        return len(self.entries) + len(self.deletes)


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

    __slots__ = ("dirty_by_key", "unwritten")

    def __init__(self, store: TaskStore, cf: str, codec: ValueCodec) -> None:
        super().__init__(store, cf, codec)
        self.dirty_by_key: dict[Any, set[Any]] = {}
        # Changes captured for a snapshot and not yet in RocksDB: (their dirty keys, their
        # values), overlaid on what RocksDB holds until they are written.
        self.unwritten: tuple[dict[Any, set[Any]], dict[Any, Any]] | None = None

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
        """The whole map of `key`: RocksDB's entries overlaid with changes not written
        there yet (captured for a snapshot, then pending)."""
        prefix = composite_prefix(encode_key(key))
        result = {
            decode_key(split_composite(raw_key)[1]): self.codec.decode(raw)
            for raw_key, raw in self.store.items(self.cf, prefix)
        }
        layers = [(self.dirty_by_key, self.pending)]
        if self.unwritten is not None:
            layers.insert(0, self.unwritten)
        for dirty_by_key, values in layers:
            for map_key in dirty_by_key.get(key, ()):
                value = values.get((key, map_key), MISS)
                if value is MISS:
                    continue  # created and deleted in between
                if value is DELETED:
                    result.pop(map_key, None)
                else:
                    result[map_key] = value
        return result

    def capture(self) -> CapturedChanges | None:
        dirty_by_key, pending = self.dirty_by_key.copy(), self.pending.copy()
        captured = super().capture()
        if captured is not None:
            self.dirty_by_key.clear()
            self.unwritten = (dirty_by_key, pending)
        return captured

    def written(self) -> None:
        """The captured changes are in RocksDB: RocksDB alone shows them now."""
        self.unwritten = None

    def drain_into(self, batch: Any, handle: Any) -> int:
        self.dirty_by_key.clear()
        return super().drain_into(batch, handle)

    def items(self) -> Iterator[tuple[tuple[Any, Any], Any]]:
        for raw_key, raw in self.store.items(self.cf):
            key_bytes, map_key_bytes = split_composite(raw_key)
            yield (decode_key(key_bytes), decode_key(map_key_bytes)), self.codec.decode(raw)
