"""A broker outage mid-run: the worker waits, commits nothing partial, and resumes;
the oracle passes."""

from __future__ import annotations

import time

import pytest

from tests.harness.scenario import RunningSum

pytestmark = pytest.mark.kafka


def test_broker_down_for_15_seconds_mid_run(private_broker, tmp_path):
    broker = private_broker
    bootstrap = broker.bootstrap
    scenario = RunningSum(bootstrap, tmp_path, records=6_000)
    half = {i: o for i, o in scenario.orders.items() if i < 3_000}
    rest = {i: o for i, o in scenario.orders.items() if i >= 3_000}
    scenario.feed_all_now(half)
    worker = scenario.start_worker()
    time.sleep(2.0)  # mid-run: some of the first half processed, maybe committed
    broker.stop()
    try:
        time.sleep(15)
        assert worker.alive(), f"the worker gave up during the outage:\n{worker.log_tail()}"
    finally:
        broker.start()
    scenario.feed_all_now(rest)
    scenario.wait_complete(worker, timeout=240)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
