"""Savepoint building blocks on real RocksDB and real files: Kafka's murmur2, the
canonical state files, the manifest, re-hashing for a new partition count, the
assembly of workers' parts, offset metadata, and restart strategies."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from connectors.serdes import BYTES, JSON, KEY, STRING
from eos.errors import (
    CorruptSavepointError,
    RecordError,
    SavepointError,
    SnapshotMissingError,
    SnapshotUnreachableError,
    StateStoreError,
)
from service.checkpointing.recovery import format_metadata, parse_metadata
from service.job.planner import Stage, StageInput
from service.runtime.restart import RestartStrategy, restartable, run_with_restarts
from service.savepoints.client import assemble
from service.savepoints.resume import kafka_key_bytes
from statestore.codecs import JSON_CODEC, PICKLE_CODEC
from statestore.keys import composite_key, encode_key
from statestore.murmur2 import murmur2, partition_for, positive_murmur2
from statestore.rocks import TaskStore
from statestore.savepoint_data import check_file, read_state_file, rocksdb_key, value_encoder, write_state_file
from statestore.savepoint_manifest import (
    MAP_STATE,
    VALUE_STATE,
    OperatorState,
    PartitionPosition,
    SavepointManifest,
    StageLayout,
    StateFile,
)

# Computed with the Java client: org.apache.kafka.common.utils.Utils.murmur2 and
# Utils.toPositive (kafka-clients 4.4.0), for UTF-8 strings and one raw byte string.
JAVA_MURMUR2 = [
    (b"", 275646681, 275646681),
    (b"a", -1563381124, 584102524),
    (b"ab", 316155434, 316155434),
    (b"abc", 479470107, 479470107),
    (b"abcd", -1323649548, 823834100),
    (b"abcde", 461995741, 461995741),
    (b"user-1", 1404122828, 1404122828),
    (b'"user-1"', -2072683762, 74799886),
    (b'"user-42"', -1099428337, 1048055311),
    (b"order-123456", 1270227772, 1270227772),
    ("héllo wörld ✓".encode(), -1290846696, 856636952),
    (b'["a",1]', -1189330644, 958153004),
    (b"The quick brown fox jumps over the lazy dog", 495243318, 495243318),
    (bytes([0, 0xFF, 0x80, 1, 2, 3, 0xFE]), -1151962106, 995521542),
]


@pytest.mark.parametrize(("data", "signed", "positive"), JAVA_MURMUR2)
def test_murmur2_matches_the_java_client(data, signed, positive):
    assert murmur2(data) == signed
    assert positive_murmur2(data) == positive


# -- state files -------------------------------------------------------------------


def _store(tmp_path: Path, name: str, entries: dict[bytes, bytes], cf: str = "op:s") -> TaskStore:
    store = TaskStore(tmp_path / name, [cf])
    store.write([(cf, k, v) for k, v in entries.items()])
    return store


def _round_trip(tmp_path: Path, entries: dict[bytes, bytes], kind: str, codec: str) -> dict[bytes, bytes]:
    store = _store(tmp_path, "db", entries)
    written = write_state_file(store.items("op:s"), kind, codec, tmp_path / "part.jsonl")
    assert written.keys == len(entries)
    expected = StateFile("part.jsonl", 0, written.keys, written.size, written.sha256)
    check_file(tmp_path / "part.jsonl", expected, "part.jsonl")
    encode = value_encoder(codec, {"json": JSON_CODEC, "pickle": PICKLE_CODEC}[codec], "test")
    return {rocksdb_key(k, m): encode(obj) for k, m, obj in read_state_file(tmp_path / "part.jsonl", expected,
                                                                            "part.jsonl", kind)}


def test_value_state_round_trips_json_values_and_every_kind_of_key(tmp_path):
    keys = ["alice", "", "ü\nnewline", 7, -3, True, None, ("tenant", 2), b"\x00raw\xff"]
    entries = {encode_key(k): JSON_CODEC.encode({"n": i, "nested": [i, {"x": None}]}) for i, k in enumerate(keys)}
    assert _round_trip(tmp_path, entries, VALUE_STATE, "json") == entries


def test_json_lines_are_assembled_from_stored_bytes(tmp_path):
    store = _store(tmp_path, "db", {encode_key("bob"): b'{"sum":3}', encode_key(b"\x01"): b"[1]"})
    write_state_file(store.items("op:s"), VALUE_STATE, "json", tmp_path / "f.jsonl")
    lines = (tmp_path / "f.jsonl").read_bytes().splitlines()
    assert b'{"k":"bob","v":{"sum":3}}' in lines
    assert b'{"kb":"AQ==","v":[1]}' in lines


def test_pickle_values_are_kept_as_base64_bytes(tmp_path):
    entries = {encode_key(f"k{i}"): PICKLE_CODEC.encode({"set": {i, i + 1}, "t": (i,)}) for i in range(50)}
    assert _round_trip(tmp_path, entries, VALUE_STATE, "pickle") == entries


def test_map_state_entries_keep_their_key_and_map_key(tmp_path):
    entries = {composite_key(encode_key(k), encode_key(m)): JSON_CODEC.encode(v)
               for k, m, v in [("a", "x", 1), ("a", b"\x02", 2), (("t", 1), 5, {"deep": [1]}), (b"raw", None, 0)]}
    assert _round_trip(tmp_path, entries, MAP_STATE, "json") == entries


def test_values_convert_between_json_and_pickle_codecs(tmp_path):
    entries = {encode_key("k"): JSON_CODEC.encode({"a": [1, 2]})}
    store = _store(tmp_path, "db", entries)
    written = write_state_file(store.items("op:s"), VALUE_STATE, "json", tmp_path / "f.jsonl")
    expected = StateFile("f.jsonl", 0, written.keys, written.size, written.sha256)
    to_pickle = value_encoder("json", PICKLE_CODEC, "test")
    [(_, _, obj)] = list(read_state_file(tmp_path / "f.jsonl", expected, "f.jsonl", VALUE_STATE))
    assert PICKLE_CODEC.decode(to_pickle(obj)) == {"a": [1, 2]}


def test_a_flipped_byte_is_reported_with_the_file_name(tmp_path):
    store = _store(tmp_path, "db", {encode_key(f"k{i}"): b"1" for i in range(100)})
    written = write_state_file(store.items("op:s"), VALUE_STATE, "json", tmp_path / "f.jsonl")
    expected = StateFile("f.jsonl", 0, written.keys, written.size, written.sha256)
    data = bytearray((tmp_path / "f.jsonl").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "f.jsonl").write_bytes(bytes(data))
    with pytest.raises(CorruptSavepointError, match=r"savepoint file /x/f\.jsonl is corrupt"):
        check_file(tmp_path / "f.jsonl", expected, "/x/f.jsonl")
    with pytest.raises(CorruptSavepointError, match=r"/x/f\.jsonl"):
        list(read_state_file(tmp_path / "f.jsonl", expected, "/x/f.jsonl", VALUE_STATE))


def test_a_truncated_file_is_reported(tmp_path):
    store = _store(tmp_path, "db", {encode_key(f"k{i}"): b"1" for i in range(10)})
    written = write_state_file(store.items("op:s"), VALUE_STATE, "json", tmp_path / "f.jsonl")
    expected = StateFile("f.jsonl", 0, written.keys, written.size, written.sha256)
    (tmp_path / "f.jsonl").write_bytes((tmp_path / "f.jsonl").read_bytes()[:-5])
    with pytest.raises(CorruptSavepointError, match="truncated"):
        list(read_state_file(tmp_path / "f.jsonl", expected, "f.jsonl", VALUE_STATE))


# -- manifest ----------------------------------------------------------------------


def _manifest(**changes) -> SavepointManifest:
    manifest = SavepointManifest(
        id="sp-1", job="running-sum", group="g", kind="stop", created_at=time.time(), params={"input": "in"},
        stages=(StageLayout("orders", "in", 2, False, "bytes"), StageLayout("by-user", "g-by-user-repartition", 2,
                                                                             True, "key", ("totals",))),
        positions=tuple(PartitionPosition("orders", "in", p, 10, 3, 10, "w1") for p in range(2)),
        states=(OperatorState("totals", "acc", VALUE_STATE, "json", "by-user",
                              (StateFile("state/totals/acc/part-00000.jsonl", 0, 5, 100, "ab" * 32),)),),
        workers=("w1",), drained=True)
    return dataclasses.replace(manifest, **changes)


def test_manifest_round_trips():
    manifest = _manifest()
    assert SavepointManifest.from_bytes(manifest.to_bytes(), "m") == manifest


def test_damaged_manifest_fails_its_digest():
    data = _manifest().to_bytes().replace(b'"job": "running-sum"', b'"job": "running-sun"')
    with pytest.raises(CorruptSavepointError, match="fails its digest check"):
        SavepointManifest.from_bytes(data, "/sp/_savepoint.json")


def test_manifest_of_another_format_version_is_refused_clearly():
    with pytest.raises(SavepointError, match="format version 2; this version of eos reads version 1"):
        SavepointManifest.from_bytes(_manifest(version=2).to_bytes(), "/sp/_savepoint.json")


def test_a_file_that_is_no_manifest_is_refused():
    with pytest.raises(SavepointError, match="is not an eos savepoint manifest"):
        SavepointManifest.from_bytes(b'{"hello": 1}', "/sp/_savepoint.json")


# -- re-hashing ----------------------------------------------------------------------


def _stage(key_serde, repartition: bool) -> Stage:
    return Stage(id="s", inputs=[StageInput(topic="t", root=None, key_serde=key_serde, value_serde=JSON,
                                            repartition=repartition, origin_topic="t")])


@pytest.mark.parametrize(("serde", "repartition", "key", "kafka_bytes"), [
    (KEY, True, "user-1", b'"user-1"'),
    (KEY, True, b"\x01raw", b"\x00\x01raw"),
    (STRING, False, "user-1", b"user-1"),
    (BYTES, False, b"user-1", b"user-1"),
    (JSON, False, 42, b"42"),
])
def test_state_keys_hash_as_the_kafka_key_their_records_carry(serde, repartition, key, kafka_bytes):
    stable = encode_key(key)
    assert kafka_key_bytes(_stage(serde, repartition))(stable) == kafka_bytes


def test_rehashing_sends_each_key_to_exactly_one_new_partition():
    keys = [encode_key(f"user-{i}") for i in range(2000)]
    placed = {p: [k for k in keys if partition_for(k, 8) == p] for p in range(8)}
    assert sorted(k for ks in placed.values() for k in ks) == sorted(keys)
    assert all(len(ks) > 150 for ks in placed.values())  # murmur2 spreads them


# -- assembling parts ------------------------------------------------------------------


def _part(worker: str, partitions: list[int]) -> dict:
    manifest = _manifest()
    return {"worker": worker, "job": "running-sum", "group": "g", "params": {"input": "in"},
            "stages": [dataclasses.asdict(s) for s in manifest.stages],
            "positions": [dataclasses.asdict(PartitionPosition(s.id, s.topic, p, 1, 1, 1, worker))
                          for s in manifest.stages for p in partitions],
            "states": [dataclasses.asdict(OperatorState(
                "totals", "acc", VALUE_STATE, "json", "by-user",
                tuple(StateFile(f"state/totals/acc/part-{p:05d}.jsonl", p, 1, 1, "00") for p in partitions)))]}


def test_parts_of_all_workers_make_one_manifest():
    manifest = assemble("sp-1", "stop", [_part("w1", [0]), _part("w2", [1])])
    assert manifest.workers == ("w1", "w2")
    assert [f.partition for f in manifest.states[0].files] == [0, 1]
    assert len(manifest.positions) == 4


def test_a_savepoint_missing_partitions_is_refused_naming_them():
    with pytest.raises(SavepointError, match=r"would not cover partitions in\[1\], g-by-user-repartition\[1\]"):
        assemble("sp-1", "stop", [_part("w1", [0])])


def test_a_partition_claimed_twice_is_refused():
    with pytest.raises(SavepointError, match="claimed by workers w1 and w2"):
        assemble("sp-1", "stop", [_part("w1", [0, 1]), _part("w2", [1])])


# -- offset metadata -------------------------------------------------------------------


def test_checkpoint_metadata_carries_the_savepoint_a_history_descends_from():
    assert parse_metadata(format_metadata(7, "chk-7-ab", "sp-x")).savepoint == "sp-x"
    plain = parse_metadata(format_metadata(7, "chk-7-ab"))
    assert (plain.checkpoint_id, plain.snapshot, plain.savepoint) == (7, "chk-7-ab", None)
    assert parse_metadata("eos1:3:-") .snapshot is None


# -- restart strategies -----------------------------------------------------------------


def test_restart_strategies_parse():
    assert RestartStrategy.parse("none").kind == "none"
    fixed = RestartStrategy.parse("fixed-delay:3:10s")
    assert (fixed.attempts, fixed.delay_s) == (3, 10.0)
    assert RestartStrategy.parse("exponential-backoff:2m").max_delay_s == 120.0
    with pytest.raises(Exception, match="fixed-delay:ATTEMPTS:DELAY"):
        RestartStrategy.parse("sometimes")


def test_exponential_backoff_doubles_up_to_its_maximum_and_resets_after_a_long_run():
    strategy = RestartStrategy.parse("exponential-backoff:5s")
    delays, previous = [], 0.0
    for n in range(5):
        previous = strategy.delay(n, 0.1, previous)
        delays.append(previous)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert strategy.delay(5, 60.0, 5.0) == 1.0


def test_failures_a_restart_cannot_cure_are_not_restarted():
    assert not restartable(RecordError("bad", topic="t", partition=0, offset=1))
    assert not restartable(SavepointError("x"))
    assert restartable(StateStoreError("disk full"))
    assert restartable(SnapshotUnreachableError("storage away")) and not restartable(SnapshotMissingError("gone"))
    assert restartable(RuntimeError("unexpected"))


def test_fixed_delay_restarts_until_its_attempts_are_spent():
    runs = []

    def attempt():
        runs.append(1)
        return 4, RuntimeError("checkpoint storage away")

    waits = []
    code = run_with_restarts(attempt, RestartStrategy.parse("fixed-delay:2:1s"), wait=lambda s: waits.append(s) or True)
    assert (code, len(runs), waits) == (4, 3, [1.0, 1.0])


def test_a_bad_record_stops_without_restarting():
    runs = []

    def attempt():
        runs.append(1)
        return 2, RecordError("bad", topic="t", partition=0, offset=1)

    assert run_with_restarts(attempt, RestartStrategy.parse("fixed-delay:5:1s"), wait=lambda s: True) == 2
    assert len(runs) == 1


# -- a whole savepoint, written and restored by the product's code -------------------------


class _Seen:
    """A keyed process function with a value state and a pickled map state."""

    def open(self, ctx):
        self.total = ctx.value_state("total")
        self.seen = ctx.map_state("seen", PICKLE_CODEC)

    def process(self, key, value, ctx):
        return ()


def _process_job_tasks(tmp_path: Path, partitions: int, token: str):
    from service.job.api import Job
    from service.job.planner import plan as make_plan
    from service.runtime.error_policy import ErrorHandler
    from service.runtime.task import Task
    from statestore.digests import DigestCache
    from statestore.state_dir import TaskDirectory
    from statestore.storage.file import FileStorage
    from statestore.task_state import TaskState

    job = Job("seen")
    job.source("in", value=JSON, uid="src").key_by(lambda v: v["k"], uid="by-k").process(_Seen, uid="seen-op")
    plan = make_plan(job, "g")
    stage = plan.stage_of("g-by-k-repartition")
    tasks = []
    for p in range(partitions):
        tid = f"{stage.topic}-{p}"
        state = TaskState(TaskDirectory(tmp_path / "state", "g", tid, token), FileStorage(tmp_path / "ckpt"), "g",
                          tid, DigestCache())
        tasks.append(Task(stage, p, state, ErrorHandler("fail", {}, "g-dlq")))
    return plan, tasks


def test_map_and_pickled_state_survive_a_savepoint_into_twice_the_partitions(tmp_path):
    from service.runtime.task import CompletedCheckpoint
    from service.savepoints.part import write_part
    from service.savepoints.resume import SavepointResume
    from statestore.storage.file import FileStorage

    plan, tasks = _process_job_tasks(tmp_path, 2, "w")
    expected = {}
    for task in tasks:
        task.state.open(None)
        total = task.state.value_table("seen-op:total", JSON_CODEC)
        seen = task.state.map_table("seen-op:seen", PICKLE_CODEC)
        for i in range(300):
            key = f"k{i}"
            if partition_for(encode_key(key), 2) == task.partition:
                total.put(key, i)
                seen.put(key, ("m", i), {i, -i})
                expected[key] = (i, {("m", i): {i, -i}})
        task.state.flush()
        task.completed = CompletedCheckpoint(3, 10, None)
    storage = FileStorage(tmp_path / "sp")
    part = write_part(plan=plan, tasks=tasks, worker="w1", storage=storage, scratch=tmp_path / "scratch",
                      partitions={"in": 2, "g-by-k-repartition": 2}, end_offsets={})
    part.update(job="seen", group="g", params={})
    part["positions"] += [{"stage": "src", "topic": "in", "partition": p, "offset": 5, "checkpoint_id": 3,
                           "end_offset": 5, "worker": "w1"} for p in range(2)]
    storage.put_atomic("_savepoint.json", assemble("sp-t", "stop", [part]).to_bytes())
    for task in tasks:
        task.state.close()

    resume = SavepointResume.open(str(tmp_path / "sp"), plan, allow_non_restored_state=False,
                                  cache_dir=tmp_path / "cache")
    resume.partition_counts = {"in": 2, "g-by-k-repartition": 4}
    _, restored_tasks = _process_job_tasks(tmp_path, 4, "r")
    found = {}
    for task in restored_tasks:
        restored = resume.restore(task, 0)
        assert (restored.completed.savepoint, restored.completed.offset) == ("sp-t", 10 if task.partition < 2 else -2)
        total = task.state.value_table("seen-op:total", JSON_CODEC)
        seen = task.state.map_table("seen-op:seen", PICKLE_CODEC)
        for key, value in total.items():
            assert partition_for(encode_key(key), 4) == task.partition
            found[key] = (value, seen.entries(key))
        task.state.close()
    assert found == expected


def test_savepoint_endpoints_answer_only_allowed_callers(tmp_path):
    from service.savepoints.control import SavepointControl
    from service.web.routing import ControlAccess, Request, Router

    router = Router(ControlAccess())
    SavepointControl(worker_id="w1", group="g", job_name="j", params={}, default_dir=str(tmp_path),
                     scratch_dir=tmp_path, request_stop=lambda: None).add_routes(router)
    for method, path in [("GET", "/savepoints"), ("POST", "/savepoints"), ("POST", "/savepoints/write"),
                         ("POST", "/savepoints/finish"), ("POST", "/savepoints/cancel")]:
        remote = router.handle(Request(method, path, "", "10.1.2.3", {}, b"{}"))
        assert remote.status == 403, (method, path)
    local = router.handle(Request("POST", "/savepoints", "", "127.0.0.1", {}, b'{"id": "sp-1"}'))
    assert local.status == 503 and b"still starting" in local.body
