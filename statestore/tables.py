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
    """What both table kinds share: the clean cache, the pending changes, the changes
    captured for a snapshot being written, and how they drain into a RocksDB batch.

    Reads look in that order: pending, captured, cache, RocksDB. The captured layer
    is what makes the barrier cheap: a capture swaps the pending dict for an empty
    one (no per-entry work while processing waits), and the background write merges
    the captured entries into the cache once RocksDB has them."""

    __slots__ = ("cf", "store", "codec", "cache", "pending", "captured", "avg_encoded_bytes")

    def __init__(self, store: TaskStore, cf: str, codec: ValueCodec) -> None:
        self.cf = cf
        self.store = store
        self.codec = codec
        self.cache: dict[Any, Any] = {}
        self.pending: dict[Any, Any] = {}
        self.captured: CapturedChanges | None = None
        self.avg_encoded_bytes = 64

    def _raw_key(self, entry: Any) -> bytes:
        raise NotImplementedError

    def load(self, entry: Any) -> Any:
        """Reads one entry from RocksDB into the cache; ABSENT when it has none."""
        raw = self.store.get(self.cf, self._raw_key(entry))
        value = ABSENT if raw is None else self.codec.decode(raw)
        self.cache[entry] = value
        return value

    def read_through(self, entry: Any) -> Any:
        """The entry as of the last capture: the captured layer, else the cache, else
        RocksDB. Hot paths look in `pending` themselves and call this on a miss."""
        captured = self.captured
        if captured is not None:
            value = captured.read(entry)
            if value is not MISS:
                return value
        value = self.cache.get(entry, MISS)
        return self.load(entry) if value is MISS else value

    def _lookup(self, entry: Any) -> Any:
        value = self.pending.get(entry, MISS)
        return self.read_through(entry) if value is MISS else value

    def forget(self, entry: Any) -> None:
        """A deletion: written at the next flush or capture, or, for an entry known to be
        absent from RocksDB then (created since the last one), simply dropped. The clean
        cache forgets it at once: state that churns (closed windows, expired values)
        would otherwise fill it with entries never read again."""
        captured = self.captured
        known = captured.values.get(entry, MISS) if captured is not None else MISS
        cached = self.cache.pop(entry, MISS)
        if known is MISS:
            known = cached
        if known is ABSENT or known is DELETED:
            self.pending.pop(entry, None)
        else:
            self.pending[entry] = DELETED

    def drain_into(self, batch: Any, handle: Any, log: list | None = None) -> int:
        """Puts the pending changes into `batch`; written values stay cached as clean
        entries, deleted ones leave the cache (a key read again after its deletion costs
        one miss). The caller commits the batch before anything reads the table again,
        and no capture is being written. `log` collects what was written as RocksDB's
        bytes (None for a deletion), for the changelog."""
        encode, raw_key, cache, total = self.codec.encode, self._raw_key, self.cache, 0
        pending = self.pending
        for entry, value in pending.items():
            key = raw_key(entry)
            if value is DELETED:
                cache.pop(entry, None)
                batch.delete(key, handle)
                raw = None
            else:
                cache[entry] = value
                raw = encode(value)
                total += len(raw)
                batch.put(key, raw, handle)
            if log is not None:
                log.append((key, raw))
        count = len(pending)
        if count:
            self.avg_encoded_bytes = max(16, total // count)
        pending.clear()
        return count

    def capture(self) -> CapturedChanges | None:
        """The pending changes as they are now, for a snapshot written in the background;
        the table goes on with an empty set of changes. Nothing is copied or encoded
        here: the captured entries stay readable through the captured layer, which
        encodes a value before handing it out (user code may change an accumulator in
        place once it has it). None when nothing changed."""
        assert self.captured is None, "the last capture was neither written nor rewound"
        if not self.pending:
            return None
        captured = self.captured = CapturedChanges(self, self.pending)
        self.pending = {}
        return captured

    def entry_bytes(self) -> int:
        captured = self.captured
        entries = len(self.cache) + len(self.pending) + (len(captured.values) if captured is not None else 0)
        return entries * (self.avg_encoded_bytes + ENTRY_OVERHEAD_BYTES)

    def evict(self) -> None:
        assert not self.pending, "evicting unflushed state would lose it"
        self.cache.clear()


class CapturedChanges:
    """One table's changes captured at a barrier (see `_CachedTable.capture`): read by
    the loop while the background writes them to RocksDB, then merged into the cache.

    Each value is encoded once, by whichever thread comes first: the loop before it
    hands the value to user code, the background when it writes. `setdefault` keeps
    the first encoding, and the loop's always precedes any change user code makes."""

    __slots__ = ("table", "values", "sealed", "index", "deletions")

    def __init__(self, table: _CachedTable, values: dict[Any, Any]) -> None:
        self.table, self.values = table, values
        self.sealed: dict[Any, bytes] = {}
        self.deletions: int | None = None  # counted by write_into, for merge
        # A map table's captured keys by the key whose map they belong to.
        self.index: dict[Any, set[Any]] = {}

    def read(self, entry: Any) -> Any:
        """The captured value of `entry` (MISS if it was not captured), sealed first."""
        value = self.values.get(entry, MISS)
        if value is not MISS and value is not DELETED and entry not in self.sealed:
            self.sealed.setdefault(entry, self.table.codec.encode(value))
        return value

    def write_into(self, batch: Any, handle: Any, log: list | None = None) -> int:
        """Puts the captured changes into a RocksDB write batch (off the loop's thread);
        `log` collects them as RocksDB's bytes (None for a deletion), for the changelog."""
        raw_key, encode, sealed, total, deletions = self.table._raw_key, self.table.codec.encode, self.sealed, 0, 0
        for entry, value in self.values.items():
            key = raw_key(entry)
            if value is DELETED:
                deletions += 1
                batch.delete(key, handle)
                if log is not None:
                    log.append((key, None))
                continue
            raw = sealed.get(entry)
            if raw is None:
                raw = sealed.setdefault(entry, encode(value))
            total += len(raw)
            batch.put(key, raw, handle)
            if log is not None:
                log.append((key, raw))
        if total:
            self.table.avg_encoded_bytes = max(16, total // len(self.values))
        self.deletions = deletions
        return len(self.values)

    def merge(self) -> None:
        """RocksDB has the captured changes (committed): they become clean cache entries,
        deletions leave the cache, and reads no longer need the captured layer. Without
        deletions that is one dict update: with large state a checkpoint merges about a
        key per record, and a Python loop over them holds the loop's interpreter lock
        twice as long."""
        cache = self.table.cache
        if self.deletions == 0:
            cache.update(self.values)
        else:
            for entry, value in self.values.items():
                if value is DELETED:
                    cache.pop(entry, None)
                else:
                    cache[entry] = value
        self.table.captured = None


class ValueTable(_CachedTable):
    """Per-key single values of one operator state (`ValueState`)."""

    __slots__ = ()

    def _raw_key(self, entry: Any) -> bytes:
        return encode_key(entry)

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._lookup(key)
        return default if value is ABSENT or value is DELETED else value

    def put(self, key: Any, value: Any) -> None:
        self.pending[key] = value

    def delete(self, key: Any) -> None:
        self.forget(key)

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
        value = self._lookup((key, map_key))
        return default if value is ABSENT or value is DELETED else value

    def put(self, key: Any, map_key: Any, value: Any) -> None:
        self.pending[(key, map_key)] = value
        self.dirty_by_key.setdefault(key, set()).add(map_key)

    def delete(self, key: Any, map_key: Any) -> None:
        self.forget((key, map_key))
        self.dirty_by_key.setdefault(key, set()).add(map_key)

    def entries(self, key: Any) -> dict[Any, Any]:
        """The whole map of `key`: RocksDB's entries overlaid with changes not written
        there yet (captured for a snapshot, then pending). The captured layer is taken
        before RocksDB is read: its write may land in between, and then both agree."""
        captured = self.captured
        prefix = composite_prefix(encode_key(key))
        result = {
            decode_key(split_composite(raw_key)[1]): self.codec.decode(raw)
            for raw_key, raw in self.store.items(self.cf, prefix)
        }
        layers = [(self.dirty_by_key, lambda entry: self.pending.get(entry, MISS))]
        if captured is not None:
            layers.insert(0, (captured.index, captured.read))
        for dirty_by_key, read in layers:
            for map_key in dirty_by_key.get(key, ()):
                value = read((key, map_key))
                if value is MISS:
                    continue  # created and deleted in between
                if value is DELETED:
                    result.pop(map_key, None)
                else:
                    result[map_key] = value
        return result

    def capture(self) -> CapturedChanges | None:
        index = self.dirty_by_key
        captured = super().capture()
        if captured is not None:
            captured.index, self.dirty_by_key = index, {}
        return captured

    def drain_into(self, batch: Any, handle: Any, log: list | None = None) -> int:
        self.dirty_by_key.clear()
        return super().drain_into(batch, handle, log)

    def items(self) -> Iterator[tuple[tuple[Any, Any], Any]]:
        for raw_key, raw in self.store.items(self.cf):
            key_bytes, map_key_bytes = split_composite(raw_key)
            yield (decode_key(key_bytes), decode_key(map_key_bytes)), self.codec.decode(raw)
