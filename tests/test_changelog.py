"""Checkpoints that log state changes instead of snapshotting (`--snapshot-interval`),
proven as the default mode is: real worker processes of the running-sum job (two
stages: the keyed one logs its changes), SIGKILLed at every phase of a checkpoint and
at random moments, the output checked by the independent oracle."""

from __future__ import annotations

import re
import signal

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from connectors.changelog import changelog_topic
from service.checkpointing.faults import CHANGELOG_PHASES
from tests.harness.savepoints import committed_offsets
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import wait_for
from tests.harness.workload import make_orders, produce_orders
from tests.test_running_sum_eos import _random_kills

pytestmark = pytest.mark.kafka

KEYED_STAGE = "by-user"


def _changelog_run(bootstrap, tmp_path, snapshot_interval: str = "30s", **kwargs) -> RunningSum:
    return RunningSum(bootstrap, tmp_path, spec_overrides={
        "interval": "200ms", "extra_args": ["--snapshot-interval", snapshot_interval]}, **kwargs)


def _replays(log: str) -> list[int]:
    """How many checkpoints each restore replayed from the changelog."""
    return [int(n) for n in re.findall(r"replayed (\d+) checkpoints \(\d+ changes\) of changelog", log)]


def test_a_worker_killed_between_snapshots_is_rebuilt_from_its_changelog(bootstrap, tmp_path):
    scenario = _changelog_run(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    scenario.start_feeding()
    doomed = scenario.start_worker()
    topic = f"{scenario.group}-{KEYED_STAGE}-repartition"

    def checkpoints_past_the_snapshot() -> bool:
        committed = committed_offsets(bootstrap, scenario.group, topic, scenario.partitions)
        ids = [int(m.split(":")[1]) for o, m in committed.values() if o >= 0 and m]
        return len(ids) == scenario.partitions and min(ids) >= 8

    wait_for(checkpoints_past_the_snapshot, 90, 0.2, "checkpoints of the keyed stage after its first snapshot")
    doomed.kill()
    survivor = scenario.survivor_finishes()
    assert any(n > 0 for n in _replays(survivor.log_text())), \
        f"the survivor replayed no changelog:\n{survivor.log_tail()}"


@pytest.mark.parametrize("phase", [*CHANGELOG_PHASES, "after_commit", "after_persist", "after_barrier"])
def test_kill_at_checkpoint_phase_with_a_changelog(bootstrap, tmp_path, phase):
    """A snapshot every 2 s among checkpoints every 200 ms: the 6th time a phase is
    reached may be in a checkpoint that logs or one that snapshots; both are covered
    across the phases."""
    scenario = _changelog_run(bootstrap, tmp_path, snapshot_interval="2s", records=6_000, chunk=300,
                              chunk_pause_s=0.3)
    scenario.start_feeding()
    doomed = scenario.start_worker(fault=f"{phase}@6")
    assert doomed.wait(120) == -signal.SIGKILL, f"fault {phase} did not fire:\n{doomed.log_tail()}"
    scenario.survivor_finishes()


def test_sigkill_at_random_moments_with_a_changelog(bootstrap, tmp_path):
    scenario = _changelog_run(bootstrap, tmp_path, snapshot_interval="3s", records=12_000)
    _random_kills(scenario, kills=6, seed=41)
    final = scenario.start_worker()
    scenario.wait_complete(final)
    assert final.terminate() == 0, final.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == 12_000


def _delete_changelog(scenario: RunningSum) -> str:
    """Deletes every record of the keyed stage's changelog; returns its name."""
    admin = AdminClient({"bootstrap.servers": scenario.bootstrap})
    changelog = changelog_topic(scenario.group, KEYED_STAGE)
    partitions = [TopicPartition(changelog, p) for p in range(scenario.partitions)]
    ends = {tp.partition: future.result().offset
            for tp, future in admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}).items()}
    assert all(end > 0 for end in ends.values()), ends
    for future in admin.delete_records([TopicPartition(changelog, p, end) for p, end in ends.items()]).values():
        future.result()
    return changelog


def _run_then_delete_the_changelog(scenario: RunningSum) -> str:
    scenario.start_feeding()
    first = scenario.start_worker()
    scenario.wait_fed()
    scenario.wait_complete(first)
    first.kill()
    return _delete_changelog(scenario)


def test_changelog_records_deleted_before_their_replay_stop_the_worker(bootstrap, tmp_path):
    """What a restore needs from the changelog is gone: the worker says so and stops,
    rather than continuing from a snapshot that lacks those changes."""
    scenario = _changelog_run(bootstrap, tmp_path, records=3_000, chunk=300, chunk_pause_s=0.2)
    changelog = _run_then_delete_the_changelog(scenario)
    second = scenario.start_worker()
    assert second.wait(120) != 0
    log = second.log_text()
    assert re.search(rf"changelog '{re.escape(changelog)}' partition \d+: records from offset \d+ on were deleted",
                     log), log[-3000:]


def test_with_fallback_a_lost_changelog_is_rebuilt_from_the_snapshot_and_the_input(bootstrap, tmp_path):
    """`--fallback-to-older-checkpoint`: the snapshot the changelog continued is intact,
    so the task restores it and replays its input since then without outputs."""
    scenario = _changelog_run(bootstrap, tmp_path, records=3_000, chunk=300, chunk_pause_s=0.2)
    _run_then_delete_the_changelog(scenario)
    more = make_orders(1_000, scenario.users, seed=8, start_id=3_000)
    produce_orders(bootstrap, scenario.input, more, scenario.key_by_user)
    second = scenario.start_worker(extra_args=["--snapshot-interval", "30s", "--fallback-to-older-checkpoint"])
    everything = {**scenario.orders, **more}
    scenario.wait_complete(second, expected=set(everything))
    assert second.terminate() == 0, second.log_tail()
    report = scenario.check(everything)
    assert report.ok, report.summary()
    assert "replaying offsets" in second.log_text(), second.log_tail()
