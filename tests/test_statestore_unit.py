"""State store behaviour on real RocksDB: keys, cached tables, snapshots, manifests,
retention and the locks that keep processes apart."""

from __future__ import annotations

import shutil
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from eos.errors import CorruptSnapshotError, SnapshotMissingError
from statestore.codecs import JSON_CODEC, PICKLE_CODEC
from statestore.digests import DigestCache
from statestore.keys import KeyEncodingError, decode_key, encode_key
from statestore.manifest import Manifest, ManifestError
from statestore.retention import RetainedSnapshots, snapshot_name, sweep
from statestore.snapshots import task_prefix
from statestore.state_dir import TaskDirectory
from statestore.storage.file import FileStorage
from statestore.task_state import TaskState


@pytest.mark.parametrize("key", ["alice", "", "ü-ß", 0, -5, 2**40, True, None, b"\x00\xffraw",
                                 ("tenant", 7), ("a", ("b", 1))])
def test_keys_round_trip_and_are_stable(key):
    encoded = encode_key(key)
    assert decode_key(encoded) == key
    assert encode_key(key) == encoded


def test_distinct_keys_never_share_an_encoding():
    keys = ["1", 1, b"1", ("1",), True, "true", None, "null"]
    assert len({encode_key(k) for k in keys}) == len(keys)


def test_unencodable_key_is_a_clear_error():
    with pytest.raises(KeyEncodingError, match="no stable encoding"):
        encode_key(object())


def _task_state(tmp_path: Path, token: str = "t1", storage: FileStorage | None = None) -> TaskState:
    storage = storage or FileStorage(tmp_path / "storage")
    directory = TaskDirectory(tmp_path / "state", "job", "in-0", token)
    return TaskState(directory, storage, "job", "in-0", DigestCache())


def _manifest(state: TaskState, checkpoint_id: int, offset: int, previous=None, lineage=()):
    name = snapshot_name(checkpoint_id, state.directory.token)
    local = state.snapshot_local(name)
    from functools import partial

    build = partial(Manifest, job="job", task="in-0", topic="in", partition=0,
                    checkpoint_id=checkpoint_id, snapshot=name, worker="w", created_at=time.time(),
                    source_offset=offset, lineage=lineage)
    return state.persist(local, build, previous).manifest


def test_an_encoded_value_held_in_memory_costs_about_its_size():
    """A checkpoint's capture holds every changed value's encoding until the background
    has written it (hundreds of thousands with large state). orjson returns its working
    buffer, 4 KiB however small the value, with only the length trimmed."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [JSON_CODEC.encode({"sum": i, "count": 1}) for i in range(10_000)]
        per_value = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()
    assert per_value < 200, f"{per_value:.0f} bytes held per encoded value of {len(held[-1])} bytes"
    assert JSON_CODEC.decode(held[7]) == {"sum": 7, "count": 1}


def test_cache_hides_rocksdb_until_flush_and_snapshot_restores_it(tmp_path):
    state = _task_state(tmp_path)
    state.open(None)
    totals = state.value_table("sum:acc", JSON_CODEC)
    seen = state.map_table("dedupe:ids", PICKLE_CODEC)
    totals.put("alice", {"sum": 3})
    seen.put("alice", 17, {1, 2})
    assert state.store.get("sum:acc", encode_key("alice")) is None, "written before the barrier"
    state.flush()
    manifest = _manifest(state, 1, offset=42)
    state.close()

    restored = _task_state(tmp_path, token="t2")
    restored.open(manifest)
    assert restored.value_table("sum:acc", JSON_CODEC).get("alice") == {"sum": 3}
    assert restored.map_table("dedupe:ids", PICKLE_CODEC).entries("alice") == {17: {1, 2}}


def test_spilled_cache_reads_through_to_rocksdb(tmp_path):
    state = _task_state(tmp_path)
    state.open(None)
    table = state.value_table("op:acc", JSON_CODEC)
    for i in range(1000):
        table.put(f"k{i}", i)
    assert state.cached_bytes() > 0
    state.spill()
    assert not table.cache
    assert table.get("k999") == 999 and table.get("missing", "none") == "none"


def test_incremental_checkpoint_uploads_only_new_files(tmp_path):
    state = _task_state(tmp_path)
    state.open(None)
    table = state.value_table("op:acc", JSON_CODEC)
    for i in range(20_000):
        table.put(f"key-{i}", {"n": i})
    state.flush()
    first = _manifest(state, 1, offset=1)
    table.put("key-1", {"n": -1})
    state.flush()
    second = _manifest(state, 2, offset=2, previous=first)
    assert second.uploaded_bytes < first.uploaded_bytes / 5
    big_sst = max((f for f in first.files if f.name.endswith(".sst")), key=lambda f: f.size)
    assert big_sst.key.startswith("shared/") and big_sst in second.files, "the big SST is referenced, not copied"


def test_full_checkpoints_are_self_contained(tmp_path):
    storage = FileStorage(tmp_path / "storage")
    directory = TaskDirectory(tmp_path / "state", "job", "in-0", "t1")
    state = TaskState(directory, storage, "job", "in-0", DigestCache(), incremental=False)
    state.open(None)
    table = state.value_table("op:acc", JSON_CODEC)
    for i in range(5_000):
        table.put(f"key-{i}", i)
    state.flush()
    first = _manifest(state, 1, offset=1)
    table.put("key-1", -1)
    state.flush()
    second = _manifest(state, 2, offset=2, previous=first)
    assert all(f.key.startswith(second.snapshot + "/") for f in second.files)
    assert second.uploaded_bytes == second.total_bytes > first.total_bytes / 2


def test_restore_detects_a_corrupt_file(tmp_path):
    storage = FileStorage(tmp_path / "storage")
    state = _task_state(tmp_path, storage=storage)
    state.open(None)
    state.value_table("op:acc", JSON_CODEC).put("k", 1)
    state.flush()
    manifest = _manifest(state, 1, offset=1)
    state.close()
    sst = next(f for f in manifest.files if f.name.endswith(".sst"))
    path = storage.root / task_prefix("job", "in-0") / sst.key
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    for local in (tmp_path / "state").rglob("chk-*"):
        import shutil

        shutil.rmtree(local)
    fresh = _task_state(tmp_path, token="t3", storage=storage)
    with pytest.raises(CorruptSnapshotError, match="is corrupt"):
        fresh.open(manifest)


def test_restore_reuses_intact_local_files_and_downloads_only_the_rest(tmp_path):
    storage = FileStorage(tmp_path / "storage")
    state = _task_state(tmp_path, storage=storage)
    state.open(None)
    table = state.value_table("op:acc", JSON_CODEC)
    for batch in range(3):  # several SSTs
        for i in range(2_000):
            table.put(f"k{batch}-{i}", i)
        state.flush()
        state.store.checkpoint(tmp_path / f"flush-{batch}")  # forces a memtable flush
    manifest = _manifest(state, 1, offset=1)
    state.close()
    [local] = (tmp_path / "state").rglob(manifest.snapshot)
    ssts = sorted(p for p in local.iterdir() if p.suffix == ".sst")
    assert len(ssts) >= 2
    ssts[0].unlink()  # lost
    data = bytearray(ssts[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    ssts[1].write_bytes(bytes(data))  # same size, wrong content

    fresh = _task_state(tmp_path, token="t2", storage=storage)
    stats = fresh.open(manifest)
    assert (stats.downloaded, stats.reused_local) == (2, len(manifest.files) - 2)
    assert fresh.value_table("op:acc", JSON_CODEC).get("k0-7") == 7


def test_manifest_digest_catches_tampering_and_truncation(tmp_path):
    state = _task_state(tmp_path)
    state.open(None)
    manifest = _manifest(state, 1, offset=5)
    data = manifest.to_bytes()
    assert Manifest.from_bytes(data, "m") == manifest
    with pytest.raises(ManifestError, match="digest"):
        Manifest.from_bytes(data.replace(b'"source_offset": 5', b'"source_offset": 6'), "m")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_bytes(data[: len(data) // 2], "m")


def test_missing_manifest_is_reported_with_its_location(tmp_path):
    state = _task_state(tmp_path)
    with pytest.raises(SnapshotMissingError, match="does not exist; refusing to start with empty state"):
        state.restorer.load_manifest("chk-0000000009-abcdef12")


def test_retention_keeps_lineage_and_deletes_what_fell_out(tmp_path):
    storage = FileStorage(tmp_path / "storage")
    state = _task_state(tmp_path, storage=storage)
    state.open(None)
    table = state.value_table("op:acc", JSON_CODEC)
    retained = RetainedSnapshots(storage, task_prefix("job", "in-0"), 2, state.restorer.load_manifest, 0)
    previous = None
    for n in range(1, 6):
        table.put(f"k{n}", n)
        state.flush()
        previous = _manifest(state, n, offset=n, previous=previous, lineage=retained.lineage_for_next())
        retained.completed(previous)
    prefix = task_prefix("job", "in-0")
    snapshots = {k.split("/")[3] for k in storage.list(prefix) if not k.split("/")[3] == "shared"}
    assert snapshots == {m.snapshot for m in retained.kept}
    referenced = {f.key for m in retained.kept for f in m.files}
    for key in storage.list(prefix):
        relative = key[len(prefix) + 1:]
        if relative.startswith("shared/"):
            assert relative in referenced, f"{relative} is kept though no retained manifest uses it"
    for manifest in retained.kept:  # every retained snapshot is complete
        for f in manifest.files:
            assert storage.exists(f"{prefix}/{f.key}")


def test_sweep_spares_young_unreferenced_shared_files(tmp_path):
    storage = FileStorage(tmp_path / "storage")
    storage.put_bytes("job/tasks/in-0/shared/young.sst", b"x")
    storage.put_bytes("job/tasks/in-0/shared/old.sst", b"x")
    old = storage.root / "job/tasks/in-0/shared/old.sst"
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    sweep(storage, "job/tasks/in-0", [], newest_id=10, shared_grace_s=600)
    assert storage.list("job/tasks/in-0") == ["job/tasks/in-0/shared/young.sst"]


def test_a_live_incarnation_keeps_its_directory_and_a_dead_one_loses_it(tmp_path):
    live = TaskDirectory(tmp_path, "job", "in-0", "aaaa")
    live.acquire()
    (live.working_dir / "data").write_text("x")
    dead_dir = tmp_path / "job" / "in-0" / "db-dead"
    dead_dir.mkdir()
    (tmp_path / "job" / "in-0" / "db-dead.lock").touch()

    other = TaskDirectory(tmp_path, "job", "in-0", "bbbb")
    other.acquire()
    assert (live.working_dir / "data").exists(), "a live incarnation's state was removed"
    assert not dead_dir.exists(), "a dead incarnation's state was left behind"


def test_pruning_spares_the_snapshots_of_another_live_incarnation(tmp_path):
    frozen = TaskDirectory(tmp_path, "job", "in-0", "aaaa")
    frozen.acquire()  # a predecessor that is frozen, not dead: it still holds its lock
    in_progress = tmp_path / "job" / "in-0" / "chk-0000000006-aaaa.tmp"
    in_progress.mkdir()
    dead = tmp_path / "job" / "in-0" / "chk-0000000003-dead"
    dead.mkdir()
    current = TaskDirectory(tmp_path, "job", "in-0", "bbbb")
    current.acquire()
    old_own, kept = (tmp_path / "job" / "in-0" / f"chk-000000000{n}-bbbb" for n in (7, 8))
    old_own.mkdir()
    kept.mkdir()

    current.prune_snapshots(keep={kept.name})
    assert in_progress.exists(), "a live predecessor's snapshot in progress was deleted under it"
    assert kept.exists() and not old_own.exists() and not dead.exists()


def test_rocksdbs_manifest_stays_bounded_however_many_checkpoints_a_task_takes(tmp_path):
    """Each checkpoint flushes the memtables, and each flush appends to RocksDB's MANIFEST,
    which every snapshot carries: it must start afresh rather than grow with the job's age."""
    from statestore.rocks import TaskStore

    store = TaskStore(tmp_path / "db", ["op:acc", "op:windows"])
    try:
        for i in range(800):
            store.write([("op:acc", b"k%d" % (i % 100), b"v" * 50), ("op:windows", b"w%d" % i, b"1")])
            store.checkpoint(tmp_path / f"chk-{i}")
            shutil.rmtree(tmp_path / f"chk-{i}")
        manifests = [f.stat().st_size for f in (tmp_path / "db").iterdir() if f.name.startswith("MANIFEST")]
    finally:
        store.close()
    assert manifests and max(manifests) <= 2 * (64 << 10), manifests
