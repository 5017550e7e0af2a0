"""Shared fixtures: one real Kafka broker per test run, fresh topics per test.

The broker belongs to the process that runs the session (pytest's controller when tests
run in parallel with pytest-xdist): it is chosen and started once in `pytest_configure`,
handed to every test process through SHARED_BOOTSTRAP_ENV, and stopped when the run ends
(killed with the run's process if it ends by a signal, which skips the clean-up).
No test stops it; tests that need a broker outage start a private one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from tests.harness.broker import session_broker
from tests.harness.kafka import create_topics, unique_name
from tests.harness.ports import free_port

SHARED_BOOTSTRAP_ENV = "EOS_TEST_SHARED_BOOTSTRAP"


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or os.environ.get(SHARED_BOOTSTRAP_ENV):
        return  # a test process of a parallel run: the controller owns the broker
    broker = contextlib.ExitStack()
    bootstrap = broker.enter_context(session_broker())
    os.environ[SHARED_BOOTSTRAP_ENV] = bootstrap
    config.stash[_broker_key] = broker


def pytest_unconfigure(config: pytest.Config) -> None:
    broker = config.stash.get(_broker_key, None)
    if broker is not None:
        os.environ.pop(SHARED_BOOTSTRAP_ENV, None)
        broker.close()


_broker_key = pytest.StashKey[contextlib.ExitStack]()


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test():
    from tests.harness.worker_process import WorkerProcess

    yield
    WorkerProcess.kill_leftovers()


@pytest.fixture(scope="session")
def bootstrap() -> str:
    """The run's shared broker."""
    return os.environ[SHARED_BOOTSTRAP_ENV]


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


from tests.harness.schema_registry import RegistryServer, running_registry  # noqa: E402 - appended fixture

# Tests that need the registry share this xdist group, so one test process starts it once.
SCHEMA_REGISTRY_GROUP = "schema-registry"


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[RegistryServer]:
    """A real schema registry (Apicurio Registry, Confluent's API at `schema_registry.url`),
    in memory, shared by the session; new schemas must be BACKWARD compatible, as in a
    Confluent registry by default."""
    with running_registry() as server:
        yield server


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
        broker = LocalBroker(BrokerSettings(port=free_port(), controller_port=free_port(),
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


from tests.harness.postgres import create_database, session_postgres  # noqa: E402 - appended fixture


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """The admin DSN of this test process's PostgreSQL: POSTGRES_DSN's server, or one it
    started in a temporary directory (stopped when the process ends)."""
    from tests.harness.postgres import DSN_ENV, server_binaries

    if not os.environ.get(DSN_ENV) and server_binaries() is None:
        pytest.skip("needs PostgreSQL: install its server (apt-get install postgresql) or set POSTGRES_DSN")
    with session_postgres() as dsn:
        yield dsn


@pytest.fixture
def postgres_db(postgres_admin: str) -> str:
    """A fresh database of this test's own; returns its DSN."""
    return create_database(postgres_admin)


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of this test's own, for tests that restart it, fill its disk
    or cut it off; removed at the end."""
    from tests.harness.postgres import PostgresServer, server_binaries

    if server_binaries() is None:
        pytest.skip("needs PostgreSQL's server binaries (apt-get install postgresql)")
    server = PostgresServer()
    server.start()
    yield server
    server.remove()
