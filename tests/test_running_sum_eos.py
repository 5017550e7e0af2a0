"""Exactly-once of the running-sum job, proven by killing real worker processes.

Every test runs `eos run examples/running_sum.py` as an OS process against the real
broker and checks the committed output with the independent oracle.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from service.checkpointing.faults import PHASES, SINK_PHASES
from tests.harness.kafka import group_members
from tests.harness.savepoints import committed_offsets, start_controlled
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import WorkerProcess, kill_at_random, wait_for

pytestmark = pytest.mark.kafka


def _random_kills(scenario: RunningSum, kills: int, seed: int, machines: int = 1, **spec) -> None:
    """Kills workers 1 to 3.5 s after they got their partitions while the input is fed.
    `machines` > 1: successive workers use different state directories, as workers
    moving between machines do, so restores download from storage."""

    def start(i: int) -> WorkerProcess:
        if machines > 1:
            spec["state_dir"] = scenario.workdir / f"state-{i % machines}"
        return scenario.start_worker(**spec)

    scenario.start_feeding()
    kill_at_random(start, kills, seed, delay_s=(1.0, 3.5))
    scenario.wait_fed()


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=20_000)
    _random_kills(scenario, kills=10, seed=11)
    final = scenario.start_worker()
    scenario.wait_complete(final)
    assert final.terminate() == 0, final.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == 20_000


def test_sigkill_at_random_moments_with_s3_checkpoint_storage(bootstrap, tmp_path, s3_server):
    """The same guarantee with checkpoints in a real S3-compatible store (moto over HTTP),
    workers alternating between two state directories so that restores download."""
    scenario = RunningSum(bootstrap, tmp_path, records=10_000, storage=f"s3://{s3_server.bucket}/{tmp_path.name}",
                          spec_overrides={"env": s3_server.env()})
    _random_kills(scenario, kills=6, seed=29, machines=2)
    # The random kills may all land before the keyed stage's first checkpoint: one more
    # worker runs until every keyed task committed a snapshot, so the final one has
    # state in S3 to download.
    keeper = scenario.start_worker(state_dir=tmp_path / "state-0")
    wait_for(lambda: _keyed_state_committed(scenario), 90, 0.5, "a committed snapshot of every keyed task")
    keeper.kill()
    final = scenario.start_worker(state_dir=tmp_path / "state-new-machine")
    wait_for(lambda: "assigned" in final.log_text() or not final.alive(), 90, 0.5, "the final worker's tasks")
    scenario.wait_complete(final)
    assert final.terminate() == 0, final.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == 10_000
    log = final.log_path.read_text()
    downloads = re.findall(r"from checkpoint \d+ .*: \d+ files, 0 reused locally, ([1-9]\d*) downloaded", log)
    assert downloads, "the final worker, on a new machine, downloaded nothing from S3"


def _keyed_state_committed(scenario: RunningSum) -> bool:
    """Every task of the keyed stage has a committed offset whose metadata
    (`eos1:{checkpoint}:{snapshot}`) names a snapshot."""
    topic = f"{scenario.group}-by-user-repartition"
    committed = committed_offsets(scenario.bootstrap, scenario.group, topic, scenario.partitions)
    return all(offset >= 0 and _snapshot_named(metadata) for offset, metadata in committed.values())


def _snapshot_named(metadata: str | None) -> bool:
    parts = (metadata or "").split(":")
    return len(parts) > 2 and parts[2] != "-"


def test_oracle_catches_at_least_once_killed_past_its_last_commit(bootstrap, tmp_path):
    """The oracle's self-test: without transactions, what a killed worker output past its
    last commit is output again by its successor, and the oracle must say so. The killed
    workers commit at most once in their life (their interval is 10 minutes), so a kill
    lands past their commit by construction: each is killed once the output holds an order
    beyond the group's committed input offsets, which its successor must replay."""
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    scenario.start_feeding()
    for _ in range(3):
        doomed = scenario.start_worker(guarantee="at-least-once", interval="10m")
        wait_for(lambda: _output_past_the_committed_input(scenario) or not doomed.alive(), 90, 0.5,
                 lambda: f"output past the group's committed input offsets\n{doomed.log_tail()}")
        assert doomed.alive(), f"worker died on its own:\n{doomed.log_tail()}"
        doomed.kill()
    final = scenario.start_worker(guarantee="at-least-once")
    scenario.wait_fed()
    scenario.wait_complete(final)
    assert final.terminate() == 0, final.log_tail()
    report = scenario.check()
    assert not report.ok, "the oracle accepted an at-least-once run with kills: it is too weak"
    assert report.duplicates > 0 or report.repeated_ids, report.summary()


def _output_past_the_committed_input(scenario: RunningSum) -> bool:
    """More orders have an output than the committed input offsets cover: one of them
    lies past its partition's committed offset."""
    committed = committed_offsets(scenario.bootstrap, scenario.group, scenario.input, scenario.partitions)
    return len(scenario.ids_seen()) > sum(max(offset, 0) for offset, _ in committed.values())


@pytest.mark.parametrize("phase", [p for p in PHASES if p not in SINK_PHASES])
def test_kill_at_checkpoint_phase(bootstrap, tmp_path, phase):
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    scenario.start_feeding()
    doomed = scenario.start_worker(fault=f"{phase}@3")
    assert doomed.wait(120) == -signal.SIGKILL, f"fault {phase} did not fire:\n{doomed.log_tail()}"
    assert f"killing this worker at {phase}" in doomed.log_tail(), doomed.log_tail()
    scenario.survivor_finishes()


def test_frozen_worker_is_fenced_by_its_replacement(bootstrap, tmp_path):
    """Frozen past its session timeout while a replacement of its slot takes over: woken,
    it commits nothing and stops (exit 3), naming the process that holds its slot."""
    scenario = RunningSum(bootstrap, tmp_path, records=8_000, chunk=400, chunk_pause_s=0.4)
    scenario.start_feeding()
    zombie = scenario.start_worker()
    wait_for(lambda: "assigned" in zombie.log_text(), 60, 0.2, "the first worker to get partitions")
    zombie.signal(signal.SIGSTOP)
    replacement = scenario.start_worker()
    wait_for(lambda: "assigned" in replacement.log_text() or not replacement.alive(), 60, 0.2,
             "the replacement to take the partitions over")
    zombie.signal(signal.SIGCONT)
    assert zombie.wait(60) == 3, f"the zombie was not fenced:\n{zombie.log_tail()}"
    assert "held by a newer process" in zombie.log_text(), zombie.log_text()
    scenario.wait_fed()
    scenario.wait_complete(replacement)
    assert replacement.terminate() == 0, replacement.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def test_graceful_stop_and_restart_equals_an_uninterrupted_run(bootstrap, tmp_path):
    # Keyed by user, each user's orders sit in one partition in order, so the output
    # per user is deterministic and two runs can be compared record for record.
    interrupted = RunningSum(bootstrap, tmp_path / "interrupted", records=5_000, key_by_user=True)
    interrupted.start_feeding()
    for _ in range(3):
        worker = interrupted.start_worker()
        time.sleep(2.5)
        assert worker.terminate() == 0, worker.log_tail()
    worker = interrupted.start_worker()
    interrupted.wait_fed()
    interrupted.wait_complete(worker)
    assert worker.terminate() == 0

    uninterrupted = RunningSum(bootstrap, tmp_path / "uninterrupted", records=5_000, key_by_user=True)
    uninterrupted.feed_all_now()
    worker = uninterrupted.start_worker()
    uninterrupted.wait_complete(worker)
    assert worker.terminate() == 0

    def per_user(outputs):
        result: dict = {}
        for key, value in outputs:
            result.setdefault(key, []).append(value)
        return result

    assert per_user(interrupted.outputs()) == per_user(uninterrupted.outputs())


def test_a_final_checkpoint_refused_after_a_rebalance_stops_cleanly_and_loses_nothing(bootstrap, tmp_path):
    """SIGTERM, and the group moves on while the final checkpoint is written (here: the
    worker froze past its session timeout): the commit is refused, as KIP-447 means it to
    be. Nothing is lost by that, since the next owner redoes the work from the last
    checkpoint, so the worker stops as asked (exit 0), saying so."""
    scenario = RunningSum(bootstrap, tmp_path, records=2_000)
    scenario.feed_all_now()
    # No checkpoint before the final one: the first to reach the phase is the final one.
    controlled = start_controlled(scenario, fault="after_persist@1:stop", interval="600s",
                                  membership=None).wait_ready()
    worker = controlled.process
    wait_for(lambda: controlled.status().get("records_in", 0) >= scenario.records, 120, 0.2,
             lambda: f"the worker to read every record\n{worker.log_tail()}")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "fault injection: freezing" in worker.log_text() or not worker.alive(), 60, 0.2,
             "the final checkpoint to freeze")
    wait_for(lambda: "w1" not in group_members(bootstrap, scenario.group), 60, 0.5,
             "the frozen worker to drop out of the group")
    worker.signal(signal.SIGCONT)
    assert worker.wait(120) == 0, worker.log_text()
    assert re.search(r"the final checkpoint \d+ was not committed: .*refused", worker.log_text()), worker.log_text()

    worker = scenario.start_worker()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == scenario.records, report.summary()

