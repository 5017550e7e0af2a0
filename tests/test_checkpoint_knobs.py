"""The checkpoint knobs mean what Flink's mean, checked on the coordinator (and the loop,
which counts failures) with a clock the test controls (the end-to-end behaviour is in
the storage fault and chaos tests)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import service.checkpointing.coordinator as checkpoint_module
import statestore.snapshots as snapshots_module
from connectors.transactions import DONE, Kind, Outcome
from eos.errors import CheckpointsFailingError, ConfigurationError
from service.checkpointing.coordinator import CheckpointCoordinator
from service.checkpointing.faults import FaultInjector
from service.monitoring.metrics import WorkerMetrics
from service.runtime.config import OFFSET_COMMIT_INTERVAL_S, WorkerConfig
from service.runtime.loop import ProcessingLoop
from service.runtime.task import CompletedCheckpoint


class Clock:
    def __init__(self) -> None:
        self.now = 1024.0  # binary fractions below: exact sums, no rounding at the boundaries

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


class Owner:
    """Takes `commit_s` of the clock's time per commit; fails while `failing`. It commits
    in the loop (no pool), so these tests see whole checkpoints on the clock."""

    asynchronous = False
    closing = False

    def __init__(self, clock: Clock, commit_s: float) -> None:
        self.clock, self.commit_s = clock, commit_s
        self.failing = False
        self.commits = 0

    def commit(self, offsets, consumer) -> Outcome:
        self.clock.now += self.commit_s
        if self.failing:
            return Outcome(Kind.REWIND, "commit_transaction failed: broker says no", counts=True)
        self.commits += 1
        self.committed = offsets
        return DONE


class Manager:
    def __init__(self) -> None:
        self.rewinds = 0
        self.task = SimpleNamespace(id="in-0", topic="in", partition=0, state=None, next_offset=0, others=[],
                                    completed=CompletedCheckpoint(0, None, None), attempted_manifest=None,
                                    records_since_checkpoint=0, changed=False, sinks={},
                                    checkpoint_began=lambda: None)
        self.tasks = {("in", 0): self.task}
        self.plan = SimpleNamespace(stages=[])

    def touch(self) -> None:
        """Records arrived since the last checkpoint."""
        self.task.changed = True
        self.task.next_offset += 10

    def rewind_all(self) -> None:
        self.rewinds += 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(checkpoint_module, "time", clock)
    monkeypatch.setattr(snapshots_module, "time", clock)  # the checkpoint deadline's clock
    return clock


def _coordinator(clock: Clock, *, interval_s: float = 1.0, min_pause_s: float = 0.0, commit_s: float = 0.0,
) -> tuple[CheckpointCoordinator, Manager, Owner]:
    manager, owner = Manager(), Owner(clock, commit_s)
    coordinator = CheckpointCoordinator(
        manager, owner, consumer=None, job="j", worker="w", token="t", interval_s=interval_s,
        timeout_s=60, min_pause_s=min_pause_s, metrics=WorkerMetrics("j", "w"), faults=FaultInjector(""))
    return coordinator, manager, owner


def _loop(coordinator: CheckpointCoordinator, manager: Manager, tolerable_failures: int) -> ProcessingLoop:
    return ProcessingLoop(source=None, owner=coordinator.owner, manager=manager, coordinator=coordinator,
                          missing_input=None,
                          monitor=SimpleNamespace(note_error=lambda message: None), metrics=WorkerMetrics("j", "w"),
                          input_topics=[], consume_batch=1, state_cache_bytes=0,
                          tolerable_failures=tolerable_failures, fencer=None, tick=lambda loop: None)


def _at(clock: Clock, coordinator: CheckpointCoordinator, start: float, seconds: float) -> bool:
    clock.now = start + seconds
    return coordinator.due()


def test_interval_runs_from_the_start_of_one_checkpoint_to_the_start_of_the_next(clock):
    coordinator, manager, _ = _coordinator(clock, interval_s=1.0, commit_s=0.5)
    start = clock.now
    manager.touch()
    assert coordinator.trigger().error is None  # takes 0.5 s
    assert not _at(clock, coordinator, start, 0.875)
    assert _at(clock, coordinator, start, 1.0)


def test_min_pause_runs_from_the_end_of_one_checkpoint_to_the_start_of_the_next(clock):
    coordinator, manager, _ = _coordinator(clock, interval_s=1.0, min_pause_s=0.75, commit_s=0.5)
    start = clock.now
    manager.touch()
    coordinator.trigger()  # ends at +0.5
    assert not _at(clock, coordinator, start, 1.125)
    assert _at(clock, coordinator, start, 1.25)


def test_a_due_check_with_nothing_to_snapshot_does_not_restart_the_interval(clock):
    """Records that arrive after an idle check (a worker just assigned its partitions,
    a stage waiting for its upstream's commit) are checkpointed as soon as they are
    processed, not a whole interval later: the latency of the first outputs after a
    failover, and of every output of a trickling input."""
    coordinator, manager, _ = _coordinator(clock, interval_s=1.0)
    start = clock.now
    assert _at(clock, coordinator, start, 1.0)
    assert coordinator.begin() is None  # nothing changed yet
    manager.touch()
    assert _at(clock, coordinator, start, 1.25)
    assert coordinator.trigger().error is None
    assert not _at(clock, coordinator, start, 2.0)  # a checkpoint that ran restarts it
    assert _at(clock, coordinator, start, 2.25)


def test_failures_in_a_row_beyond_the_tolerated_stop_the_worker_and_a_success_resets_the_count(clock):
    coordinator, manager, owner = _coordinator(clock)
    loop = _loop(coordinator, manager, tolerable_failures=1)
    owner.failing = True
    manager.touch()
    assert "broker says no" in loop.checkpoint("interval").error
    assert (manager.rewinds, loop.failures) == (1, 1)
    owner.failing = False
    assert loop.checkpoint("interval").error is None
    assert loop.failures == 0
    owner.failing = True
    manager.touch()
    loop.checkpoint("interval")
    manager.touch()
    with pytest.raises(CheckpointsFailingError, match="2 consecutive checkpoints failed, more than the 1 tolerated"):
        loop.checkpoint("interval")


def test_a_checkpoint_interrupted_by_a_rebalance_rewinds_without_counting(clock):
    coordinator, manager, owner = _coordinator(clock)
    owner.commit = lambda offsets, consumer: Outcome(Kind.REWIND, "the group rebalanced meanwhile")
    loop = _loop(coordinator, manager, tolerable_failures=0)
    manager.touch()
    assert "rebalanced" in loop.checkpoint("interval").error
    assert (manager.rewinds, loop.failures) == (1, 0)


def test_a_failed_checkpoints_id_is_never_reused(clock):
    coordinator, manager, owner = _coordinator(clock)
    owner.failing = True
    manager.touch()
    failed = coordinator.trigger()
    owner.failing = False
    assert coordinator.trigger().checkpoint_id == failed.checkpoint_id + 1


def test_without_checkpoints_offsets_alone_are_committed_periodically(clock):
    coordinator, manager, owner = _coordinator(clock, interval_s=0)
    start = clock.now
    manager.touch()
    assert not _at(clock, coordinator, start, OFFSET_COMMIT_INTERVAL_S - 0.1)
    assert _at(clock, coordinator, start, OFFSET_COMMIT_INTERVAL_S)
    assert coordinator.trigger().error is None and owner.commits == 1


def test_without_checkpoints_a_stateful_task_commits_no_snapshot_even_one_it_was_restored_from(clock):
    """Restored from a snapshot of an earlier run with checkpoints, then run without:
    its offsets move on without state, so they must name none (a restart then starts
    the state empty, loudly), never the old snapshot, which belongs to older offsets."""
    coordinator, manager, owner = _coordinator(clock, interval_s=0)
    old = SimpleNamespace(snapshot="chk-0000000003-old", changelog_offset=None, state_keys={})
    manager.task.state = SimpleNamespace()
    manager.task.completed = CompletedCheckpoint(3, 0, old)
    manager.touch()
    clock.now += OFFSET_COMMIT_INTERVAL_S
    assert coordinator.trigger().error is None
    assert [tp.metadata for tp in owner.committed] == ["eos1:4:-"]
    assert manager.task.completed.manifest is None


@pytest.mark.parametrize("changes,message", [
    ({"checkpoint_interval_s": 0}, "exactly-once needs"),
    ({"checkpoint_mode": "sometimes"}, "--checkpoint-mode must be incremental or full"),
    ({"checkpoint_timeout_s": 0}, "--checkpoint-timeout must be positive"),
    ({"tolerable_failures": -1}, "--tolerable-failures must be 0 or more"),
    ({"snapshot_interval_s": -1}, "--snapshot-interval must be 0"),
    ({"snapshot_interval_s": 30, "processing_guarantee": "at-least-once"}, "only exactly-once has"),
])
def test_impossible_knobs_are_refused(tmp_path, changes, message):
    config = WorkerConfig(job_file=tmp_path / "job.py", bootstrap_servers="x", state_dir=tmp_path,
                          checkpoint_storage=f"file://{tmp_path}", **changes)
    with pytest.raises(ConfigurationError, match=message):
        config.validate()
