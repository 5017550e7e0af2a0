"""SASL/SCRAM against a real broker listener: wrong credentials are refused with a clear
error, right ones (kept off the command line) work, and the secret never reaches the log."""

from __future__ import annotations

import pytest

from tests.harness.ports import free_port
from tests.harness.scenario import RunningSum

pytestmark = pytest.mark.kafka

PASSWORD = "s3cr3t-Pa55word"


@pytest.fixture
def sasl_broker(private_broker_factory):
    port = free_port()
    broker = private_broker_factory(sasl_port=port, scram_users={"alice": PASSWORD})
    return broker, f"localhost:{port}"


def _sasl_args(password_ref: str) -> list[str]:
    return ["--kafka-config", "security.protocol=SASL_PLAINTEXT",
            "--kafka-config", "sasl.mechanism=SCRAM-SHA-256",
            "--kafka-config", "sasl.username=alice",
            "--kafka-config", f"sasl.password={password_ref}"]


def test_wrong_credentials_are_refused_clearly(sasl_broker, tmp_path):
    broker, sasl_bootstrap = sasl_broker
    scenario = RunningSum(broker.bootstrap, tmp_path, records=100)
    worker = scenario.start_worker(bootstrap=sasl_bootstrap, extra_args=_sasl_args("@env:KAFKA_PASSWORD"),
                                   env={"KAFKA_PASSWORD": "wrong-password"})
    assert worker.wait(120) == 1, worker.log_tail()
    log = worker.log_tail(400)
    verdict = [line for line in log.splitlines() if "ERROR service.runtime.worker" in line]
    assert verdict and "cannot read the cluster's metadata" in verdict[-1], log
    assert "Authentication failed" in verdict[-1], verdict[-1]
    assert "wrong-password" not in log


def test_right_credentials_from_a_file_work(sasl_broker, tmp_path):
    broker, sasl_bootstrap = sasl_broker
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    scenario = RunningSum(broker.bootstrap, tmp_path, records=1_000)
    scenario.feed_all_now()
    worker = scenario.start_worker(bootstrap=sasl_bootstrap, extra_args=_sasl_args(f"@file:{secret}"))
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    assert scenario.check().ok
    assert PASSWORD not in (tmp_path / "w1.log").read_text()
