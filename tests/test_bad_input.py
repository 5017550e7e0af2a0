"""A bad record stops the job with an error that says where and why; nothing past the
last completed checkpoint is committed, and the fixed job continues from there."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.harness.kafka import produce
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import REPO

pytestmark = pytest.mark.kafka

BAD_CASES = {
    "missing-field": (b'{"id": -1, "amount": 5}', "running_sum_skip_incomplete.py",
                      ["operator 'by-user'", "KeyError", "'user'"]),
    "not-json": (b"this is not json", "running_sum_lenient_json.py",
                 ["cannot deserialise the record value with the json serde", "not valid JSON"]),
}


def _committed_offset(bootstrap: str, group: str, topic: str, partition: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return consumer.committed([TopicPartition(topic, partition)], timeout=30)[0].offset
    finally:
        consumer.close()


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_stops_the_job_loudly_and_the_fixed_job_resumes(bootstrap, tmp_path, case):
    bad_value, fixed_job, fragments = BAD_CASES[case]
    scenario = RunningSum(bootstrap, tmp_path, records=4_000)
    before = {i: o for i, o in scenario.orders.items() if i < 2_000}
    after = {i: o for i, o in scenario.orders.items() if i >= 2_000}
    scenario.feed_all_now(before)
    worker = scenario.start_worker()
    scenario.wait_complete(worker, expected=set(before))
    time.sleep(1.5)  # let a checkpoint cover the good records
    bad_offset = _end_offset(bootstrap, scenario.input, 0)
    produce(bootstrap, scenario.input, [(b"bad", bad_value)], partition=0)
    scenario.feed_all_now(after)

    assert worker.wait(60) == 2, worker.log_tail()
    log = worker.log_tail(5)
    where = f"topic {scenario.input!r} partition 0 offset {bad_offset}"
    assert where in log, log
    for fragment in fragments:
        assert fragment in log, log
    committed = _committed_offset(bootstrap, scenario.group, scenario.input, 0)
    assert committed <= bad_offset, f"offset {committed} committed past the bad record at {bad_offset}"
    assert scenario.check(before).duplicates == 0

    fixed = scenario.start_worker(job=REPO / "tests" / "jobs" / fixed_job)
    scenario.wait_complete(fixed)
    assert fixed.terminate() == 0, fixed.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def _end_offset(bootstrap: str, topic: str, partition: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)[1]
    finally:
        consumer.close()


def test_unknown_job_parameter_is_a_clear_error(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=10)
    worker = scenario.start_worker(params={"input": scenario.input})
    assert worker.wait(60) == 1
    assert "the job needs parameter 'output'" in worker.log_tail(), worker.log_tail()
