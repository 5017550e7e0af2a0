"""Fixtures for tests on hosts of their own (network namespaces): the hosts, and a broker
of the test's own that every host reaches at netns.SERVICE_IP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.local_kafka import BrokerSettings, LocalBroker
from tests.harness import netns
from tests.harness.ports import free_port


@pytest.fixture
def hosts() -> Iterator:
    netns.require()
    netns.ensure_service_ip()
    netns.remove_stale_hosts()
    made: list[netns.Host] = []

    def make() -> netns.Host:
        host = netns.Host().create()
        made.append(host)
        return host

    yield make
    for host in made:
        host.destroy()


@pytest.fixture
def service_broker(hosts, tmp_path_factory) -> Iterator[tuple[LocalBroker, str, int]]:
    """A broker of the test's own that every host reaches at SERVICE_IP."""
    port, controller_port = free_port(), free_port()
    broker = LocalBroker(BrokerSettings(
        port=port, controller_port=controller_port, data_dir=tmp_path_factory.mktemp("net-kafka"),
        extra={"listeners": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:{controller_port}",
               "advertised.listeners": f"PLAINTEXT://{netns.SERVICE_IP}:{port}"}))
    broker.start()
    try:
        yield broker, f"{netns.SERVICE_IP}:{port}", port
    finally:
        broker.stop()
