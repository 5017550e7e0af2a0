"""The capture at a checkpoint's barrier, on real RocksDB: processing waits for it, so it
swaps the pending changes for an empty set and does nothing per entry; the captured
entries stay readable while the background writes them, and user code that changes a
value in place after the barrier cannot change the snapshot."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from statestore.codecs import JSON_CODEC
from statestore.digests import DigestCache
from statestore.keys import composite_key, encode_key
from statestore.rocks import TaskStore
from statestore.state_dir import TaskDirectory
from statestore.storage.file import FileStorage
from statestore.task_state import TaskState


class CountingCodec:
    """JSON, counting the values it encodes."""

    name = "json"

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, value: Any) -> bytes:
        self.encoded += 1
        return JSON_CODEC.encode(value)

    def decode(self, data: bytes) -> Any:
        return JSON_CODEC.decode(data)


def _open(tmp_path: Path) -> TaskState:
    state = TaskState(TaskDirectory(tmp_path / "state", "job", "in-0", "t1"), FileStorage(tmp_path / "storage"),
                      "job", "in-0", DigestCache())
    state.open(None)
    return state


def _snapshot(state: TaskState, name: str, cf: str) -> dict[bytes, bytes]:
    """What the snapshot written by the background part holds in one column family."""
    store = TaskStore(state.directory.snapshot_dir(name), [cf])
    try:
        return dict(store.items(cf))
    finally:
        store.close()


def test_the_capture_copies_and_encodes_nothing_while_processing_waits(tmp_path):
    state = _open(tmp_path)
    codec = CountingCodec()
    table = state.value_table("sum:acc", codec)
    for i in range(5_000):
        table.put(f"user-{i}", {"count": i})
    captured = state.capture()
    assert codec.encoded == 0, "values were encoded at the barrier"
    assert not table.pending and table.get("user-17") == {"count": 17}
    state.write_snapshot(captured, "cp-1")
    snapshot = _snapshot(state, "cp-1", "sum:acc")
    assert len(snapshot) == 5_000 and JSON_CODEC.decode(snapshot[encode_key("user-17")]) == {"count": 17}


def test_reads_while_a_capture_is_written_see_the_newest_value_not_the_cached_one(tmp_path):
    state = _open(tmp_path)
    table = state.value_table("sum:acc", JSON_CODEC)
    table.put("alice", 1)
    state.flush()  # the cache holds alice = 1 as a clean entry
    table.put("alice", 2)
    captured = state.capture()
    assert table.get("alice") == 2, "the clean cache's older value was read"
    table.put("alice", 3)
    assert table.get("alice") == 3
    state.write_snapshot(captured, "cp-1")
    assert JSON_CODEC.decode(_snapshot(state, "cp-1", "sum:acc")[encode_key("alice")]) == 2
    assert table.captured is None and table.cache["alice"] == 2 and table.get("alice") == 3


def test_an_accumulator_changed_in_place_after_the_barrier_is_snapshotted_as_it_was(tmp_path):
    state = _open(tmp_path)
    table = state.value_table("orders:acc", JSON_CODEC)
    table.put("alice", [1])
    captured = state.capture()
    orders = table.get("alice")
    orders.append(2)  # what an aggregate that appends to its accumulator does
    table.put("alice", orders)
    state.write_snapshot(captured, "cp-1")
    assert JSON_CODEC.decode(_snapshot(state, "cp-1", "orders:acc")[encode_key("alice")]) == [1]
    assert table.get("alice") == [1, 2]


def test_a_captured_deletion_hides_the_value_and_leaves_rocksdb_and_the_cache(tmp_path):
    state = _open(tmp_path)
    table = state.value_table("sum:acc", JSON_CODEC)
    table.put("alice", 1)
    state.flush()
    table.delete("alice")
    captured = state.capture()
    assert table.get("alice") is None
    state.write_snapshot(captured, "cp-1")
    assert encode_key("alice") not in _snapshot(state, "cp-1", "sum:acc")
    assert "alice" not in table.cache and table.get("alice") is None


def test_deleting_what_a_capture_is_writing_deletes_it_in_the_next_snapshot(tmp_path):
    state = _open(tmp_path)
    table = state.value_table("sum:acc", JSON_CODEC)
    table.put("alice", 1)  # new: the cache knows alice is absent from RocksDB
    table.get("bob")
    captured = state.capture()
    table.delete("alice")  # absent from RocksDB, but the capture writes it there
    state.write_snapshot(captured, "cp-1")
    assert encode_key("alice") in _snapshot(state, "cp-1", "sum:acc")
    state.write_snapshot(state.capture(), "cp-2")
    assert encode_key("alice") not in _snapshot(state, "cp-2", "sum:acc")


def test_a_map_read_whole_during_the_write_shows_the_captured_entries(tmp_path):
    state = _open(tmp_path)
    table = state.map_table("seen:ids", JSON_CODEC)
    table.put("alice", 1, ["a"])
    table.put("alice", 2, ["b"])
    state.flush()
    table.put("alice", 3, ["c"])
    table.delete("alice", 1)
    captured = state.capture()
    table.put("alice", 4, ["d"])
    entries = table.entries("alice")
    assert entries == {2: ["b"], 3: ["c"], 4: ["d"]}
    entries[3].append("changed in place")
    state.write_snapshot(captured, "cp-1")
    snapshot = _snapshot(state, "cp-1", "seen:ids")
    assert JSON_CODEC.decode(snapshot[composite_key(encode_key("alice"), encode_key(3))]) == ["c"]
    assert composite_key(encode_key("alice"), encode_key(1)) not in snapshot
    assert table.entries("alice") == {2: ["b"], 3: ["c"], 4: ["d"]}


def test_values_changed_in_place_while_the_background_writes_never_reach_the_snapshot(tmp_path):
    """The loop and the background thread race for each value's encoding: whichever
    comes first, the snapshot holds the value as it was at the barrier."""
    state = _open(tmp_path)
    table = state.value_table("orders:acc", JSON_CODEC)
    keys = [f"user-{i}" for i in range(20_000)]
    for round_ in range(5):
        for key in keys:
            table.put(key, [round_])
        captured = state.capture()
        writer = threading.Thread(target=state.write_snapshot, args=(captured, f"cp-{round_}"))
        writer.start()
        for key in reversed(keys):  # meets the writer halfway
            orders = table.get(key)
            orders.append("after the barrier")
            table.put(key, orders)
        writer.join()
        snapshot = _snapshot(state, f"cp-{round_}", "orders:acc")
        assert {JSON_CODEC.decode(raw)[-1] for raw in snapshot.values()} == {round_}
        assert len(snapshot) == len(keys)
