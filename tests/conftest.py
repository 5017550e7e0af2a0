"""Shared fixtures: one real Kafka broker per test session, fresh topics per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.harness.broker import session_broker
from tests.harness.kafka import create_topics, unique_name


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

