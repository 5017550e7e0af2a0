"""A broker outage mid-run: the worker waits, reports itself unhealthy, commits nothing
partial, and resumes; the oracle passes."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import TopicPartition

from connectors.offsets import ClusterOffsets
from tests.harness.kafka import create_topics
from tests.harness.savepoints import start_controlled
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import wait_for

pytestmark = pytest.mark.kafka


def test_broker_down_for_15_seconds_mid_run(private_broker, tmp_path):
    broker = private_broker
    bootstrap = broker.bootstrap
    scenario = RunningSum(bootstrap, tmp_path, records=6_000)
    half = {i: o for i, o in scenario.orders.items() if i < 3_000}
    rest = {i: o for i, o in scenario.orders.items() if i >= 3_000}
    scenario.feed_all_now(half)
    controlled = start_controlled(scenario, membership=None)  # the product default
    worker = controlled.process
    controlled.wait_ready()
    wait_for(lambda: scenario.ids_seen(), 60, 0.2, "the first committed output")  # mid-run
    broker.stop()
    try:
        wait_for(lambda: _health(controlled.url)[0] == 503 and "Kafka unreachable" in _health(controlled.url)[1],
                 12, 0.5, lambda: f"/healthz to report the outage (it says {_health(controlled.url)})\n"
                                  f"{worker.log_tail(20)}")
        time.sleep(15)
        assert worker.alive(), f"the worker gave up during the outage:\n{worker.log_tail()}"
    finally:
        broker.start()
    wait_for(lambda: _health(controlled.url)[0] == 200, 60, 0.5,
             lambda: f"/healthz to be ok again (it says {_health(controlled.url)})")
    scenario.feed_all_now(rest)
    scenario.wait_complete(worker, timeout=240)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def _health(base_url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base_url + "/healthz", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_offsets_sent_while_the_broker_is_down_do_not_hang_the_worker(private_broker, tmp_path):
    """The situation in which the soak once saw librdkafka's `send_offsets_to_transaction`
    wait for minutes past its timeout (confluentinc/librdkafka#5456, #5511): offsets sent
    while the broker is gone. That hang does not come on demand (this test passes with
    or without the bound on the call; tests/test_runtime_unit.py checks the bound
    itself), so this checks what must hold either way: the worker resumes once the
    broker is back, and nothing is lost or repeated."""
    broker = private_broker
    scenario = RunningSum(broker.bootstrap, tmp_path, records=4_000)
    scenario.feed_all_now({i: o for i, o in scenario.orders.items() if i < 2_000})
    worker = scenario.start_worker(fault="after_persist@1:stop", membership=None)
    wait_for(lambda: "fault injection: freezing" in worker.log_text() or not worker.alive(), 60, 0.2,
             "the worker to freeze just before sending its offsets")
    broker.stop()
    try:
        worker.signal(signal.SIGCONT)  # it sends its offsets to a broker that is gone
        time.sleep(10)
    finally:
        broker.start()
    scenario.feed_all_now({i: o for i, o in scenario.orders.items() if i >= 2_000})
    scenario.wait_complete(worker, timeout=150)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def test_partition_offsets_are_listed_again_soon_after_the_broker_restarted(private_broker):
    """Admin clients that listed offsets before a restart: one asked at once finds no
    leader yet (_NOENT); one asked once the leaders are back keeps the partitions' old
    leader epochs and is refused (FENCED_LEADER_EPOCH) for as long as it asks. Both must
    get past it soon, not ride it out until giving up (a worker restoring its tasks
    stopped with exit 1 in the soak)."""
    bootstrap = private_broker.bootstrap
    create_topics(bootstrap, ["listed"], 4)
    partitions = [TopicPartition("listed", p) for p in range(4)]
    at_once, later = ClusterOffsets({"bootstrap.servers": bootstrap}), ClusterOffsets({"bootstrap.servers": bootstrap})
    for offsets in (at_once, later):
        assert offsets.ends(partitions) == {("listed", p): 0 for p in range(4)}
    private_broker.stop()
    private_broker.start()
    for offsets in (at_once, later):
        began = time.monotonic()
        assert offsets.starts(partitions) == {("listed", p): 0 for p in range(4)}
        assert time.monotonic() - began < 30, "listing offsets rode out the restart until close to giving up"
