"""Processing goes on while a checkpoint is written: only the capture at the barrier is
synchronous (asynchronous barrier snapshotting). Checkpoint storage here answers every
request 300 ms late (an S3 server behind a delaying proxy), so writing a checkpoint takes
seconds; the worker's status, published from its loop, shows records consumed while a
checkpoint is in progress, and the job stays exactly once.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.ports import free_port
from tests.harness.s3_server import S3Server
from tests.harness.scenario import RunningSum
from tests.harness.tcp_proxy import TcpProxy
from tests.harness.worker_process import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def slow_s3(s3_server: S3Server) -> Iterator[TcpProxy]:
    proxy = TcpProxy(s3_server.host, s3_server.port, latency_s=0.3)
    yield proxy
    proxy.close()


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as response:
        return json.loads(response.read())


def test_records_are_processed_while_a_checkpoint_is_written_to_slow_storage(bootstrap, tmp_path, s3_server,
                                                                            slow_s3):
    env = {**s3_server.env(), "AWS_ENDPOINT_URL": slow_s3.endpoint, "AWS_ENDPOINT_URL_S3": slow_s3.endpoint}
    scenario = RunningSum(bootstrap, tmp_path, records=12_000, chunk=300, chunk_pause_s=0.2,
                          storage=f"s3://{s3_server.bucket}/async-{uuid.uuid4().hex[:8]}",
                          spec_overrides={"env": env})
    port = free_port()
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=["--http-port", str(port), "--checkpoint-timeout", "30s"])
    seen: dict[int, list[int]] = {}  # checkpoint in progress -> records consumed, sample by sample

    def consumed_during_a_checkpoint() -> bool:
        assert worker.alive(), worker.log_tail()
        try:
            status = _status(port)
        except OSError:
            return False
        if status.get("in_progress"):
            seen.setdefault(status["in_progress"]["checkpoint_id"], []).append(status["records_in"])
        return any(len(set(counts)) > 1 for counts in seen.values())

    wait_for(consumed_during_a_checkpoint, 120, 0.1, lambda: f"records consumed during a checkpoint ({seen})")
    scenario.wait_fed()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
