"""Shared fixtures: one real Kafka broker per test session, fresh topics per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.harness.broker import session_broker
from tests.harness.kafka import create_topics, unique_name


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test():
    from tests.harness.worker_process import WorkerProcess

    yield
    WorkerProcess.kill_leftovers()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[tuple]:
    with session_broker() as handle:
        yield handle


@pytest.fixture(scope="session")
def bootstrap(kafka_broker) -> str:
    return kafka_broker[0]


@pytest.fixture
def new_topic(bootstrap: str) -> Callable[..., str]:
    """Creates a topic with a unique name for this test and returns the name."""

    def make(prefix: str = "t", partitions: int = 4) -> str:
        name = unique_name(prefix)
        create_topics(bootstrap, [name], partitions)
        return name

    return make


from tests.harness.s3_server import S3Server, running_s3_server  # noqa: E402 - appended fixture


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (moto, separate process) shared by the session; its
    default bucket is `s3_server.bucket`. Restarting it loses every object."""
    with running_s3_server() as server:
        yield server



def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_broker_factory(tmp_path_factory):
    """Starts brokers of this test's own (for tests that stop them, or need listeners the
    shared one lacks); stops them at the end."""
    import os

    from service.local_kafka import BrokerSettings, LocalBroker

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs a locally managed broker of its own")
    started = []

    def start(**settings) -> LocalBroker:
        broker = LocalBroker(BrokerSettings(port=_free_port(), controller_port=_free_port(),
                                            data_dir=tmp_path_factory.mktemp("private-kafka"), **settings))
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def private_broker(private_broker_factory):
    """A broker of this test's own, for tests that stop and restart it."""
    return private_broker_factory()
