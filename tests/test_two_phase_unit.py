"""The coordinator drives every transactional sink through the two-phase protocol: each
transition of connectors/two_phase.py, against a sink that records its calls (the end-to-end
behaviour with a real PostgreSQL is in test_postgres_sink.py and test_postgres_faults.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from connectors.transactions import DONE, Kind, Outcome
from connectors.two_phase import SinkContext, TransactionalSink, TwoPhaseCommitSink, checkpoint_of
from eos.errors import RecordError, SinkFencedError, SinkUnavailableError
from service.checkpointing.coordinator import CheckpointCoordinator
from service.checkpointing.faults import FaultInjector
from service.monitoring.metrics import WorkerMetrics
from service.runtime.task import CompletedCheckpoint


class RecordingSink:
    def __init__(self, name: str, calls: list, fail_prepare: BaseException | None = None) -> None:
        self.name, self.calls, self.fail_prepare = name, calls, fail_prepare
        self.pending = True

    def begin(self) -> None:
        self.calls.append((self.name, "begin"))

    def write(self, key, value, source) -> None:
        self.calls.append((self.name, "write"))

    def prepare(self, checkpoint_id: int) -> None:
        self.calls.append((self.name, "prepare", checkpoint_id))
        if self.fail_prepare is not None:
            raise self.fail_prepare

    def commit(self, checkpoint_id: int, deadline) -> None:
        self.calls.append((self.name, "commit", checkpoint_id))
        self.pending = False

    def abort(self) -> None:
        self.calls.append((self.name, "abort"))

    def recover(self, committed_checkpoint_id: int) -> None:
        self.calls.append((self.name, "recover", committed_checkpoint_id))

    def close(self) -> None:
        self.calls.append((self.name, "close"))


class Owner:
    """An owner without a pool (at-least-once's): the whole checkpoint runs in the loop."""

    asynchronous = False

    def __init__(self, calls: list, outcome: Outcome = DONE) -> None:
        self.calls, self.outcome = calls, outcome

    def commit(self, offsets, consumer) -> Outcome:
        self.calls.append(("kafka", "commit"))
        return self.outcome

    def abort(self, reason: str, *, counts: bool, identity_in_doubt: bool = False) -> Outcome:
        self.calls.append(("kafka", "abort", counts, identity_in_doubt))
        return Outcome(Kind.REWIND, reason, counts)


class PoolOwner(Owner):
    """An owner with a pool: the transaction closes at the barrier, commits in the
    background, and the loop settles it."""

    asynchronous = True
    closing = True
    closed_epoch = 1

    def close_epoch(self, consumer) -> Outcome:
        self.calls.append(("kafka", "close"))
        return DONE

    def commit_closed(self, epoch: int, offsets) -> None:
        self.calls.append(("kafka", "commit"))

    def closed_committed(self, failure) -> Outcome:
        return DONE


def _coordinator(sinks: dict, owner: Owner) -> CheckpointCoordinator:
    task = SimpleNamespace(id="in-0", topic="in", partition=0, state=None, next_offset=10, others=[],
                           completed=CompletedCheckpoint(4, 5, None), attempted_manifest=None,
                           records_since_checkpoint=5, changed=True, sinks=sinks,
                           checkpoint_began=lambda: None)
    manager = SimpleNamespace(tasks={("in", 0): task}, plan=SimpleNamespace(stages=[]))
    return CheckpointCoordinator(manager, owner, consumer=None, job="j", worker="w", token="t", interval_s=1.0,
                                 timeout_s=60, min_pause_s=0.0, metrics=WorkerMetrics("j", "w"),
                                 faults=FaultInjector(""))


def test_sinks_prepare_before_the_kafka_commit_and_commit_after_it():
    calls: list = []
    coordinator = _coordinator({"a": RecordingSink("a", calls), "b": RecordingSink("b", calls)}, Owner(calls))
    record = coordinator.trigger()
    assert record.outcome.committed and record.checkpoint_id == 5
    assert calls == [("a", "prepare", 5), ("a", "begin"), ("b", "prepare", 5), ("b", "begin"), ("kafka", "commit"),
                     ("a", "commit", 5), ("b", "commit", 5)]


def test_with_a_pool_sinks_prepare_at_the_barrier_and_commit_when_the_loop_settles_the_kafka_commit():
    """The prepare is in the synchronous part (what the sink gets after the barrier is the
    next epoch's); the commit waits for the background Kafka commit and runs on the loop's
    thread, as every call to a sink does."""
    calls: list = []
    coordinator = _coordinator({"a": RecordingSink("a", calls)}, PoolOwner(calls))
    record = coordinator.begin()
    assert calls[:3] == [("a", "prepare", 5), ("a", "begin"), ("kafka", "close")]
    coordinator.wait_in_flight()
    assert ("a", "commit", 5) not in calls, "committed off the loop's thread"
    assert coordinator.poll() is record and record.outcome.committed
    assert calls[3:] == [("kafka", "commit"), ("a", "commit", 5)]


def test_a_sink_that_cannot_prepare_fails_the_checkpoint_before_the_kafka_commit_and_every_sink_aborts():
    calls: list = []
    broken = RecordingSink("b", calls, SinkUnavailableError("lock timeout"))
    coordinator = _coordinator({"a": RecordingSink("a", calls), "b": broken}, Owner(calls))
    record = coordinator.trigger()
    assert record.outcome.kind is Kind.REWIND and record.outcome.counts
    assert ("kafka", "commit") not in calls
    assert ("a", "abort") in calls and ("b", "abort") in calls
    assert not any(call[1] == "commit" for call in calls)


def test_a_failed_kafka_commit_leaves_the_prepared_writes_to_recovery():
    """The outcome of a failed commit may be unknown (timed out): only the committed
    offsets, read back by the rewind's recovery, can say whether to commit or roll back."""
    calls: list = []
    owner = Owner(calls, Outcome(Kind.REWIND, "commit_transaction timed out", counts=True))
    coordinator = _coordinator({"a": RecordingSink("a", calls)}, owner)
    record = coordinator.trigger()
    assert not record.outcome.committed
    assert calls == [("a", "prepare", 5), ("a", "begin"), ("kafka", "commit")]


def test_a_fenced_sink_puts_the_workers_identity_in_doubt():
    calls: list = []
    fenced = RecordingSink("a", calls, SinkFencedError("claimed by another process"))
    coordinator = _coordinator({"a": fenced}, Owner(calls))
    coordinator.trigger()
    assert ("kafka", "abort", False, True) in calls


def test_a_refused_row_under_policy_fail_stops_the_worker_after_rolling_back_what_was_prepared():
    calls: list = []
    refused = RecordError("refused the row", topic="in", partition=0, offset=3, operator="db")
    coordinator = _coordinator({"a": RecordingSink("a", calls), "b": RecordingSink("b", calls, refused)},
                               Owner(calls))
    with pytest.raises(RecordError):
        coordinator.trigger()
    assert ("a", "abort") in calls and ("kafka", "commit") not in calls


def test_the_sink_phases_are_reached_only_when_a_sink_has_writes(monkeypatch):
    calls: list = []
    idle = RecordingSink("a", calls)
    idle.pending = False
    coordinator = _coordinator({"a": idle}, Owner(calls))
    hits: list = []
    monkeypatch.setattr(coordinator.faults, "hit", lambda phase, *_: hits.append(phase))
    coordinator.trigger()
    assert "after_prepare" not in hits and "after_kafka_commit" not in hits and "after_commit" in hits


def test_the_postgres_sink_is_a_transactional_sink_and_its_writer_a_participant():
    from connectors.postgres.sink import PostgresSink
    from connectors.postgres.table import TableShape
    from connectors.postgres.writer import PostgresWriter, WriterSettings

    assert isinstance(PostgresSink("host=h", "t", columns=["a"]), TransactionalSink)
    context = SinkContext("j", "in-0", "db", "tok", True, 30.0, lambda error, msg: None)
    writer = PostgresWriter(WriterSettings("insert", 10, 1.0, 1.0, lambda k: (), lambda v: (v,)),
                            TableShape("public", "t", (), ("a",), ("bigint",)), context, connect=None)
    assert isinstance(writer, TwoPhaseCommitSink)


def test_transaction_names_carry_job_sink_task_and_checkpoint_and_stay_within_postgres_limit():
    context = SinkContext("running-sum", "orders-3", "totals-db", "tok", True, 30.0, lambda error, msg: None)
    assert context.transaction_name(17) == "eos:running-sum:totals-db:orders-3:17"
    assert checkpoint_of("eos:running-sum:totals-db:orders-3:17", context.transaction_prefix()) == 17
    assert checkpoint_of("eos:running-sum:totals-db:orders-31:17", context.transaction_prefix()) is None
    long = SinkContext("j" * 150, "t" * 100, "s", "tok", True, 30.0, lambda error, msg: None)
    name = long.transaction_name(10**12)
    assert len(name) <= 200 and checkpoint_of(name, long.transaction_prefix()) == 10**12
