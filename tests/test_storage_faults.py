"""Checkpoint storage (a real S3-compatible server) becomes unreachable mid-run.

The workers reach moto through a TCP proxy that the test cuts and restores, so the
outage is real on the wire (connection refused, connections reset) while moto keeps
its objects in memory. Checkpoints fail and count; nothing commits without its
snapshot; the worker recovers when storage returns, or stops with exit code 4 once
more checkpoints failed in a row than tolerated. The oracle passes either way.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.s3_server import S3Server
from tests.harness.scenario import RunningSum
from tests.harness.tcp_proxy import TcpProxy
from tests.harness.worker_process import WorkerProcess, wait_for

pytestmark = pytest.mark.kafka

_FAILED = re.compile(r"checkpoint (\d+) failed \((\d+) in a row\)")


@pytest.fixture
def s3_proxy(s3_server: S3Server) -> Iterator[TcpProxy]:
    proxy = TcpProxy(s3_server.host, s3_server.port)
    yield proxy
    proxy.close()


def _scenario(bootstrap: str, tmp_path, s3_server: S3Server, proxy: TcpProxy, **kwargs) -> RunningSum:
    env = {**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ENDPOINT_URL_S3": proxy.endpoint}
    return RunningSum(bootstrap, tmp_path, storage=f"s3://{s3_server.bucket}/faults-{uuid.uuid4().hex[:8]}",
                      spec_overrides={"env": env}, **kwargs)


def _failures(worker: WorkerProcess) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in _FAILED.findall(worker.log_path.read_text(errors="replace"))]


def _outputs_committed(scenario: RunningSum) -> int:
    return len(scenario.outputs())


def test_checkpoints_fail_during_a_storage_outage_and_the_job_recovers(bootstrap, tmp_path, s3_server, s3_proxy):
    scenario = _scenario(bootstrap, tmp_path, s3_server, s3_proxy, records=8_000, chunk=400, chunk_pause_s=0.4)
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=["--tolerable-failures", "100"])
    wait_for(lambda: _outputs_committed(scenario) > 0, 60, what="a first committed checkpoint")

    s3_proxy.cut()
    wait_for(lambda: len(_failures(worker)) >= 1 or not worker.alive(), 60, what="a failed checkpoint")
    assert worker.alive(), worker.log_tail()
    during = _outputs_committed(scenario)
    time.sleep(6)
    assert _outputs_committed(scenario) == during, "a checkpoint committed while its snapshot could not be stored"
    failures = _failures(worker)
    # No checkpoint completes during the outage, not even one of the stateless first
    # stage alone: every failure lengthens the row.
    assert len(failures) >= 2 and [row for _, row in failures] == list(range(1, len(failures) + 1)), failures

    s3_proxy.restore()
    scenario.wait_fed()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == len(scenario.orders)


def test_more_failures_than_tolerated_stop_the_worker_loudly_and_a_restart_resumes(
        bootstrap, tmp_path, s3_server, s3_proxy):
    scenario = _scenario(bootstrap, tmp_path, s3_server, s3_proxy, records=4_000, chunk=400, chunk_pause_s=0.4)
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=["--tolerable-failures", "2"])
    wait_for(lambda: _outputs_committed(scenario) > 0, 60, what="a first committed checkpoint")

    s3_proxy.cut()
    assert worker.wait(120) == 4, worker.log_tail()
    log = worker.log_tail(15)
    assert "3 consecutive checkpoints failed, more than the 2 tolerated" in log, log
    assert [row for _, row in _failures(worker)][-3:] == [1, 2, 3], _failures(worker)

    s3_proxy.restore()
    scenario.survivor_finishes()


def test_a_checkpoint_slower_than_its_timeout_fails_and_aborts(bootstrap, tmp_path, s3_server, s3_proxy):
    scenario = _scenario(bootstrap, tmp_path, s3_server, s3_proxy, records=6_000, chunk=400, chunk_pause_s=0.4)
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=["--checkpoint-timeout", "1s", "--tolerable-failures", "100"])
    wait_for(lambda: _outputs_committed(scenario) > 0, 60, what="a first committed checkpoint")

    s3_proxy.latency_s = 1.5  # every storage request now outlasts the whole timeout
    wait_for(lambda: "timeout" in worker.log_path.read_text() or not worker.alive(), 60,
             what="a checkpoint to time out")
    assert worker.alive(), worker.log_tail()
    during = _outputs_committed(scenario)
    time.sleep(4)
    assert _outputs_committed(scenario) == during, "a checkpoint committed after its timeout"
    timed_out = [line for line in worker.log_path.read_text().splitlines()
                 if "failed (" in line and "timeout" in line]
    assert timed_out and "CheckpointTimeoutError" in timed_out[0], timed_out

    s3_proxy.latency_s = 0.0
    scenario.wait_fed()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
