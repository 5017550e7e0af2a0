"""Chooses the Kafka broker the tests run against.

Order: KAFKA_BOOTSTRAP_SERVERS if set; else a testcontainers KafkaContainer (KRaft)
when a Docker engine answers; else a real broker JVM started from Maven Central jars
by our own `LocalBroker`. Never a mock: the transaction coordinator is what we test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from service.local_kafka import BrokerSettings, LocalBroker

log = logging.getLogger(__name__)

TEST_BROKER_PORT = int(os.environ.get("EOS_TEST_KAFKA_PORT", "39092"))


def docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no"
        return False


@contextlib.contextmanager
def _testcontainers_broker() -> Iterator[str]:
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft() as container:
        yield container.get_bootstrap_server()


@contextlib.contextmanager
def _local_broker() -> Iterator[str]:
    shared = LocalBroker(BrokerSettings(port=TEST_BROKER_PORT))
    if shared.is_running():
        yield shared.bootstrap
        return
    data_dir = Path(tempfile.mkdtemp(prefix=f"eos-test-kafka-{TEST_BROKER_PORT}-"))
    broker = LocalBroker(BrokerSettings(port=TEST_BROKER_PORT, data_dir=data_dir, dies_with_owner=True))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def session_broker() -> Iterator[str]:
    """Yields the bootstrap address of the run's broker, started here if it is ours."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
    elif docker_engine_answers():
        with _testcontainers_broker() as bootstrap:
            yield bootstrap
    else:
        with _local_broker() as bootstrap:
            yield bootstrap
