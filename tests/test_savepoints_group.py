"""Savepoints of a whole group on a real broker: two workers stopped together, a
savepoint refused when not every worker is named, and a triggered savepoint that lets
the job run on and forks it into a new group. The oracle checks every output."""

from __future__ import annotations

import json
import time

import pytest

from service.savepoints.resume import open_savepoint
from tests.harness.kafka import create_topics, read_all, unique_name
from tests.harness.oracle import check_running_sum
from tests.harness.savepoints import (
    ControlledWorker,
    eos,
    savepoint,
    start_controlled,
    stop_with_savepoint,
    wait_settled,
)
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _two_workers_sharing_the_work(scenario: RunningSum) -> list[ControlledWorker]:
    """Both workers join before any input arrives, so the group settles without a
    checkpoint racing its rebalances (not what these tests are about)."""
    workers = [start_controlled(scenario, worker_id=w).wait_ready() for w in ("w1", "w2")]
    wait_settled(workers, 90)
    return workers


def test_stop_with_savepoint_of_two_workers_covers_every_partition_and_resumes(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=8_000)
    before = {i: o for i, o in scenario.orders.items() if i < 4_000}
    after = {i: o for i, o in scenario.orders.items() if i >= 4_000}
    workers = _two_workers_sharing_the_work(scenario)
    scenario.feed_all_now(before)
    wait_for(lambda: len(scenario.ids_seen()) >= 1_000, 90, 0.5, "some output")

    location = stop_with_savepoint(workers, tmp_path / "savepoints")

    manifest, _ = open_savepoint(location)
    assert manifest.workers == ("w1", "w2")
    assert {p.worker for p in manifest.positions} == {"w1", "w2"}
    assert len(manifest.positions) == 8  # 4 input and 4 repartition partitions
    resumed = start_controlled(scenario, extra_args=["--from-savepoint", location])
    scenario.feed_all_now(after)
    scenario.wait_complete(resumed.process)
    assert resumed.process.terminate() == 0, resumed.process.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def test_a_savepoint_naming_only_some_workers_is_refused_and_the_job_runs_on(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=4_000)
    workers = _two_workers_sharing_the_work(scenario)
    scenario.start_feeding()

    result = savepoint("stop", workers[:1], tmp_path / "savepoints")

    assert result.returncode == 1, result.stdout
    assert "hold no task for partitions" in result.stderr and "name every worker" in result.stderr, result.stderr
    assert all(w.process.alive() for w in workers)
    scenario.wait_fed()
    scenario.wait_complete(None)
    for worker in workers:
        assert worker.process.terminate() == 0, worker.process.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
    assert not (tmp_path / "savepoints").exists() or not any((tmp_path / "savepoints").iterdir())


def test_a_triggered_savepoint_lets_the_job_run_on_and_forks_it_into_a_new_group(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=8_000)
    before = {i: o for i, o in scenario.orders.items() if i < 4_000}
    after = {i: o for i, o in scenario.orders.items() if i >= 4_000}
    scenario.feed_all_now(before)
    original = start_controlled(scenario).wait_ready()
    wait_for(lambda: len(scenario.ids_seen()) >= 1_500, 90, 0.5, "some output")

    result = savepoint("trigger", [original], tmp_path / "savepoints")
    assert result.returncode == 0, result.stderr
    location = result.stdout.strip()
    time.sleep(1)
    assert original.process.alive(), original.process.log_tail()
    scenario.feed_all_now(after)
    scenario.wait_complete(original.process)
    assert original.process.terminate() == 0
    report = scenario.check()
    assert report.ok, report.summary()

    fork_output = unique_name("forked-totals")
    create_topics(bootstrap, [fork_output], 4)
    fork = scenario.start_worker(group=unique_name("forked"), worker_id="fork",
                                 params={"input": scenario.input, "output": fork_output},
                                 extra_args=["--from-savepoint", location])
    manifest, _ = open_savepoint(location)
    cut = {p.partition: p.offset or 0 for p in manifest.positions if p.topic == scenario.input}
    before_cut = {json.loads(value)["id"] for partition, offset, _, value in read_all(
        bootstrap, scenario.input, with_meta=True) if offset < cut[partition]}
    after_cut = set(scenario.orders) - before_cut

    def forked_everything() -> bool:
        assert fork.alive(), fork.log_tail()
        return after_cut <= {json.loads(v)["last_id"] for _, v in read_all(bootstrap, fork_output)}

    wait_for(forked_everything, 120, 1.0, "the fork to process everything after the savepoint")
    assert fork.terminate() == 0, fork.log_tail()
    history = [(k, v) for k, v in scenario.outputs() if json.loads(v)["last_id"] in before_cut]
    forked = check_running_sum(scenario.orders, history + read_all(bootstrap, fork_output))
    assert forked.ok, forked.summary()
    assert eos("savepoint", "list", str(tmp_path / "savepoints")).stdout.count(" usable ") == 1
