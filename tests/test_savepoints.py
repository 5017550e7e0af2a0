"""Savepoints of the running-sum job on a real broker, checked by the independent oracle.

Workers run as real `eos run` processes serving their control API; savepoints are
taken with the real `eos savepoint` command; resumed jobs must produce exactly the
output an uninterrupted run would (no loss, no duplicate), per the oracle.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from service.membership.slot import transactional_ids
from service.savepoints.resume import open_savepoint
from statestore.murmur2 import partition_for
from statestore.savepoint_manifest import MANIFEST_NAME
from tests.harness.kafka import create_topics, produce, read_all, unique_name
from tests.harness.savepoints import (
    JOBS,
    committed_offsets,
    eos,
    partition_count,
    start_controlled,
    stop_with_savepoint,
)
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import REPO, wait_for

pytestmark = pytest.mark.kafka

COUNTER_JOB = JOBS / "running_sum_with_order_count.py"
PREKEYED_JOB = REPO / "examples" / "running_sum_prekeyed.py"


def _split(scenario: RunningSum, first: int) -> tuple[dict, dict]:
    before = {i: o for i, o in scenario.orders.items() if i < first}
    after = {i: o for i, o in scenario.orders.items() if i >= first}
    return before, after


def _run_then_stop(scenario: RunningSum, target: Path, first: int, **worker) -> str:
    """Feeds the first orders, lets a worker process part of them, stops it with a savepoint."""
    before, _ = _split(scenario, first)
    scenario.feed_all_now(before)
    controlled = start_controlled(scenario, **worker).wait_ready()
    wait_for(lambda: len(scenario.ids_seen()) >= first // 3, 90, 0.5, "some output")
    return stop_with_savepoint([controlled], target)


def _resume_and_finish(scenario: RunningSum, location: str, rest: dict, **worker) -> None:
    extra = ["--from-savepoint", location] + worker.pop("extra_args", [])
    resumed = start_controlled(scenario, extra_args=extra, **worker)
    scenario.feed_all_now(rest)
    scenario.wait_complete(resumed.process)
    assert resumed.process.terminate() == 0, resumed.process.log_tail()


# -- the main promise ---------------------------------------------------------------


def test_stop_with_savepoint_mid_run_then_resume_passes_the_oracle(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=10_000, chunk=500, chunk_pause_s=0.3)
    scenario.start_feeding()
    worker = start_controlled(scenario).wait_ready()
    wait_for(lambda: len(scenario.ids_seen()) >= 2_000, 90, 0.5, "output of the first orders")
    location = stop_with_savepoint([worker], tmp_path / "savepoints")
    assert len(scenario.ids_seen()) < 10_000, "the savepoint was not taken mid-run"

    resumed = start_controlled(scenario, extra_args=["--from-savepoint", location])
    scenario.wait_fed()
    scenario.wait_complete(resumed.process)
    assert resumed.process.terminate() == 0, resumed.process.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == 10_000


def test_a_restarted_resumed_worker_continues_from_its_checkpoints_not_the_savepoint(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=8_000)
    before, after = _split(scenario, 4_000)
    location = _run_then_stop(scenario, tmp_path / "savepoints", 4_000)
    savepoint_id = Path(location).name
    scenario.feed_all_now(after)
    first = start_controlled(scenario, extra_args=["--from-savepoint", location])

    def descends_from_savepoint() -> bool:
        offsets = committed_offsets(bootstrap, scenario.group, scenario.input, 4)
        return all(metadata.endswith(":" + savepoint_id) for _, metadata in offsets.values())

    wait_for(descends_from_savepoint, 90, 0.5, "checkpoints naming the savepoint")
    wait_for(lambda: len(scenario.ids_seen()) >= 6_000, 90, 0.5, "output after the resume")
    first.process.kill()

    again = start_controlled(scenario, extra_args=["--from-savepoint", location])  # the same command line
    scenario.wait_complete(again.process)
    assert again.process.terminate() == 0, again.process.log_tail()
    log = again.process.log_tail(400)
    assert "from savepoint" not in log.split("worker w1 of job")[-1], "the restart went back to the savepoint"
    report = scenario.check()
    assert report.ok, report.summary()


def test_a_resumed_worker_starts_while_its_killed_predecessor_left_the_groups_offsets_in_an_open_transaction(
        bootstrap, tmp_path):
    """A SIGKILL between a checkpoint's `send_offsets_to_transaction` and its commit leaves
    the slot's transaction open, holding offsets of the group, until the slot's next
    process initialises its transactional id (or the transaction times out, minutes
    later). Resuming from a savepoint looks at the group's committed offsets before
    that; a read that waits for those offsets to settle waits for itself."""
    scenario = RunningSum(bootstrap, tmp_path, records=4_000)
    _, after = _split(scenario, 2_000)
    location = _run_then_stop(scenario, tmp_path / "savepoints", 2_000)
    killed = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_ids(scenario.group, "w1")[0],
                       "transaction.timeout.ms": 300_000})
    killed.init_transactions(30)
    killed.begin_transaction()
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": scenario.group})
    killed.send_offsets_to_transaction([TopicPartition(scenario.input, 0, 1)], member.consumer_group_metadata(), 30)
    member.close()  # and the producer is left as a killed process leaves it: open, never committed

    scenario.feed_all_now(after)
    resumed = start_controlled(scenario, extra_args=["--from-savepoint", location]).wait_ready(timeout=25)
    scenario.wait_complete(resumed.process)
    assert resumed.process.terminate() == 0, resumed.process.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def test_resume_with_the_input_grown_from_4_to_8_partitions_continues_every_total(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=8_000, users=300)
    _, after = _split(scenario, 4_000)
    location = _run_then_stop(scenario, tmp_path / "savepoints", 4_000)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_partitions([NewPartitions(scenario.input, 8)])[scenario.input].result(30)
    wait_for(lambda: partition_count(bootstrap, scenario.input) == 8, 30, 0.5, "8 input partitions")

    new_group = unique_name("running-sum-8")  # its repartition topic gets 8 partitions: state is re-hashed
    _resume_and_finish(scenario, location, after, group=new_group)

    assert partition_count(bootstrap, f"{new_group}-by-user-repartition") == 8
    grown = [p for p, _, _, _ in read_all(bootstrap, scenario.input, with_meta=True) if p >= 4]
    assert grown, "no order landed in the new partitions"
    report = scenario.check()
    assert report.ok, report.summary()


def test_state_keyed_by_the_record_key_follows_its_records_into_new_partitions(bootstrap, tmp_path):
    """Input keyed by user, state keyed by the record key (no repartition topic): after the
    input grows to 8 partitions, each user's state must sit where the producer now sends
    the user's records, murmur2(user) % 8, or the user's totals would start over."""
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, users=300, key_by_user=True)
    scenario.spec_overrides["job"] = PREKEYED_JOB
    before, after = _split(scenario, 3_000)
    scenario.feed_all_now(before)
    worker = start_controlled(scenario).wait_ready()
    scenario.wait_complete(worker.process, expected=set(before))  # nothing left behind in the old partitions
    location = stop_with_savepoint([worker], tmp_path / "savepoints")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_partitions([NewPartitions(scenario.input, 8)])[scenario.input].result(30)
    wait_for(lambda: partition_count(bootstrap, scenario.input) == 8, 30, 0.5, "8 input partitions")
    moved = {o.user for o in after.values() if partition_for(o.user.encode(), 8) != partition_for(o.user.encode(), 4)}
    assert moved, "no user changes partition; the test would prove nothing"

    # A new group: in the old one, the static member would get its cached 4-partition
    # assignment back until the next metadata refresh (see docs/architecture.md, Rescale).
    _resume_and_finish(scenario, location, after, group=unique_name("running-sum-prekeyed-8"))

    report = scenario.check()
    assert report.ok, report.summary()


def test_a_savepoint_in_s3_storage_resumes_and_passes_the_oracle(bootstrap, tmp_path, s3_server):
    storage = f"s3://{s3_server.bucket}/{tmp_path.name}"
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, storage=storage,
                          spec_overrides={"env": s3_server.env()})
    before, after = _split(scenario, 3_000)
    scenario.feed_all_now(before)
    worker = start_controlled(scenario).wait_ready()
    wait_for(lambda: len(scenario.ids_seen()) >= 1_000, 90, 0.5, "some output")
    location = stop_with_savepoint([worker], None, env=s3_server.env())  # the workers' default directory
    assert location.startswith(f"{storage}/{scenario.group}/savepoints/sp-"), location
    listing = eos("savepoint", "list", f"{storage}/{scenario.group}/savepoints", env=s3_server.env())
    assert " usable " in listing.stdout, listing.stdout + listing.stderr

    shutil.rmtree(tmp_path / "state")  # a new machine: every savepoint file is downloaded
    _resume_and_finish(scenario, location, after)
    report = scenario.check()
    assert report.ok, report.summary()


# -- changed jobs ---------------------------------------------------------------------


def test_an_added_operator_starts_empty_while_the_others_keep_their_state(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=6_000)
    _, after = _split(scenario, 3_000)
    location = _run_then_stop(scenario, tmp_path / "savepoints", 3_000)
    counted_before = scenario.ids_seen()
    counts = unique_name("counts")
    create_topics(bootstrap, [counts], 4)

    _resume_and_finish(scenario, location, after, job=COUNTER_JOB,
                       params={"input": scenario.input, "output": scenario.output, "counts": counts})

    report = scenario.check()
    assert report.ok, report.summary()
    expected: dict[str, int] = {}
    for order_id, order in scenario.orders.items():
        if order_id not in counted_before:
            expected[order.user] = expected.get(order.user, 0) + 1
    seen: dict[str, list[int]] = {}
    for _, value in read_all(bootstrap, counts):
        record = json.loads(value)
        seen.setdefault(record["user"], []).append(record["orders"])
    assert {user: list(range(1, n + 1)) for user, n in expected.items()} == seen


@pytest.fixture(scope="module")
def counter_savepoint(bootstrap, tmp_path_factory):
    """A savepoint of the job with the `order-count` operator, stopped mid-run."""
    workdir = tmp_path_factory.mktemp("counter-savepoint")
    counts = unique_name("counts")
    create_topics(bootstrap, [counts], 4)
    scenario = RunningSum(bootstrap, workdir, records=4_000)
    scenario.spec_overrides.update(job=COUNTER_JOB, params={"input": scenario.input, "output": scenario.output,
                                                            "counts": counts})
    location = _run_then_stop(scenario, workdir / "savepoints", 2_000)
    return scenario, location


def test_a_removed_operator_is_refused_naming_its_uid(bootstrap, counter_savepoint):
    scenario, location = counter_savepoint
    before = committed_offsets(bootstrap, scenario.group, scenario.input, 4)
    refused = scenario.start_worker(job=JOBS.parent.parent / "examples" / "running_sum.py",
                                    params={"input": scenario.input, "output": scenario.output},
                                    extra_args=["--from-savepoint", location])
    assert refused.wait(60) == 1, refused.log_tail()
    log = refused.log_tail(5)
    assert "'order-count'" in log and "--allow-non-restored-state" in log, log
    assert committed_offsets(bootstrap, scenario.group, scenario.input, 4) == before


def test_a_removed_operator_is_dropped_with_allow_non_restored_state(bootstrap, counter_savepoint):
    scenario, location = counter_savepoint
    _, after = _split(scenario, 2_000)
    _resume_and_finish(scenario, location, after, group=unique_name("running-sum-without-counter"),
                       job=JOBS.parent.parent / "examples" / "running_sum.py",
                       params={"input": scenario.input, "output": scenario.output},
                       extra_args=["--allow-non-restored-state"])
    report = scenario.check()
    assert report.ok, report.summary()


# -- damage and bad input -----------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_savepoint(bootstrap, tmp_path_factory):
    """A stop-with-savepoint of the running sum, half way through its input."""
    workdir = tmp_path_factory.mktemp("plain-savepoint")
    scenario = RunningSum(bootstrap, workdir, records=3_000)
    location = _run_then_stop(scenario, workdir / "savepoints", 1_500)
    return scenario, Path(location)


def _copy(location: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copies" / location.name
    shutil.copytree(location, copy)
    return copy


def _refused(scenario: RunningSum, bootstrap: str, savepoint: str, **worker) -> str:
    """Starts a worker from `savepoint` into a fresh group; it must exit 1 before it
    reads or commits anything. Returns its last log lines."""
    worker.setdefault("group", unique_name("refused"))
    worker.setdefault("worker_id", unique_name("refused"))
    process = scenario.start_worker(extra_args=["--from-savepoint", savepoint], **worker)
    assert process.wait(60) == 1, process.log_tail()
    assert all(offset < 0 for offset, _ in committed_offsets(bootstrap, worker["group"], scenario.input, 4).values())
    return process.log_tail(5)


def test_a_corrupt_savepoint_file_refuses_to_resume_naming_the_file(bootstrap, tmp_path, plain_savepoint):
    scenario, location = plain_savepoint
    copy = _copy(location, tmp_path)
    victim = sorted((copy / "state").rglob("*.jsonl"))[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x20
    victim.write_bytes(bytes(data))
    log = _refused(scenario, bootstrap, str(copy))
    assert str(victim) in log and "is corrupt" in log, log


@pytest.mark.parametrize("damage", ["unknown path", "no manifest", "wrong job", "other version"])
def test_bad_savepoint_input_is_refused_before_anything_is_read(bootstrap, tmp_path, plain_savepoint, damage):
    scenario, location = plain_savepoint
    copy = _copy(location, tmp_path)
    worker = {}
    if damage == "unknown path":
        path, expected = str(tmp_path / "no-such-savepoint"), "does not exist"
    elif damage == "no manifest":
        (copy / MANIFEST_NAME).unlink()
        path, expected = str(copy), "is not a complete savepoint"
    elif damage == "wrong job":
        worker = {"job": JOBS / "running_sum_throttled.py",
                  "params": {"input": scenario.input, "output": scenario.output, "throttle_ms": "0"}}
        path, expected = str(copy), "was taken of job 'running-sum'"
    else:
        manifest, _ = open_savepoint(str(copy))
        (copy / MANIFEST_NAME).write_bytes(dataclasses.replace(manifest, version=2).to_bytes())
        path, expected = str(copy), "format version 2; this version of eos reads version 1"
    log = _refused(scenario, bootstrap, path, **worker)
    assert expected in log, log


@pytest.mark.parametrize("fault", ["mid_write", "mid_file"])
def test_sigkill_while_writing_a_savepoint_leaves_it_unusable_and_the_checkpoints_intact(bootstrap, tmp_path, fault):
    """Killed after its first state file (`mid_write`) or halfway through it, leaving the
    storage's temporary file of that write (`mid_file`): either way `list` shows the
    attempt as incomplete, `--from-savepoint` refuses it, `dispose` removes all of it, and
    the job resumes from its checkpoints."""
    scenario = RunningSum(bootstrap, tmp_path, records=6_000)
    before, after = _split(scenario, 3_000)
    scenario.feed_all_now(before)
    doomed = start_controlled(scenario, env={"EOS_SAVEPOINT_FAULT": fault}).wait_ready()
    wait_for(lambda: len(scenario.ids_seen()) >= 1_000, 90, 0.5, "some output")
    result = eos("savepoint", "stop", "--job", doomed.url, "--target", str(tmp_path / "savepoints"))
    assert result.returncode != 0, result.stdout
    assert doomed.process.wait(30) == -signal.SIGKILL, doomed.process.log_tail()
    assert "killing this worker while writing a savepoint" in doomed.process.log_tail()

    listing = eos("savepoint", "list", str(tmp_path / "savepoints"))
    assert listing.returncode == 0, listing.stderr
    assert "incomplete (not usable)" in listing.stdout and " usable " not in listing.stdout, listing.stdout
    partial = next((tmp_path / "savepoints").iterdir())
    if fault == "mid_write":
        assert any(partial.rglob("*.jsonl")), "the worker died before writing any state file"
    else:
        assert not any(partial.rglob("*.jsonl")) and any(partial.rglob(".*.tmp")), sorted(partial.rglob("*"))
        assert "unfinished writes" in listing.stdout, listing.stdout
    assert "is not a complete savepoint" in _refused(scenario, bootstrap, str(partial))
    disposed = eos("savepoint", "dispose", str(partial))
    assert disposed.returncode == 0 and not partial.exists(), disposed.stderr

    survivor = scenario.start_worker()  # from the job's checkpoints, as after any crash
    scenario.feed_all_now(after)
    scenario.wait_complete(survivor)
    assert survivor.terminate() == 0, survivor.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


# -- Kafka's partitioner -------------------------------------------------------------------


def test_murmur2_places_keys_where_the_producer_does(bootstrap):
    topic = unique_name("murmur2")
    create_topics(bootstrap, [topic], 8)
    keys = [f"user-{i}".encode() for i in range(200)] + [json.dumps(f"user-{i}").encode() for i in range(200)]
    produce(bootstrap, topic, ((key, b"x") for key in keys))
    placed = {key: partition for partition, _, key, _ in read_all(bootstrap, topic, with_meta=True)}
    assert {key: partition_for(key, 8) for key in keys} == placed


@pytest.mark.chaos
def test_savepoint_cycles_under_sigkills_pass_the_oracle(bootstrap, tmp_path):
    """Stop with a savepoint, resume, SIGKILL, restart with the same command line, stop
    again... while input keeps arriving: the oracle must still pass at the end."""
    rng = random.Random(5)
    scenario = RunningSum(bootstrap, tmp_path, records=30_000, chunk=500, chunk_pause_s=0.4)
    scenario.start_feeding()
    location: str | None = None
    for cycle in range(5):
        extra = ["--from-savepoint", location] if location else []
        worker = start_controlled(scenario, extra_args=extra).wait_ready()
        time.sleep(rng.uniform(1.0, 3.0))
        if rng.random() < 0.6:
            worker.process.kill()
            worker = start_controlled(scenario, extra_args=extra).wait_ready()
            time.sleep(rng.uniform(1.0, 2.0))
        location = stop_with_savepoint([worker], tmp_path / "savepoints")
    final = start_controlled(scenario, extra_args=["--from-savepoint", location])
    scenario.wait_fed()
    scenario.wait_complete(final.process, timeout=300)
    assert final.process.terminate() == 0, final.process.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
