"""Input records deleted before the job processed them are a decision, never an accident.

Records are deleted with Kafka's own DeleteRecords (what retention does, and what
`kafka-delete-records` does) past the job's committed offsets while it is down, or ahead
of its position while it runs. By default the worker stops naming the topic, partition,
offsets and how many records are gone; with `--on-missing-input skip-to-earliest` it goes
on and says the same at WARNING, and the independent oracle finds exactly the surviving
input in the output, each record once.
"""

from __future__ import annotations

import json
import re

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.kafka_source import KafkaSource, OutOfRange, consumer_config
from connectors.offsets import ClusterOffsets
from service.monitoring.metrics import WorkerMetrics
from service.runtime.missing_input import SKIP_TO_EARLIEST, MissingInput
from tests.harness.kafka import produce, read_all, unique_name
from tests.harness.ports import free_port
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import wait_for

pytestmark = [pytest.mark.kafka]


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def _ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("ends")})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
    finally:
        consumer.close()


def _delete_before(bootstrap: str, topic: str, offsets: dict[int, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_records([TopicPartition(topic, p, o) for p, o in offsets.items()]).values():
        future.result(timeout=30)


def _processed_then_deleted(bootstrap: str, tmp_path, extra_args=()):
    """A job that ran, committed and stopped; then more input arrived and all but the
    last 50 records of each partition past the committed offsets were deleted."""
    scenario = RunningSum(bootstrap, tmp_path, records=4_000, users=40)
    first = {i: o for i, o in scenario.orders.items() if i < 1_000}
    scenario.feed_all_now(first)
    worker = scenario.start_worker(extra_args=list(extra_args))
    scenario.wait_complete(worker, expected=set(first))
    assert worker.terminate() == 0, worker.log_tail()
    committed = _committed(bootstrap, scenario.group, scenario.input, scenario.partitions)
    scenario.feed_all_now({i: o for i, o in scenario.orders.items() if i >= 1_000})
    ends = _ends(bootstrap, scenario.input, scenario.partitions)
    cut = {p: ends[p] - 50 for p in ends}
    _delete_before(bootstrap, scenario.input, cut)
    gone = {p: cut[p] - committed[p] for p in cut}
    assert all(count > 0 for count in gone.values()), (committed, cut)
    return scenario, committed, cut, gone


def test_records_deleted_while_the_job_was_down_stop_it_naming_what_is_gone(bootstrap, tmp_path):
    scenario, committed, cut, gone = _processed_then_deleted(bootstrap, tmp_path)
    worker = scenario.start_worker()
    assert worker.wait(120) == 1, worker.log_tail()
    log = worker.log_text()
    stated = re.search(rf"topic '{scenario.input}' partition (\d+): (\d+) records were deleted before they were "
                       rf"processed \(the job's position is offset (\d+), the earliest offset left is (\d+)", log)
    assert stated, log
    partition, count, position, earliest = map(int, stated.groups())
    assert (count, position, earliest) == (gone[partition], committed[partition], cut[partition])
    assert "--on-missing-input skip-to-earliest" in log, log
    before = len(scenario.outputs())
    assert before == 1_000, "nothing past the last checkpoint may have been committed"


def test_skip_to_earliest_reads_on_says_what_it_skipped_and_counts_it(bootstrap, tmp_path):
    scenario, committed, cut, gone = _processed_then_deleted(bootstrap, tmp_path)
    port = free_port()
    worker = scenario.start_worker(extra_args=["--on-missing-input", "skip-to-earliest", "--http-port", str(port)])
    survivors = {json.loads(value)["id"] for _, value in read_all(bootstrap, scenario.input)}
    expected = {i for i in scenario.orders if i < 1_000} | survivors
    scenario.wait_complete(worker, expected=expected)
    log = worker.log_text()
    for partition, count in gone.items():
        assert re.search(rf"WARNING .*topic '{scenario.input}' partition {partition}: {count} records were deleted "
                         rf"before they were processed.*skipping to offset {cut[partition]}", log), log
    metrics = _scrape(port)
    counted = sum(float(v) for v in re.findall(
        rf'^eos_input_records_missing_total{{.*topic="{scenario.input}".*}} (\S+)$', metrics, re.M))
    assert counted == sum(gone.values()), metrics
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check({i: o for i, o in scenario.orders.items() if i in expected})
    assert report.ok and report.outputs == len(expected), report.summary()


def test_a_position_deleted_while_reading_is_reported_not_reset(bootstrap, new_topic):
    """While a job runs, the consumer's own fetch position can be deleted (retention on a
    job whose backlog is larger than its fetch queue). Its consumer never resets on its
    own: it reports the position, which the worker's loop hands to the same policy as a
    gap found at restore. (Here the deletion comes first, so no fetch can be ahead of it.)"""
    topic = new_topic("gone", partitions=1)
    produce(bootstrap, topic, ((None, b"x" * 100) for _ in range(200)))
    source = KafkaSource(consumer_config(bootstrap, unique_name("group"), "job-w1#1", session_timeout_ms=6000,
                                         max_poll_interval_ms=300_000, static_membership=False, worker_id="w1",
                                         extra={}))
    try:
        _delete_before(bootstrap, topic, {0: 150})
        source.consumer.assign([TopicPartition(topic, 0, 20)])
        records: list = []
        wait_for(lambda: records.extend(source.consume(100, 0.2)) or source._out_of_range, 30, 0.1,
                 "the consumer to report the deleted position")
        assert source.take_out_of_range() == [OutOfRange(topic, 0, 20)] and records == []
    finally:
        source.close()


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_a_gap_found_again_is_counted_once(bootstrap, new_topic):
    """A task restored twice before its next checkpoint (a rebalance right after its
    assignment, a rewind) finds the same gap from the same committed offset again, and a
    consumer may report a position the restore had already skipped: each decision is
    logged, but the records that are gone are counted once."""
    topic = new_topic("gone", partitions=1)
    produce(bootstrap, topic, ((None, b"x") for _ in range(100)))
    _delete_before(bootstrap, topic, {0: 60})
    config = consumer_config(bootstrap, unique_name("group"), "job-w1#1", session_timeout_ms=6000,
                             max_poll_interval_ms=300_000, static_membership=False, worker_id="w1", extra={})
    metrics = WorkerMetrics("job", "w1")
    missing = MissingInput(SKIP_TO_EARLIEST, ClusterOffsets(config), metrics)
    assert missing.read_from({(topic, 0): 10}) == {(topic, 0): 60}
    assert missing.read_from({(topic, 0): 10}) == {(topic, 0): 60}
    assert missing.out_of_range(topic, 0, 10) == 60
    counted = {"job": "job", "worker": "w1", "topic": topic}
    assert metrics.registry.get_sample_value("eos_input_records_missing_total", counted) == 50
    _delete_before(bootstrap, topic, {0: 80})
    assert missing.read_from({(topic, 0): 10}) == {(topic, 0): 80}
    assert metrics.registry.get_sample_value("eos_input_records_missing_total", counted) == 70
