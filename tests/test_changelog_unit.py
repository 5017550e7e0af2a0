"""The changelog's record format and what a task logs, on real RocksDB: a state rebuilt
from a snapshot and the changes logged after it equals the state that logged them."""

from __future__ import annotations

from pathlib import Path

import pytest

from statestore.changelog import PART_BYTES, ChangelogFormatError, PartHeader, decode_changes, encode_parts
from statestore.codecs import JSON_CODEC
from statestore.digests import DigestCache
from statestore.keys import encode_key
from statestore.rocks import TaskStore
from statestore.state_dir import TaskDirectory
from statestore.storage.file import FileStorage
from statestore.task_state import TaskState


def _decoded(parts: list[tuple[bytes, bytes]]) -> list[tuple[str, bytes, bytes | None]]:
    return [entry for key, value in parts for entry in decode_changes(value, "test")]


def test_parts_carry_every_change_in_order_with_their_checkpoint_and_offsets():
    changes = [("sum:acc", [(b"a", b"1"), (b"b", None), (b"a", b"2")]), ("join:buf", [(b"k", b"")])]
    parts = encode_parts(7, 120, (("profiles", 33),), changes)
    assert len(parts) == 1
    header = PartHeader.from_key(parts[0][0], "test")
    assert header == PartHeader(7, 0, 1, 120, (("profiles", 33),))
    assert _decoded(parts) == [("sum:acc", b"a", b"1"), ("sum:acc", b"b", None), ("sum:acc", b"a", b"2"),
                               ("join:buf", b"k", b"")]


def test_a_large_checkpoint_is_cut_into_parts_under_the_record_limit():
    value = b"x" * 1000
    entries = [(f"user-{i:06d}".encode(), value) for i in range(3 * PART_BYTES // 1000)]
    parts = encode_parts(3, 5, (), [("sum:acc", entries)])
    assert len(parts) >= 3
    assert all(len(v) < PART_BYTES + 2000 for _, v in parts)
    headers = [PartHeader.from_key(k, "test") for k, _ in parts]
    assert [(h.part, h.parts) for h in headers] == [(i, len(parts)) for i in range(len(parts))]
    assert [(k, v) for _, k, v in _decoded(parts)] == entries


def test_a_checkpoint_without_changes_still_has_a_part():
    parts = encode_parts(9, None, (), [])
    assert len(parts) == 1 and PartHeader.from_key(parts[0][0], "test").checkpoint_id == 9
    assert _decoded(parts) == []


def test_a_damaged_part_is_an_error_not_fewer_changes():
    (_, value), = encode_parts(1, 0, (), [("sum:acc", [(b"a", b"12345")])])
    with pytest.raises(ChangelogFormatError, match="damaged"):
        list(decode_changes(value[:-2], "orders-changelog[0] offset 4"))
    with pytest.raises(ChangelogFormatError, match="unreadable key"):
        PartHeader.from_key(b"not json", "orders-changelog[0] offset 4")


def _state(tmp_path: Path, name: str) -> TaskState:
    state = TaskState(TaskDirectory(tmp_path / name, "job", "in-0", "t1"), FileStorage(tmp_path / "storage"),
                      "job", "in-0", DigestCache(), logs_changes=True)
    state.open(None)
    return state


def _contents(state: TaskState, cf: str) -> dict[bytes, bytes]:
    return dict(state.store.items(cf))


def test_a_state_rebuilt_from_its_snapshot_and_changelog_equals_the_original(tmp_path):
    """Between checkpoints the cache spills (a flush writes RocksDB directly): those
    writes are logged with the next checkpoint, before its captured changes."""
    state = _state(tmp_path, "original")
    totals = state.value_table("sum:acc", JSON_CODEC)
    for i in range(100):
        totals.put(f"user-{i}", {"total": i})
    state.write_snapshot(state.capture(), "chk-1")

    logged = []
    totals.put("user-1", {"total": 1000})
    totals.delete("user-2")
    state.flush()  # a spill between checkpoints
    totals.put("user-1", {"total": 2000})
    totals.put("user-new", {"total": 1})
    logged.append(state.write_snapshot(state.capture(), None).changes)
    totals.delete("user-3")
    logged.append(state.write_snapshot(state.capture(), None).changes)

    rebuilt = _state(tmp_path, "rebuilt")
    snapshot = TaskStore(state.directory.snapshot_dir("chk-1"), ["sum:acc"])
    try:
        rebuilt.apply_changes([("sum:acc", key, value) for key, value in snapshot.items("sum:acc")])
    finally:
        snapshot.close()
    for changes in logged:  # through the record format, as a replay reads them
        rebuilt.apply_changes(_decoded(encode_parts(2, 0, (), changes)))
    assert _contents(rebuilt, "sum:acc") == _contents(state, "sum:acc")
    assert JSON_CODEC.decode(_contents(rebuilt, "sum:acc")[_key("user-1")]) == {"total": 2000}
    assert _key("user-2") not in _contents(rebuilt, "sum:acc")
    assert _key("user-3") not in _contents(rebuilt, "sum:acc")


def test_a_checkpoint_that_snapshots_logs_nothing_and_drops_what_spills_logged(tmp_path):
    state = _state(tmp_path, "original")
    totals = state.value_table("sum:acc", JSON_CODEC)
    totals.put("a", 1)
    state.flush()
    totals.put("b", 2)
    written = state.write_snapshot(state.capture(), "chk-1")
    assert written.local_dir is not None and written.changes == []
    totals.put("c", 3)
    assert [(k, v) for _, entries in state.write_snapshot(state.capture(), None).changes for k, v in entries] \
        == [(_key("c"), JSON_CODEC.encode(3))]


def _key(text: str) -> bytes:
    return encode_key(text)
