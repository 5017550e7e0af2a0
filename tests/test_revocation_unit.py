"""What the loop does before partitions are revoked, on the coordinator and the loop
with an owner at a seam the loop owns (the end-to-end proof, with a newcomer taking
partitions from a real worker, is in test_scale_out.py)."""

from __future__ import annotations

from types import SimpleNamespace

from connectors.kafka_source import REVOKED, Rebalance
from connectors.transactions import DONE, Kind, Outcome
from service.checkpointing.coordinator import CheckpointCoordinator
from service.checkpointing.faults import FaultInjector
from service.monitoring.metrics import WorkerMetrics
from service.runtime.loop import ProcessingLoop
from service.runtime.task import CompletedCheckpoint

PARTITION = ("in", 0)


class Owner:
    """Commits in the loop; refuses while `refusing`, as a broker whose group moved on."""

    asynchronous = False
    closing = False
    commits_in_rebalance_callback = True

    def __init__(self) -> None:
        self.refusing = False
        self.commits = self.attempts = self.aborts = 0

    def commit(self, offsets, consumer) -> Outcome:
        self.attempts += 1
        if self.refusing:
            return Outcome(Kind.REWIND, "committing refused: the group rebalanced meanwhile", counts=False)
        self.commits += 1
        return DONE

    def abort(self, reason: str, *, counts: bool, identity_in_doubt: bool = False) -> Outcome:
        self.aborts += 1
        return Outcome(Kind.REWIND, reason, counts)


class Task:
    def __init__(self) -> None:
        self.id, self.topic, self.partition = "in-0", "in", 0
        self.state, self.others, self.sinks, self.attempted_manifest = None, [], {}, None
        self.next_offset, self.records_since_checkpoint = 0, 0
        self.completed = CompletedCheckpoint(0, 0, None)

    @property
    def changed(self) -> bool:
        return self.next_offset != self.completed.offset


class Manager:
    def __init__(self) -> None:
        self.task = Task()
        self.tasks = {PARTITION: self.task}
        self.plan = SimpleNamespace(stages=[])
        self.rewinds = 0
        self.released: list = []

    def changed(self, keys=None) -> bool:
        return any(self.tasks[k].changed for k in (keys or self.tasks) if k in self.tasks)

    def release(self, keys) -> None:
        self.released += keys
        for key in keys:
            self.tasks.pop(key, None)

    def rewind_all(self) -> None:
        self.rewinds += 1


def _loop() -> tuple[ProcessingLoop, Manager, Owner]:
    manager, owner = Manager(), Owner()
    coordinator = CheckpointCoordinator(
        manager, owner, consumer=None, job="j", worker="w", token="t", interval_s=600.0, timeout_s=60,
        min_pause_s=0.0, metrics=WorkerMetrics("j", "w"), faults=FaultInjector(""))
    monitor = SimpleNamespace(note_error=lambda message: None, publish=lambda: None)
    loop = ProcessingLoop(source=None, owner=owner, manager=manager, coordinator=coordinator, missing_input=None,
                          monitor=monitor, metrics=WorkerMetrics("j", "w"), input_topics=[], consume_batch=1,
                          state_cache_bytes=0, tolerable_failures=0, fencer=None, tick=lambda loop: None)
    return loop, manager, owner


def test_revoked_work_is_committed_in_the_callback_and_the_task_simply_closes():
    loop, manager, owner = _loop()
    manager.task.next_offset = 10  # processed, no checkpoint yet

    loop._commit_before_revoke((PARTITION,))
    loop.rebalanced([Rebalance(REVOKED, (PARTITION,))])

    assert owner.commits == 1 and manager.task.completed.offset == 10
    assert manager.released == [PARTITION]
    assert owner.aborts == 0 and manager.rewinds == 0


def test_nothing_runs_in_the_callback_for_revoked_tasks_without_uncommitted_work():
    loop, manager, owner = _loop()

    loop._commit_before_revoke((PARTITION,))
    loop.rebalanced([Rebalance(REVOKED, (PARTITION,))])

    assert owner.attempts == 0 and owner.aborts == 0 and manager.rewinds == 0


def test_a_refused_revoke_checkpoint_allows_no_other_before_the_loop_rewinds():
    """The refused checkpoint gave the transaction up, but the tasks' state still holds its
    work: a second revoke in the same consume must not snapshot it, and the loop acts on
    the first one's outcome, without aborting a second time."""
    loop, manager, owner = _loop()
    manager.task.next_offset = 10
    owner.refusing = True

    loop._commit_before_revoke((PARTITION,))
    owner.refusing = False
    loop._commit_before_revoke((PARTITION,))
    assert owner.attempts == 1

    loop.rebalanced([Rebalance(REVOKED, (PARTITION,))])
    assert manager.released == [PARTITION] and manager.rewinds == 1
    assert owner.aborts == 0
    assert loop.failures == 0  # a refusal by a rebalance does not count


def test_an_at_least_once_owner_commits_nothing_in_the_callback():
    loop, manager, owner = _loop()
    owner.commits_in_rebalance_callback = False
    manager.task.next_offset = 10

    loop._commit_before_revoke((PARTITION,))
    loop.rebalanced([Rebalance(REVOKED, (PARTITION,))])

    assert owner.attempts == 0
    assert owner.aborts == 1 and manager.rewinds == 1 and manager.released == [PARTITION]
