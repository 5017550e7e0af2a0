"""Restart strategies on a real broker: a worker whose checkpoints keep failing restarts
in-process (same OS process) once its checkpoint storage is back, counts the restarts,
and the oracle passes; a bad record under policy `fail` is not retried."""

from __future__ import annotations

import pytest

from tests.harness.kafka import produce
from tests.harness.savepoints import start_controlled
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import wait_for

pytestmark = pytest.mark.kafka


def test_a_worker_whose_checkpoints_fail_restarts_in_process_and_counts_it(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=6_000)
    before = {i: o for i, o in scenario.orders.items() if i < 3_000}
    after = {i: o for i, o in scenario.orders.items() if i >= 3_000}
    scenario.feed_all_now(before)
    worker = start_controlled(scenario, extra_args=["--restart-strategy", "fixed-delay:20:1s",
                                                    "--tolerable-failures", "1"]).wait_ready()
    scenario.wait_complete(worker.process, expected=set(before))
    storage = tmp_path / "checkpoints"
    aside = tmp_path / "checkpoints-away"

    storage.rename(aside)  # checkpoint storage becomes unusable: a file where its directory was
    storage.write_text("not a directory")
    scenario.feed_all_now({i: o for i, o in after.items() if i < 3_500})
    wait_for(lambda: "restart 2 in" in worker.process.log_tail(200), 120, 0.5, "the worker to restart twice")
    storage.unlink()
    aside.rename(storage)

    scenario.feed_all_now({i: o for i, o in after.items() if i >= 3_500})
    scenario.wait_complete(worker.process)
    worker.wait_ready()
    assert worker.metric("eos_restarts_total") >= 2
    assert worker.process.terminate() == 0, worker.process.log_tail()
    log = worker.process.log_tail(400)
    assert "checkpoints keep failing" in log, log
    report = scenario.check()
    assert report.ok, report.summary()


def test_a_bad_record_under_policy_fail_is_not_restarted(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=500)
    scenario.feed_all_now()
    produce(bootstrap, scenario.input, [(b"bad", b"not json")], partition=0)
    worker = scenario.start_worker(extra_args=["--restart-strategy", "fixed-delay:5:1s"])
    assert worker.wait(90) == 2, worker.log_tail()
    log = worker.log_tail(10)
    assert "not restarting: RecordError is not cured by a restart" in log, log
    assert log.count("stopping on a bad record") == 1, log
