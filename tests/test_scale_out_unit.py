"""Scale-out rules that need no broker: liveness settings, group member names, which
workers count as departed, who holds a worker slot, partition-count checks of restored
state."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.group import Member, client_id, member_identity, new_stamp
from eos.errors import ConfigurationError, DuplicateWorkerError, PartitionCountChangedError
from service.checkpointing.faults import FaultInjector
from service.checkpointing.recovery import _check_partition_count
from service.membership.departed import DepartedWorkerFencer
from service.membership.incarnation import Incarnation
from service.membership.register import SlotRegister
from service.membership.slot import SlotGuard
from service.runtime.config import WorkerConfig, default_transaction_timeout_s
from statestore.manifest import Manifest
from statestore.storage.base import StorageError
from statestore.storage.file import FileStorage


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


@pytest.mark.parametrize("instance,client,identity", [
    ("w7", "job-w7#0001-aa", ("w7", "0001-aa")),   # static member: its instance id is its worker id
    (None, "job-w7#0001-aa", ("w7", "0001-aa")),   # dynamic member: the worker's client id
    (None, "job-a-b#0001-aa", ("a-b", "0001-aa")),
    (None, "job-w7", ("w7", None)),                # a worker that carries no incarnation stamp
    (None, "rdkafka", None),                       # a foreign consumer in the group
    (None, "job-", None),
])
def test_the_worker_and_incarnation_of_a_group_member(instance, client, identity):
    assert member_identity("job", instance, client) == identity


def test_a_client_id_carries_the_worker_and_its_incarnation():
    stamp = new_stamp(1_700_000_000.0)
    assert member_identity("job", None, client_id("job", "w1", stamp)) == ("w1", stamp)


def test_later_incarnations_sort_after_earlier_ones():
    assert new_stamp(1_700_000_000.0) < new_stamp(1_700_000_000.001) < new_stamp(1_800_000_000.0)


class _ScriptedView:
    """The group's answers, one per look (the last repeats); None: not described."""

    group = "job"

    def __init__(self, answers: list[list[Member] | None]) -> None:
        self._answers = answers

    def members(self) -> list[Member] | None:
        return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]


def _member(worker: str, stamp: str | None, member_id: str = "m") -> Member:
    return Member(worker, stamp, member_id, f"job-{worker}#{stamp}", "/10.0.0.7")


class _FakeProducer:
    def __init__(self, fenced: list[str], config: dict) -> None:
        self.fenced, self.tid = fenced, config["transactional.id"]

    def init_transactions(self, timeout: float) -> None:
        self.fenced.append(self.tid)

    def flush(self, timeout: float) -> int:
        return 0


def _fencer(answers) -> tuple[DepartedWorkerFencer, _ScriptedView, list[str]]:
    fenced: list[str] = []
    view = _ScriptedView(answers)
    fencer = DepartedWorkerFencer(view.group, "w1", {}, 1.0, producer_factory=lambda config: _FakeProducer(fenced, config))
    return fencer, view, fenced


def test_only_workers_seen_before_and_gone_now_are_fenced():
    looks = [[_member(w, "1") for w in ws] if ws is not None else None
             for ws in (["w1", "w2", "w3"], ["w1", "w3"], None, ["w1", "w4"], ["w1", "w4"])]
    fencer, view, fenced = _fencer(looks)
    assert fencer.after_rebalance(view.members()) == []            # first look: nothing known to have left
    assert fencer.after_rebalance(view.members()) == ["w2"]
    assert fencer.after_rebalance(view.members()) == []            # the group could not be described
    assert fencer.after_rebalance(view.members()) == ["w3"]        # compared with the last successful look
    assert fencer.after_rebalance(view.members()) == []
    assert fenced == ["job-w2", "job-w2#1", "job-w3", "job-w3#1"]  # every id of each departed slot's pool


def test_a_worker_never_fences_itself():
    fencer, view, fenced = _fencer([[_member("w1", "1"), _member("w2", "1")], [_member("w2", "1")]])
    fencer.after_rebalance(view.members())
    assert fencer.after_rebalance(view.members()) == [] and fenced == []


def test_a_slot_whose_new_process_is_listed_is_not_fenced():
    fencer, view, fenced = _fencer([[_member("w1", "1"), _member("w2", "1")], [_member("w1", "1"), _member("w2", "2")]])
    fencer.after_rebalance(view.members())
    assert fencer.after_rebalance(view.members()) == [] and fenced == []


OWN = "0000000002000-aaaaaa"
OLDER = "0000000001000-bbbbbb"
NEWER = "0000000003000-cccccc"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _register(storage_dir: Path, stamp: str = OWN, **kwargs) -> SlotRegister:
    return SlotRegister(FileStorage(storage_dir), "job", "w1", stamp, **kwargs)


def _guard(answers, storage_dir: Path, *, static: bool = False) -> tuple[SlotGuard, _Clock]:
    clock = _Clock()
    return SlotGuard(_ScriptedView(answers), _register(storage_dir), "w1", OWN, static=static,
                     sleep=clock.sleep, clock=lambda: clock.now), clock


def test_a_worker_replaced_while_away_learns_who_holds_its_slot(tmp_path):
    guard, _ = _guard([[]], tmp_path)
    guard.claim(9.0, known_dead=lambda stamp: False)
    assert guard.holder() is None
    _register(tmp_path, OLDER).enter()  # a later start whose machine's clock is behind
    holder = guard.holder()
    assert holder is not None and "newer process" in holder and f"incarnation {OLDER}" in holder
    assert guard.replaced_by == OLDER


def test_a_static_members_entry_granted_back_to_it_in_the_group_does_not_make_it_the_newest(tmp_path):
    """The group lists the slot's static entry under this process's own client id and
    member: what a frozen process that woke and rejoined sees. The register tells."""
    guard, _ = _guard([[_member("w1", OWN, "m-own")]], tmp_path, static=True)
    guard.claim(3.0, known_dead=lambda stamp: False)
    _register(tmp_path, NEWER).enter()
    assert guard.holder() is not None and guard.replaced_by == NEWER


def test_a_process_that_never_claimed_its_slot_is_never_told_it_was_replaced(tmp_path):
    _register(tmp_path, NEWER).enter()
    guard, _ = _guard([[]], tmp_path)
    assert guard.holder() is None


def test_the_register_keeps_only_the_newest_entry_and_numbers_entries_in_order(tmp_path):
    entries = [_register(tmp_path, stamp).enter() for stamp in (NEWER, OWN, OLDER)]
    assert [e.sequence for e in entries] == [1, 2, 3]
    assert FileStorage(tmp_path).list("job/workers/w1") == [f"job/workers/w1/{entries[-1].name}"]
    assert FileStorage(tmp_path).list("job/workers/w10") == []


def test_the_register_waits_out_unreachable_storage(tmp_path):
    clock = _Clock()
    register = _register(tmp_path, sleep=clock.sleep)
    register.enter()
    unreachable = iter([True, True, False])
    real_list = register.storage.list

    def flaky_list(prefix: str) -> list[str]:
        if next(unreachable):
            raise StorageError("connection refused")
        return real_list(prefix)

    register.storage.list = flaky_list
    assert register.newer() is None
    assert clock.slept == [0.5, 1.0]


def test_a_claim_waits_for_the_group_to_answer(tmp_path):
    guard, clock = _guard([None, None, []], tmp_path)
    guard.claim(9.0, known_dead=lambda stamp: False)
    assert clock.slept == [0.5, 1.0]


def test_a_claim_waits_for_a_predecessor_to_leave_the_group(tmp_path):
    guard, clock = _guard([[_member("w1", OLDER)], [_member("w1", OLDER)], [_member("w1", OWN)]], tmp_path)
    guard.claim(9.0, known_dead=lambda stamp: False)
    assert clock.slept == [0.5, 0.5]


def test_a_claim_need_not_wait_for_a_predecessor_this_machine_knows_is_dead(tmp_path):
    guard, clock = _guard([[_member("w1", OLDER)]], tmp_path)
    guard.claim(9.0, known_dead=lambda stamp: stamp == OLDER)
    assert clock.slept == []


def test_a_live_process_with_the_same_worker_id_stops_the_newcomer_naming_both(tmp_path):
    guard, clock = _guard([[_member("w1", OLDER, "m-live"), _member("w2", OLDER)]], tmp_path)
    with pytest.raises(DuplicateWorkerError) as refused:
        guard.claim(3.0, known_dead=lambda stamp: False)
    message = str(refused.value)
    assert "worker id w1 is already in use" in message and "m-live" in message and OWN in message
    assert clock.now >= 3.0
    assert FileStorage(tmp_path).list("job/workers/w1") == []  # refused: never entered


def test_a_static_member_joins_at_once_unless_its_predecessor_here_was_replaced(tmp_path):
    guard, clock = _guard([[_member("w1", OLDER, "m-1")]], tmp_path, static=True)
    guard.claim(3.0, known_dead=lambda stamp: False)
    assert clock.slept == []
    guard, clock = _guard([[_member("w1", OLDER, "m-1")]], tmp_path / "other", static=True)
    with pytest.raises(DuplicateWorkerError):
        guard.claim(3.0, known_dead=lambda stamp: True, predecessor_replaced=True)  # stale client id: no proof


def test_an_incarnation_that_gets_the_slot_lock_knows_its_predecessor_ended(tmp_path):
    first = Incarnation(tmp_path, "job", "w1", OLDER)
    first.begin()
    second = Incarnation(tmp_path, "job", "w1", OWN)
    second.begin()
    assert not second.known_dead(OLDER)  # the first still holds the lock: alive or frozen
    second.end(clean=False)
    first.end(clean=False)               # an older process leaves the newer one's record alone
    third = Incarnation(tmp_path, "job", "w1", NEWER)
    assert third.begin() == 2            # two unclean exits before it
    assert third.known_dead(OWN) and not third.known_dead(OLDER)
    third.end(clean=True)


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
    with pytest.raises(ValueError, match="kill, stop or fail-consumer"):
        FaultInjector("after_persist@2:pause")


def test_manifests_written_before_partition_counts_were_recorded_still_load():
    import dataclasses

    from statestore.sealed_json import seal

    body = dataclasses.asdict(_manifest(4))
    del body["topic_partitions"]
    loaded = Manifest.from_bytes(seal(body), "old")
    assert loaded.topic_partitions is None and loaded.checkpoint_id == 3
    assert Manifest.from_bytes(_manifest(4).to_bytes(), "new").topic_partitions == 4
