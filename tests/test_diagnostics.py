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
    # The dump is written thread by thread, the main thread last: wait for the frame itself.
    wait_for(lambda: _shows_the_main_loop(worker.log_text()), 20, 0.2, lambda: f"the main loop's frame in the log:\n{worker.log_tail()}")
    scenario.wait_fed()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def _shows_the_main_loop(log: str) -> bool:
    return "most recent call first" in log and "service/runtime/loop.py" in log and "in turn" in log
