"""The transaction's owner, one transition per test, at the seam the product owns: the
owner takes its producers from a factory, and these tests give it scripted ones.

Each test names what the client says (fenced at init, at produce, at send-offsets, at
commit; an abortable error; a commit that timed out; the coordinator unavailable; a
broker restart) and checks the one outcome the owner turns it into, how many producers
it made (every abort replaces the producer, once) and whether it asked the slot guard.
The real-broker suites check the same paths end to end.
"""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connectors.kafka_waits import KafkaWaits
from connectors.held_output import DRAIN_CHECK_EVERY
from connectors.transactions import DONE, AtLeastOnceOwner, Kind, TransactionOwner


def _err(code: int, **flags) -> KafkaError:
    return KafkaError(code, f"scripted {code}", **flags)


FENCED = _err(KafkaError._FENCED, fatal=True)
ABORTABLE = _err(KafkaError.INVALID_TXN_STATE, txn_requires_abort=True)
TIMED_OUT = _err(KafkaError._TIMED_OUT, retriable=True)
COORDINATOR_AWAY = _err(KafkaError.COORDINATOR_NOT_AVAILABLE, retriable=True)
TRANSPORT = _err(KafkaError._TRANSPORT)
STALE_GENERATION = _err(KafkaError.ILLEGAL_GENERATION)
MEMBER_GONE = _err(KafkaError.UNKNOWN_MEMBER_ID)
NOT_AUTHORISED = _err(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, fatal=True)


class FakeProducer:
    """Answers each call with the next scripted error for it (None: success)."""

    def __init__(self, script: dict[str, list[KafkaError | None]]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.undelivered = 0  # records produced and not yet in the log
        self.values: list[bytes] = []  # what was produced, in order

    def _answer(self, call: str) -> None:
        self.calls.append(call)
        answers = self.script.get(call)
        if answers:
            err = answers.pop(0)
            if err is not None:
                raise KafkaException(err)

    def init_transactions(self, timeout: float) -> None:
        self._answer("init_transactions")

    def begin_transaction(self) -> None:
        self._answer("begin_transaction")

    def send_offsets_to_transaction(self, offsets, metadata, timeout: float) -> None:
        self._answer("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._answer("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self._answer("abort_transaction")

    def produce(self, *args, **kwargs) -> None:
        self._answer("produce")
        self.values.append(args[1])

    def poll(self, timeout: float) -> int:
        self._answer("poll")
        return 0

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        raised = self.script.get("flush")
        if raised:
            raise raised.pop(0)
        return 0

    def purge(self) -> None:
        self.calls.append("purge")

    def __len__(self) -> int:
        return self.undelivered


class Consumer:
    def consumer_group_metadata(self) -> object:
        return object()


class Harness:
    """An owner whose producers come from scripts, one script per producer it makes."""

    def __init__(self, *scripts: dict[str, list[KafkaError | None]], holder: str | None = None) -> None:
        self.scripts = list(scripts)
        self.producers: list[FakeProducer] = []
        self.slot_asked = 0
        self.holder = holder
        self.slept: list[float] = []
        self.waits = KafkaWaits()
        self.owner = TransactionOwner("localhost:9092", "job-w1", extra={}, transaction_timeout_ms=30_000,
                                      call_timeout_s=1.0, slot_holder=self._holder, waits=self.waits,
                                      producer_factory=self._make, sleep=self.slept.append)

    def _make(self, config: dict) -> FakeProducer:
        assert config["transactional.id"] == "job-w1"
        producer = FakeProducer(self.scripts.pop(0) if self.scripts else {})
        self.producers.append(producer)
        return producer

    def _holder(self) -> str | None:
        self.slot_asked += 1
        return self.holder

    def commit(self):
        return self.owner.commit([TopicPartition("orders", 0, 42)], Consumer())


NEWER = "worker slot w1 is held by a newer process, member m-2"


def _started(*scripts, holder: str | None = None) -> Harness:
    harness = Harness(*scripts, holder=holder)
    assert harness.owner.start() == DONE
    return harness


def test_start_initialises_the_transactional_id_and_opens_a_transaction():
    harness = _started({})
    assert harness.producers[0].calls == ["init_transactions", "begin_transaction"]
    assert harness.slot_asked == 0


def test_start_waits_out_an_unreachable_cluster_and_says_so_while_it_waits():
    seen = []
    harness = Harness({"init_transactions": [TRANSPORT, TIMED_OUT, None]})
    harness.owner.sleep = lambda s: seen.append((s, harness.waits.current[0]))
    assert harness.owner.start() == DONE
    assert seen == [(0.5, "init_transactions"), (1.0, "init_transactions")]
    assert len(harness.producers) == 1 and harness.waits.current is None


def test_fenced_at_init_by_a_newer_process_is_replaced():
    harness = Harness({"init_transactions": [FENCED]}, holder=NEWER)
    outcome = harness.owner.start()
    assert outcome.kind is Kind.REPLACED and NEWER in outcome.reason


def test_init_refused_by_authorisation_is_fatal():
    outcome = Harness({"init_transactions": [NOT_AUTHORISED]}).owner.start()
    assert outcome.kind is Kind.FATAL and "TRANSACTIONAL_ID_AUTHORIZATION_FAILED" in outcome.reason


def test_a_commit_sends_the_offsets_commits_and_opens_the_next_transaction():
    harness = _started({})
    assert harness.commit() == DONE
    assert harness.producers[0].calls[2:] == ["send_offsets_to_transaction", "commit_transaction",
                                              "begin_transaction"]


def test_fenced_at_send_offsets_by_a_newer_process_is_replaced_without_initialising_again():
    harness = _started({"send_offsets_to_transaction": [FENCED]}, holder=NEWER)
    outcome = harness.commit()
    assert outcome.kind is Kind.REPLACED and NEWER in outcome.reason
    assert len(harness.producers) == 1 and harness.slot_asked == 1
    assert "commit_transaction" not in harness.producers[0].calls


def test_fenced_at_commit_by_a_peer_initialises_again_and_rewinds_without_counting():
    harness = _started({"commit_transaction": [FENCED]}, {})
    outcome = harness.commit()
    assert (outcome.kind, outcome.counts) == (Kind.REWIND, False)
    assert "fenced" in outcome.reason and harness.slot_asked == 1
    assert len(harness.producers) == 2 and harness.producers[0].calls[-1] == "purge"
    assert harness.producers[1].calls == ["init_transactions", "begin_transaction"]


def test_fenced_at_produce_is_found_from_the_producers_own_fatal_error():
    """produce() on a fenced producer raises a bare _FATAL; the owner asks the producer
    (any transactional call answers with the error that made it fatal)."""
    harness = _started({"abort_transaction": [FENCED]}, holder=NEWER)
    outcome = harness.owner.failed(KafkaException(_err(KafkaError._FATAL)))
    assert outcome.kind is Kind.REPLACED and harness.slot_asked == 1
    assert harness.producers[0].calls[-2:] == ["abort_transaction", "purge"]


def test_an_abortable_error_at_commit_replaces_the_producer_once_and_counts():
    harness = _started({"commit_transaction": [ABORTABLE]}, {})
    outcome = harness.commit()
    assert (outcome.kind, outcome.counts) == (Kind.REWIND, True)
    assert len(harness.producers) == 2 and harness.slot_asked == 0


def test_a_commit_that_timed_out_has_an_unknown_outcome_the_committed_offsets_decide():
    harness = _started({"commit_transaction": [TIMED_OUT]}, {})
    outcome = harness.commit()
    assert (outcome.kind, outcome.counts) == (Kind.REWIND, True)
    assert "committed offsets" in outcome.reason
    assert harness.producers[0].calls.count("commit_transaction") == 1  # never retried blindly (no KIP-890)
    assert len(harness.producers) == 2


def test_a_coordinator_briefly_unavailable_is_retried_on_the_same_producer():
    harness = _started({"commit_transaction": [COORDINATOR_AWAY, COORDINATOR_AWAY, None]})
    assert harness.commit() == DONE
    assert harness.producers[0].calls.count("commit_transaction") == 3 and len(harness.producers) == 1
    assert harness.slept == [0.2, 0.4]


def test_a_coordinator_that_stays_unavailable_fails_the_checkpoint():
    harness = _started({"commit_transaction": [COORDINATOR_AWAY] * 5}, {})
    outcome = harness.commit()
    assert (outcome.kind, outcome.counts) == (Kind.REWIND, True) and len(harness.producers) == 2


def test_a_rebalance_under_the_commit_rewinds_without_counting_or_asking_the_slot_guard():
    harness = _started({"send_offsets_to_transaction": [STALE_GENERATION]}, {})
    outcome = harness.commit()
    assert (outcome.kind, outcome.counts) == (Kind.REWIND, False)
    assert harness.slot_asked == 0 and "rebalanced" in outcome.reason


def test_a_member_the_group_forgot_asks_the_slot_guard():
    harness = _started({"send_offsets_to_transaction": [MEMBER_GONE]}, holder=NEWER)
    assert harness.commit().kind is Kind.REPLACED and harness.slot_asked == 1


def test_a_broker_restart_during_the_commit_aborts_by_initialising_again_once_it_is_back():
    seen = []
    harness = _started({"commit_transaction": [TRANSPORT]},
                       {"init_transactions": [TRANSPORT, TRANSPORT, None]})
    harness.owner.sleep = lambda s: seen.append(harness.waits.current[0])
    outcome = harness.commit()
    assert (outcome.kind, outcome.counts) == (Kind.REWIND, True)
    assert seen == ["init_transactions", "init_transactions"]  # /healthz sees the loop waiting on Kafka
    assert len(harness.producers) == 2 and harness.producers[1].calls[-1] == "begin_transaction"


def test_a_failed_delivery_dooms_the_transaction_when_polled():
    harness = _started({}, {})
    harness.owner._members[0].failures.on_delivery(_err(KafkaError.MSG_SIZE_TOO_LARGE), None)
    outcome = harness.owner.poll()
    assert (outcome.kind, outcome.counts) == (Kind.REWIND, True) and len(harness.producers) == 2
    assert harness.owner.poll() == DONE


@pytest.mark.parametrize("holder,kind", [(NEWER, Kind.REPLACED), (None, Kind.REWIND)])
def test_fenced_while_polled_is_replaced_or_initialises_again(holder, kind):
    """A newer process's init_transactions fences this producer's in-flight batches: the
    producer turns fatal and raises from poll."""
    harness = _started({"poll": [FENCED]}, {}, holder=holder)
    outcome = harness.owner.poll()
    assert outcome.kind is kind and harness.slot_asked == 1


def test_an_abort_for_lost_partitions_stops_a_replaced_process_before_it_initialises():
    harness = _started({}, holder=NEWER)
    outcome = harness.owner.abort("lost partitions", counts=False, identity_in_doubt=True)
    assert outcome.kind is Kind.REPLACED and len(harness.producers) == 1


def test_an_abort_for_a_failed_checkpoint_asks_nobody_and_counts():
    harness = _started({}, {})
    outcome = harness.owner.abort("storage unreachable", counts=True)
    assert (outcome.kind, outcome.counts, harness.slot_asked) == (Kind.REWIND, True, 0)


def test_a_send_offsets_that_never_returns_is_given_up_and_its_producer_abandoned():
    """librdkafka #5456/#5511: the call can wait for minutes past its own timeout."""
    release = threading.Event()
    harness = _started({}, {})
    harness.producers[0].send_offsets_to_transaction = lambda *args: release.wait(30)
    harness.owner.unanswered_grace_s = 0.2
    outcome = harness.commit()
    release.set()
    assert (outcome.kind, outcome.counts) == (Kind.REWIND, True) and harness.owner.abandoned
    assert "did not return" in outcome.reason and len(harness.producers) == 2


@pytest.mark.parametrize("abort", [True, False])
def test_closing_after_a_failure_aborts_the_open_transaction(abort):
    harness = _started({})
    harness.owner.close(abort=abort)
    assert ("abort_transaction" in harness.producers[0].calls) is abort
    assert not harness.owner.started


@pytest.mark.parametrize("holder,kind", [(NEWER, Kind.REPLACED), (None, Kind.RENEW)])
@pytest.mark.parametrize("error", [_err(KafkaError.FENCED_INSTANCE_ID, fatal=True), _err(KafkaError._FATAL)],
                         ids=["fenced", "bare-fatal"])
def test_a_fenced_consumer_is_replaced_or_renewed(holder, kind, error):
    """librdkafka's consumer reports its static fencing as a bare _FATAL from poll. With
    no newer process of the slot in the group, the fencing was this process's own rejoin:
    a new consumer, not a restart."""
    harness = _started({}, holder=holder)
    outcome = harness.owner.consumer_failed(KafkaException(error))
    assert outcome.kind is kind


class OffsetsConsumer:
    def __init__(self, error: KafkaError | None) -> None:
        self.error = error

    def commit(self, offsets, asynchronous: bool) -> None:
        if self.error is not None:
            raise KafkaException(self.error)


@pytest.mark.parametrize("error,holder,kind,counts", [
    (None, None, Kind.COMMITTED, False),
    (STALE_GENERATION, None, Kind.REWIND, False),
    (MEMBER_GONE, NEWER, Kind.REPLACED, False),
    (MEMBER_GONE, None, Kind.REWIND, False),
    (TRANSPORT, None, Kind.REWIND, True),
])
def test_at_least_once_commits_offsets_through_the_consumer_with_the_same_outcomes(error, holder, kind, counts):
    owner = AtLeastOnceOwner("localhost:9092", extra={}, call_timeout_s=1.0, slot_holder=lambda: holder,
                             producer_factory=lambda config: FakeProducer({}))
    assert owner.start() == DONE
    outcome = owner.commit([TopicPartition("orders", 0, 42)], OffsetsConsumer(error))
    assert (outcome.kind, outcome.counts) == (kind, counts)


# -- the pool: a checkpoint's transaction closes at its barrier, commits in the background


class PoolHarness(Harness):
    """An owner with a pool of two producers, each made from its script in turn."""

    def __init__(self, *scripts: dict[str, list[KafkaError | None]], holder: str | None = None) -> None:
        self.ids: list[str] = []
        super().__init__(*scripts, holder=holder)
        self.owner = TransactionOwner("localhost:9092", ["job-w1", "job-w1#1"], extra={},
                                      transaction_timeout_ms=30_000, call_timeout_s=1.0, slot_holder=self._holder,
                                      waits=self.waits, producer_factory=self._make, sleep=self.slept.append)

    def _make(self, config: dict) -> FakeProducer:
        self.ids.append(config["transactional.id"])
        producer = FakeProducer(self.scripts.pop(0) if self.scripts else {})
        self.producers.append(producer)
        return producer


def _pool(*scripts) -> PoolHarness:
    harness = PoolHarness(*scripts)
    assert harness.owner.start() == DONE
    return harness


def test_start_initialises_every_id_of_the_pool_and_opens_one_transaction():
    harness = _pool({}, {})
    assert harness.ids == ["job-w1", "job-w1#1"]
    assert harness.producers[0].calls == ["init_transactions", "begin_transaction"]
    assert harness.producers[1].calls == ["init_transactions"]


class WaitsForTheOtherInit(FakeProducer):
    """An init that returns only once the other id's init has begun, as one waits out
    CONCURRENT_TRANSACTIONS while the coordinator ends its id's open transaction."""

    def __init__(self, began: threading.Event, other: threading.Event) -> None:
        super().__init__({})
        self.began, self.other = began, other

    def init_transactions(self, timeout: float) -> None:
        self.began.set()
        if not self.other.wait(5):  # one after the other: fail for good rather than retry for ever
            raise KafkaException(NOT_AUTHORISED)
        super().init_transactions(timeout)


def test_the_ids_of_the_pool_are_initialised_together_not_one_after_another():
    first, second = threading.Event(), threading.Event()
    harness = PoolHarness()
    made = iter([WaitsForTheOtherInit(first, second), WaitsForTheOtherInit(second, first)])

    def make(config: dict) -> FakeProducer:
        harness.producers.append(next(made))
        return harness.producers[-1]

    harness.owner.producer_factory = make
    assert harness.owner.start() == DONE
    assert harness.slept == [], "an id's init waited for the other's to end"
    assert [p.calls for p in harness.producers] == [["init_transactions", "begin_transaction"], ["init_transactions"]]


class InitBreaks(FakeProducer):
    """An init that fails with something no retry can mend (a defect, not Kafka)."""

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init_transactions")
        raise RuntimeError("the client library broke")


class InitNeverAnswered(FakeProducer):
    """An init the cluster never answers: retried with backoff for as long as it takes."""

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init_transactions")
        raise KafkaException(COORDINATOR_AWAY)


def test_an_init_that_raises_stops_the_other_ids_retries_and_reaches_the_caller():
    """Initialised one after the other, the exception came out at once; initialised
    together, it must not wait for the other id's init, which may retry for ever."""
    harness = PoolHarness()
    made = iter([InitBreaks({}), InitNeverAnswered({})])

    def make(config: dict) -> FakeProducer:
        harness.producers.append(next(made))
        return harness.producers[-1]

    harness.owner.producer_factory = make
    raised: list[BaseException] = []

    def start() -> None:
        try:
            harness.owner.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            raised.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    starter.join(10)
    assert not starter.is_alive(), "the start waited for the other id's endless retries"
    assert [type(exc) for exc in raised] == [RuntimeError]


def test_an_id_refused_for_good_fails_the_start_and_drops_every_producer():
    harness = PoolHarness({"init_transactions": [NOT_AUTHORISED]},
                          {"init_transactions": [COORDINATOR_AWAY] * 3})
    outcome = harness.owner.start()
    assert outcome.kind is Kind.FATAL and "job-w1'" in outcome.reason
    assert not harness.owner.started
    assert all("purge" in p.calls for p in harness.producers)


def test_closing_an_epoch_opens_the_next_on_the_other_producer_and_routes_output_there():
    harness = _pool({}, {})
    first, second = harness.producers
    first.undelivered = 3
    assert harness.owner.close_epoch(Consumer()) == DONE
    harness.owner.produce.fast("out", b"v", b"k")
    assert harness.owner.poll() == DONE
    assert "produce" not in second.calls, "produced before the closed transaction's records were in the log"
    first.undelivered = 0
    assert harness.owner.poll() == DONE
    assert second.calls.count("produce") == 1 and "produce" not in first.calls
    harness.owner.produce.fast("out", b"v2", b"k")
    assert second.calls.count("produce") == 2
    assert harness.owner.commit_closed(harness.owner.closed_epoch, [TopicPartition("orders", 0, 42)]) is None
    assert first.calls[-2:] == ["send_offsets_to_transaction", "commit_transaction"]
    assert harness.owner.closed_committed(None) == DONE and not harness.owner.closing
    assert harness.owner.close_epoch(Consumer()) == DONE  # and back to the first producer
    assert first.calls[-1] == "begin_transaction"


def test_the_next_transaction_is_begun_between_barriers_not_at_one():
    """begin_transaction is a round trip to librdkafka's own thread: the barrier, where
    processing waits, only switches to a transaction begun before."""
    harness = _pool({}, {})
    first, second = harness.producers
    assert harness.owner.poll() == DONE
    assert second.calls.count("begin_transaction") == 1
    assert harness.owner.close_epoch(Consumer()) == DONE
    assert second.calls.count("begin_transaction") == 1


def test_a_record_too_large_to_hold_waits_for_the_closed_producer_and_follows_the_held_ones():
    """librdkafka refuses an oversized record when it is produced; held, the refusal
    would come later and name no record. It waits for the drain instead."""
    harness = _pool({}, {})
    first, second = harness.producers
    first.undelivered = 3
    assert harness.owner.close_epoch(Consumer()) == DONE
    harness.owner.produce.fast("out", b"small", b"k")
    large = b"x" * 600_000
    harness.owner.produce.fast("out", large, b"k")
    assert "flush" in first.calls
    assert second.values == [b"small", large]


def test_held_records_are_thrown_away_with_the_transaction_they_belong_to():
    harness = _pool({}, {}, {}, {})
    first, second = harness.producers
    first.undelivered = 3
    assert harness.owner.close_epoch(Consumer()) == DONE
    harness.owner.produce.fast("out", b"of n+1", b"k")
    assert harness.owner.abort("partitions revoked", counts=False).kind is Kind.REWIND
    assert harness.owner.poll() == DONE
    assert all(not p.values for p in harness.producers)


@pytest.mark.parametrize("raised", [
    SystemError("<method 'flush' of 'cimpl.Producer' objects> returned NULL without setting an exception"),
    KafkaException(_err(KafkaError._FATAL)),
])
def test_a_closed_producer_that_turns_fatal_while_it_is_waited_for_is_asked_why(raised):
    """A record too large to hold waits for the closed transaction's producer to drain.
    confluent-kafka's flush of a producer fenced meanwhile can end in a SystemError
    naming no cause, or a bare _FATAL: the producer's own fatal error says it."""
    harness = _pool({"flush": [raised], "abort_transaction": [FENCED]}, {})
    harness.holder = NEWER
    assert harness.owner.close_epoch(Consumer()).committed
    with pytest.raises(KafkaException) as refused:
        harness.owner.produce.fast("orders", b"x" * 600_000, b"key")
    outcome = harness.owner.failed(refused.value)
    assert outcome.kind is Kind.REPLACED and NEWER in outcome.reason, outcome


def test_a_closed_epoch_whose_commit_fails_ends_the_open_one_too():
    harness = _pool({"commit_transaction": [ABORTABLE]}, {}, {}, {})
    harness.owner.close_epoch(Consumer())
    failure = harness.owner.commit_closed(harness.owner.closed_epoch, [TopicPartition("orders", 0, 42)])
    outcome = harness.owner.closed_committed(failure)
    assert outcome.kind is Kind.REWIND and outcome.counts
    assert len(harness.producers) == 4  # both replaced, once
    assert "purge" in harness.producers[0].calls and "purge" in harness.producers[1].calls


def test_a_commit_that_comes_after_its_transactions_were_given_up_touches_nothing():
    harness = _pool({}, {}, {}, {})
    harness.owner.close_epoch(Consumer())
    epoch = harness.owner.closed_epoch
    harness.owner.abort("partitions revoked", counts=False)
    failure = harness.owner.commit_closed(epoch, [TopicPartition("orders", 0, 42)])
    assert failure is not None and failure.code() == KafkaError._STATE
    assert all("commit_transaction" not in p.calls for p in harness.producers)


def test_held_records_go_out_once_the_closed_producer_has_delivered_without_waiting_for_the_loops_poll():
    """The loop polls the owner once per batch of input: a batch of thousands of records
    would otherwise all be held even when the closed producer drained a millisecond after
    the barrier. The held records are checked every DRAIN_CHECK_EVERY records and go out
    in order, ahead of those that follow them."""
    harness = _pool({}, {})
    first, second = harness.producers
    first.undelivered = 3
    assert harness.owner.close_epoch(Consumer()) == DONE
    produced = [b"%d" % i for i in range(3 * DRAIN_CHECK_EVERY)]
    for value in produced[:DRAIN_CHECK_EVERY]:
        harness.owner.produce.fast("out", value, b"k")
    assert not second.values, "released before the closed transaction's records were in the log"
    first.undelivered = 0
    for value in produced[DRAIN_CHECK_EVERY:]:
        harness.owner.produce.fast("out", value, b"k")
    assert second.values == produced
    assert harness.owner.poll() == DONE and second.values == produced
