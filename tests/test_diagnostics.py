"""A running worker says where it is on SIGUSR1, without stopping: what an operator (or
the soak) needs to tell a hung worker from a slow one."""

from __future__ import annotations

import signal

import pytest

from tests.harness.scenario import RunningSum
from tests.harness.worker_process import wait_for

pytestmark = pytest.mark.kafka


def test_sigusr1_prints_every_threads_stack_and_the_worker_runs_on(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=2_000, chunk=500, chunk_pause_s=0.2)
    scenario.start_feeding()
    worker = scenario.start_worker()
    wait_for(lambda: "assigned" in worker.log_text(), 60, 0.2, "the worker to get partitions")
    worker.signal(signal.SIGUSR1)
    wait_for(lambda: "most recent call first" in worker.log_text(), 20, 0.2, "a stack dump in the log")
    log = worker.log_text()
    assert "service/runtime/loop.py" in log and "in turn" in log, log  # the main loop's frame is there
    scenario.wait_fed()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
