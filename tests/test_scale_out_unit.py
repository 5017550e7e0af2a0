"""Scale-out rules that need no broker: liveness settings, group member names, which
workers count as departed, partition-count checks of restored state."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.kafka_waits import KafkaWaits
from eos.errors import ConfigurationError, PartitionCountChangedError, ProducerFencedError
from service.checkpointing.faults import FaultInjector
from service.checkpointing.recovery import _check_partition_count
from service.membership.group import DepartedWorkerFencer, SlotGuard, worker_of_member
from service.runtime.config import WorkerConfig, default_transaction_timeout_s
from statestore.manifest import Manifest


def _config(**overrides) -> WorkerConfig:
    values = dict(job_file=Path("job.py"), bootstrap_servers="localhost:9092", state_dir=Path("/tmp/s"),
                  checkpoint_storage="file:///tmp/c", worker_id="w1")
    values.update(overrides)
    return WorkerConfig(**values)


def test_default_liveness_settings_are_consistent():
    config = _config(transaction_timeout_s=default_transaction_timeout_s(20.0, 1.0))
    config.validate()
    assert config.session_timeout_ms == 6_000 and config.transaction_timeout_s == 30.0


def test_transaction_timeout_must_outlast_a_checkpoint_interval_and_timeout():
    with pytest.raises(ConfigurationError, match="transaction timeout"):
        _config(checkpoint_timeout_s=20.0, checkpoint_interval_s=10.0, transaction_timeout_s=30.0).validate()


def test_max_poll_interval_must_cover_a_checkpoint_and_a_rewind():
    with pytest.raises(ConfigurationError, match="--max-poll-interval"):
        _config(checkpoint_timeout_s=60.0, transaction_timeout_s=120.0, max_poll_interval_ms=100_000).validate()


def test_transaction_timeout_follows_a_longer_checkpoint_timeout():
    assert default_transaction_timeout_s(60.0, 1.0) == 90.0
    assert default_transaction_timeout_s(20.0, 30.0) == 55.0


@pytest.mark.parametrize("instance,client,worker", [
    ("w7", "job-w7", "w7"),            # static member
    (None, "job-w7", "w7"),            # dynamic member: the worker's client id
    (None, "job-a-b", "a-b"),
    (None, "rdkafka", None),           # a foreign consumer in the group
    (None, "job-", None),
])
def test_worker_of_a_group_member(instance, client, worker):
    assert worker_of_member("job", instance, client) == worker


class _ScriptedFencer(DepartedWorkerFencer):
    """The membership answers are scripted; fencing is recorded instead of done."""

    def __init__(self, answers: list[set[str] | None]) -> None:
        self.group, self.own_worker, self.timeout_s = "job", "w1", 1.0
        self._previous = None
        self._answers = answers
        self.fenced: list[str] = []

    def live_workers(self):
        return self._answers.pop(0)

    def _fence(self, worker: str) -> None:
        self.fenced.append(worker)


def test_only_workers_seen_before_and_gone_now_are_fenced():
    fencer = _ScriptedFencer([{"w1", "w2", "w3"}, {"w1", "w3"}, None, {"w1", "w4"}, {"w1", "w4"}])
    assert fencer.after_rebalance() == []            # first look: nothing known to have left
    assert fencer.after_rebalance() == ["w2"]
    assert fencer.after_rebalance() == []            # the group could not be described
    assert fencer.after_rebalance() == ["w3"]        # compared with the last successful look
    assert fencer.after_rebalance() == []
    assert fencer.fenced == ["w2", "w3"]


def test_a_worker_never_fences_itself():
    fencer = _ScriptedFencer([{"w1", "w2"}, {"w2"}])
    fencer.after_rebalance()
    assert fencer.after_rebalance() == []


class _ScriptedView:
    """The group's answers, one per look; None: it could not be described."""

    def __init__(self, answers: list[list[tuple[str, str]] | None]) -> None:
        self._answers = answers

    def members(self):
        return self._answers.pop(0)


def _guard(answers, own: set[str], superseded: bool = False) -> tuple[SlotGuard, list[float]]:
    slept: list[float] = []
    guard = SlotGuard(_ScriptedView(answers), "w1", lambda: own, lambda: superseded, KafkaWaits(),
                      sleep=slept.append)
    return guard, slept


def test_a_worker_replaced_while_away_may_not_take_its_slot_back():
    guard, _ = _guard([[("w1", "m-new"), ("w2", "m-2")]], own={"m-old"})
    with pytest.raises(ProducerFencedError, match="worker slot w1 was taken over by another instance"):
        guard.confirm()


def test_a_worker_with_a_newer_process_of_its_slot_stops_even_while_the_group_lists_it():
    """Woken before its session expired: the group lists it beside its replacement."""
    guard, _ = _guard([[("w1", "m-old"), ("w1", "m-new")]], own={"m-old"}, superseded=True)
    with pytest.raises(ProducerFencedError, match="newer process started in the same state directory"):
        guard.confirm()


@pytest.mark.parametrize("members", [
    [("w1", "m-old"), ("w2", "m-2")],                   # still listed, and the slot's latest process
    [("w1", "m-old"), ("w1", "m-new")],                 # the newer of two listed (the older yields)
    [("w2", "m-2")],                                     # dropped, and nobody took the slot: fenced by a peer
    [],
])
def test_a_worker_whose_slot_nobody_else_holds_may_initialise_again(members):
    guard, _ = _guard([members], own={"m-old"})
    guard.confirm()


def test_the_guard_waits_for_the_group_to_answer():
    guard, slept = _guard([None, None, [("w1", "m-new")]], own={"m-old"})
    with pytest.raises(ProducerFencedError):
        guard.confirm()
    assert slept == [0.5, 1.0]


class _Task:
    id, topic = "t-0", "t"

    def __init__(self, partitions):
        self.topic_partitions = partitions


def _manifest(partitions) -> Manifest:
    return Manifest(job="j", task="t-0", topic="t", partition=0, checkpoint_id=3, snapshot="chk-3",
                    worker="w1", created_at=0.0, source_offset=10, column_families=(), files=(),
                    uploaded_bytes=0, topic_partitions=partitions)


def test_restoring_state_under_another_partition_count_is_refused():
    with pytest.raises(PartitionCountChangedError, match="has 8 partitions.*when it had 4"):
        _check_partition_count(_manifest(4), _Task(8))
    _check_partition_count(_manifest(4), _Task(4))
    _check_partition_count(_manifest(None), _Task(8))  # recorded before counts were kept


def test_a_fault_can_freeze_instead_of_kill():
    assert FaultInjector("after_persist@2:stop").action == "stop"
    with pytest.raises(ValueError, match="kill or stop"):
        FaultInjector("after_persist@2:pause")


def test_manifests_written_before_partition_counts_were_recorded_still_load():
    import dataclasses

    from statestore.sealed_json import seal

    body = dataclasses.asdict(_manifest(4))
    del body["topic_partitions"]
    loaded = Manifest.from_bytes(seal(body), "old")
    assert loaded.topic_partitions is None and loaded.checkpoint_id == 3
    assert Manifest.from_bytes(_manifest(4).to_bytes(), "new").topic_partitions == 4
