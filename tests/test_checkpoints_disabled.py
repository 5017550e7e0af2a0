"""`--checkpoint-interval 0`: refused with exactly-once; at-least-once commits offsets
alone, snapshots nothing, says so at start, and restarts stateful operators empty."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.harness.scenario import RunningSum
from tests.harness.workload import make_orders

pytestmark = pytest.mark.kafka


def _committed(scenario: RunningSum) -> list[TopicPartition]:
    consumer = Consumer({"bootstrap.servers": scenario.bootstrap, "group.id": scenario.group,
                         "enable.auto.commit": False})
    try:
        return consumer.committed([TopicPartition(scenario.input, p) for p in range(scenario.partitions)],
                                  timeout=30)
    finally:
        consumer.close()


def test_exactly_once_refuses_to_run_without_checkpoints(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=10)
    worker = scenario.start_worker(interval="0")
    assert worker.wait(60) == 1, worker.log_tail()
    assert "--checkpoint-interval 0 disables checkpoints, which exactly-once needs" in worker.log_tail(5)


def test_at_least_once_without_checkpoints_commits_offsets_only_and_restarts_empty(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=1_000, users=20)
    scenario.feed_all_now()
    worker = scenario.start_worker(interval="0", guarantee="at-least-once")
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    assert "CHECKPOINTS ARE DISABLED" in worker.log_path.read_text()
    committed = _committed(scenario)
    assert sum(tp.offset for tp in committed) == 1_000, committed
    assert all(tp.metadata.startswith("eos1:") and tp.metadata.endswith(":-") for tp in committed), committed
    assert not list((tmp_path / "checkpoints").rglob("_manifest.json")), "a snapshot was written"

    more = make_orders(200, users=20, seed=99, start_id=1_000)
    scenario.feed_all_now(more)
    restarted = scenario.start_worker(interval="0", guarantee="at-least-once")
    scenario.wait_complete(restarted, expected=set(more))
    assert restarted.terminate() == 0, restarted.log_tail()
    assert "its state starts EMPTY" in restarted.log_path.read_text()
    first_after_restart: dict[str, int] = {}
    for _, value in scenario.outputs():
        out = json.loads(value)
        if out["last_id"] >= 1_000:
            first_after_restart.setdefault(out["user"], out["count"])
    assert first_after_restart and set(first_after_restart.values()) == {1}, first_after_restart
