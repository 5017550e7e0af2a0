"""Poison records under the dead-letter policy: good records stay exactly-once, and the
dead-letter topic holds each poison record exactly once, across SIGKILLs."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.harness.kafka import produce, read_all
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import REPO, kill_at_random, wait_for
from tests.harness.workload import encode

JOBS = REPO / "tests" / "jobs"

pytestmark = pytest.mark.kafka


def _poison(i: int) -> tuple[bytes | None, bytes | None]:
    kind = i % 4
    if kind == 0:
        return b"p%d" % i, b"not json %d" % i                                # not JSON
    if kind == 1:
        return b"p%d" % i, json.dumps({"id": -i, "amount": 1, "tag": i}).encode()  # no user
    if kind == 2:
        return b"p%d" % i, json.dumps({"id": -i, "user": "user-1", "amount": "x", "tag": i}).encode()
    return b"p%d" % i, json.dumps([i, "a list, not an order"]).encode()     # wrong shape


def test_poison_records_go_to_the_dead_letter_topic_exactly_once(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, spec_overrides={
        "extra_args": ["--error-policy", "dead-letter"]})
    poison = [_poison(i) for i in range(1, 61)]
    orders = list(scenario.orders.values())

    def feed() -> None:
        for chunk in range(12):
            good = [encode(o) for o in orders[chunk * 500:(chunk + 1) * 500]]
            bad = poison[chunk * 5:(chunk + 1) * 5]
            produce(bootstrap, scenario.input, good[:250] + bad + good[250:])
            time.sleep(0.4)

    feeder = threading.Thread(target=feed)
    feeder.start()
    kill_at_random(lambda _: scenario.start_worker(), kills=4, seed=5, delay_s=(1.0, 2.5))
    feeder.join()
    dead = _finish_and_read_dead_letters(scenario, expected=len(poison))
    values = [value for _, value, _ in dead]
    assert sorted(values) == sorted(v for _, v in poison), "dead-letter topic differs from the poison set"
    for key, value, headers in dead:
        h = dict(headers)
        assert h["eos.source.topic"] in (scenario.input.encode(), f"{scenario.group}-by-user-repartition".encode())
        assert int(h["eos.source.offset"]) >= 0 and h["eos.error.class"] and h["eos.error.message"]
        assert h["eos.operator"] in (b"orders", b"by-user", b"totals"), h


def _finish_and_read_dead_letters(scenario: RunningSum, expected: int) -> list:
    """Runs a worker until every good record has its output and `expected` dead letters
    are committed (a partition's last bad records may come after its last good ones),
    checks the good records with the oracle and returns the dead-letter topic's records
    as (key, value, headers)."""
    dlq = f"{scenario.group}-dlq"
    worker = scenario.start_worker()
    scenario.wait_complete(worker)
    wait_for(lambda: len(read_all(scenario.bootstrap, dlq)) >= expected, 60, 0.5,
             lambda: f"{expected} dead letters:\n{worker.log_tail()}")
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
    return read_all(scenario.bootstrap, dlq, with_headers=True)


BAD_KINDS = {
    # name: (key, value, operator that fails, error class)
    "key not UTF-8": (b"\xff\xfe-order", b'{"id": -1, "user": "user-1", "amount": 1}', b"orders", b"SerdeError"),
    "tombstone": (b"order-tombstone", None, b"orders", b"SerdeError"),
    "output too large": (b"order-big", b'{"id": -3, "user": "user-1", "amount": 1, "pad": 2000000}',
                         b"by-user", b"RecordTooLarge"),
}


def test_every_kind_of_bad_record_goes_to_the_dead_letter_topic(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=2_000, spec_overrides={
        "extra_args": ["--error-policy", "dead-letter"], "job": JOBS / "running_sum_strict_keys.py"})
    orders = [encode(o) for o in scenario.orders.values()]
    bad = [(key, value) for key, value, _, _ in BAD_KINDS.values()]
    produce(bootstrap, scenario.input, orders[:1_000] + bad + orders[1_000:])
    dead = _finish_and_read_dead_letters(scenario, expected=len(BAD_KINDS))
    assert len(dead) == len(BAD_KINDS), [(k, h) for k, _, h in dead]
    by_key = {key: (value, dict(headers)) for key, value, headers in dead}
    for name, (key, value, operator, error_class) in BAD_KINDS.items():
        assert key in by_key, f"{name}: not in the dead-letter topic"
        stored, headers = by_key[key]
        assert stored == value, f"{name}: the dead letter is not the original record"
        assert (headers["eos.operator"], headers["eos.error.class"]) == (operator, error_class), (name, headers)


def test_skip_and_log_must_be_chosen_and_logs_each_skip(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=200, spec_overrides={
        "extra_args": ["--error-policy", "skip-and-log"]})
    scenario.feed_all_now()
    produce(bootstrap, scenario.input, [(b"bad", b"{broken")])
    worker = scenario.start_worker()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0
    assert "skipping record" in worker.log_tail(200) and "not valid JSON" in worker.log_tail(200)
    assert scenario.check().ok
