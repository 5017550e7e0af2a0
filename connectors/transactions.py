"""The open transaction of the worker's checkpoint epoch, and its one owner.

Every transactional call of a worker (init, begin, produce, send offsets, commit, abort)
goes through `TransactionOwner`, as every one of a Kafka Streams thread goes through its
`StreamsProducer`. Each call ends in one `Outcome`, which the worker's loop acts on:

  COMMITTED  the call did what it was asked (a commit: outputs and offsets are durable)
  REWIND     the open transaction is gone; every task returns to its last completed
             checkpoint. `counts` says whether it counts toward --tolerable-failures
             (a failed checkpoint does, a rebalance does not)
  REPLACED   a newer process of this worker slot holds it: stop (exit 3), touching nothing
  FATAL      no new producer can do better (authorisation refused, say): stop (exit 1)

The owner alone aborts, and does so once per failure, by replacing the producer: a new
producer's `init_transactions` makes the coordinator end whatever the transactional id
left open, which is certain where a plain `abort_transaction` after an outage is not,
and librdkafka (no KIP-890) leaves a producer whose call timed out in an unknown state
anyway. Before it initialises the id again after a fencing, or after the group forgot
this member, it asks the slot guard whether a newer process holds the slot: then it
must stop instead, or it would fence that process. `AtLeastOnceOwner` gives the same
outcomes without transactions.

Checkpoints are written while processing goes on (asynchronous barrier snapshotting), so
the owner keeps a pool of two producers, as Flink's Kafka sink does: at checkpoint n's
barrier the open transaction *closes* (it takes no more output and commits once n's
snapshot is durable) and the other producer opens transaction n+1 for what follows.
Kafka allows one open transaction per producer, hence two; n+1 commits only after n.
A failure of n ends both transactions: n+1's output was computed from n's state. Readers
see log order, so n+1's records must follow n's there for each key's outputs to read back
in order: n+1's first records are held until n's producer has delivered all of its own
(connectors/held_output.py), rather than pausing processing for that at the barrier.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from connectors.held_output import HeldOutput
from connectors.kafka_errors import CONSUMER_IDENTITY_IN_DOUBT, IDENTITY_IN_DOUBT, Cause, cause_of, describe, error_of
from connectors.kafka_sink import DeliveryFailures, Produce, RoutedProduce, base_producer_config, make_produce
from connectors.kafka_waits import KafkaWaits, backoff_delays

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    COMMITTED = "committed"
    REWIND = "rewind"
    # The consumer cannot go on but this process still holds its slot: a new consumer
    # takes its place (and every task is restored, as after a lost assignment).
    RENEW = "renew"
    REPLACED = "replaced"
    FATAL = "fatal"


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    reason: str = ""
    counts: bool = False  # a rewind that counts toward --tolerable-failures

    @property
    def committed(self) -> bool:
        return self.kind is Kind.COMMITTED


DONE = Outcome(Kind.COMMITTED)

# Who else holds this worker slot: a description of a newer process listed in the group
# under this worker id, or None. See service/membership/slot.py.
SlotHolder = Callable[[], "str | None"]
ProducerFactory = Callable[[dict[str, Any]], Any]

# A retriable error (coordinator moving, say) is retried this often before the
# transaction is given up.
RETRIES = 5
# librdkafka's send_offsets_to_transaction can wait past its own timeout for a group
# coordinator it looked up while the broker was away (confluentinc/librdkafka#5456,
# #5511); it runs on a helper thread and is given up this long after its own timeout.
UNANSWERED_GRACE_S = 5.0
# At exit after a failure the open transaction is aborted, so that read_committed
# readers need not wait for its timeout; bounded, since the process ends right after.
EXIT_ABORT_S = 5.0


class OutputOwner(Protocol):
    """What the loop and the checkpoint coordinator need from the output side."""

    @property
    def started(self) -> bool: ...

    @property
    def produce(self) -> Any: ...

    abandoned: bool
    # Whether checkpoints may close an epoch and commit it in the background
    # (close_epoch, commit_closed, closed_committed); else they commit in the loop.
    asynchronous: bool
    # Whether a closed epoch awaits its commit.
    closing: bool

    def start(self) -> Outcome: ...

    def poll(self) -> Outcome: ...

    def commit(self, offsets: list[TopicPartition], consumer: Any) -> Outcome: ...

    def close_epoch(self, consumer: Any) -> Outcome: ...

    def produce_closed(self, epoch: int, records: list[tuple[str, int, bytes, bytes]]) -> KafkaError | None: ...

    def commit_closed(self, epoch: int, offsets: list[TopicPartition]) -> KafkaError | None: ...

    def closed_committed(self, failure: KafkaError | None) -> Outcome: ...

    def abort(self, reason: str, *, counts: bool, identity_in_doubt: bool = False) -> Outcome: ...

    def failed(self, exc: BaseException) -> Outcome: ...

    def consumer_failed(self, exc: BaseException) -> Outcome: ...

    def close(self, *, abort: bool) -> None: ...


def consumer_verdict(exc: BaseException, slot_holder: SlotHolder) -> Outcome:
    """The consumer reported a fatal error: it cannot go on, whatever the producer does.
    Replaced if a newer process of the slot took its group instance id; otherwise the
    group fenced this very process (librdkafka can fence a static member with its own
    rejoin after the broker was away past the session timeout), and a new consumer
    takes the old one's place."""
    err = error_of(exc)
    if cause_of(err) not in CONSUMER_IDENTITY_IN_DOUBT:
        return Outcome(Kind.FATAL, f"the consumer failed and cannot continue ({describe(err)}); "
                                   "a restart of the worker creates a new one")
    if (holder := slot_holder()) is not None:
        return Outcome(Kind.REPLACED, f"the consumer was fenced ({describe(err)}): {holder}")
    return Outcome(Kind.RENEW, f"the consumer failed ({describe(err)}) and no other process holds the worker slot: "
                               "a new consumer takes its place")


def verdict(what: str, err: KafkaError) -> tuple[str, bool, bool]:
    """What a failed transactional call means: the reason to give, whether the rewind
    it causes counts toward --tolerable-failures, and whether this process may have been
    replaced (to be asked of the slot guard)."""
    cause = cause_of(err)
    if cause is Cause.REFUSED:
        return f"{what} refused: {describe(err)}", False, False
    if cause is Cause.FENCED:
        return f"{what} refused: this producer was fenced ({describe(err)})", False, True
    if cause is Cause.MEMBER_GONE:
        return f"{what} refused: the group no longer knows this member ({describe(err)})", False, True
    if cause is Cause.GROUP_MOVED:
        return f"{what} refused: the group rebalanced meanwhile ({describe(err)})", False, False
    if cause is Cause.UNKNOWN_OUTCOME:
        return (f"{what} timed out ({describe(err)}); whether it took effect is read back from the committed "
                "offsets", True, False)
    return f"{what} failed: {describe(err)}", True, False


class _CallFailed(Exception):
    def __init__(self, what: str, err: KafkaError) -> None:
        super().__init__(what)
        self.what, self.err = what, err


class _Member:
    """One producer of the pool, with its transactional id and its delivery failures."""

    __slots__ = ("transactional_id", "producer", "produce", "failures")

    def __init__(self, transactional_id: str) -> None:
        self.transactional_id = transactional_id
        self.producer: Any = None
        self.produce: Produce | None = None
        self.failures = DeliveryFailures()


def _delivery_failure(member: _Member) -> _CallFailed | None:
    """The first record of the member's transaction that failed to reach the log, if any:
    its transaction cannot commit."""
    failure = member.failures.take()
    return None if failure is None else _CallFailed("delivering an output record", failure)


class TransactionOwner:
    """Exactly-once output: one open transaction per checkpoint epoch, and the closed
    one of a checkpoint being written."""

    def __init__(self, bootstrap: str, transactional_ids: list[str] | str, *, extra: dict[str, str],
                 transaction_timeout_ms: int, call_timeout_s: float, slot_holder: SlotHolder,
                 waits: KafkaWaits | None = None, producer_factory: ProducerFactory = Producer,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        ids = [transactional_ids] if isinstance(transactional_ids, str) else list(transactional_ids)
        self.transactional_id = ids[0]
        self.call_timeout_s = call_timeout_s
        self.slot_holder = slot_holder
        self.waits = waits if waits is not None else KafkaWaits()
        self.producer_factory = producer_factory
        self.sleep = sleep
        self.unanswered_grace_s = UNANSWERED_GRACE_S
        self._config = base_producer_config(bootstrap, extra)
        self._config.update({"transaction.timeout.ms": transaction_timeout_ms, "enable.idempotence": True})
        self._members = [_Member(tid) for tid in ids]
        self._open_at = 0  # the member whose transaction takes output
        self._closed_at: int | None = None  # the member whose transaction awaits its commit
        self._closed_metadata: Any = None  # the group metadata as it was when it closed
        self._routed = RoutedProduce()
        # The open transaction's first records, while the closed one's still travel.
        self._held: HeldOutput | None = None
        # Whether the pool's free producer has begun the next transaction already (its
        # begin is a round trip to librdkafka's thread, kept out of the barrier's pause).
        self._next_begun = False
        self._max_message_bytes = int(self._config.get("message.max.bytes", 1_000_000))
        # Held while `commit_closed` runs (on another thread): producers are replaced only
        # once it returned, so a commit is never cut off half done, and a commit that
        # comes after they were replaced finds its epoch gone and touches nothing.
        self._commit_lock = threading.Lock()
        self._closed_epoch = 0  # counts epochs closed; a commit names the one it is for
        # True once a producer was left blocked in a call that never returned: the
        # process must then exit without waiting on it in the producer's destructor.
        self.abandoned = False

    @property
    def started(self) -> bool:
        return self._members[self._open_at].producer is not None

    @property
    def asynchronous(self) -> bool:
        """Whether checkpoints may close an epoch and commit it in the background."""
        return len(self._members) > 1

    @property
    def produce(self) -> RoutedProduce:
        """Routed to the open transaction's producer, whichever it is."""
        return self._routed

    @property
    def _producer(self) -> Any:
        return self._members[self._open_at].producer

    @property
    def closing(self) -> bool:
        """Whether a closed transaction awaits its commit."""
        return self._closed_at is not None

    # -- the calls the loop makes -----------------------------------------------------

    def start(self) -> Outcome:
        """The first producers: initialising the slot's transactional ids aborts whatever
        an older process of the slot left open. Waits out an unreachable cluster."""
        return self._open()

    def poll(self) -> Outcome:
        """Serves delivery reports; a failed delivery dooms the open transaction. Held
        records go out once the closed transaction's producer has delivered its own."""
        for member in self._members:
            if member.producer is None:
                continue
            try:
                member.producer.poll(0)
            except KafkaException as exc:  # a producer turned fatal raises from poll
                return self.failed(exc)
        held = self._held
        if held is not None and (self._closed_at is None or held.drained()):
            released = self._release_held()
            if not released.committed:
                return released
        failure = self._members[self._open_at].failures.take()
        if failure is not None:
            return self._settle("delivering an output record", failure)
        ready = self._next_begun or self._closed_at is not None or not self.asynchronous
        return DONE if ready else self._begin_next()

    def _begin_next(self) -> Outcome:
        """Begins the next transaction on the pool's free producer, ahead of the barrier
        that will route output to it."""
        free = self._members[1 - self._open_at]
        if free.producer is None:
            return DONE
        try:
            self._call("begin_transaction", free.producer.begin_transaction)
        except _CallFailed as failed:
            return self._settle(failed.what, failed.err)
        self._next_begun = True
        return DONE

    def commit(self, offsets: list[TopicPartition], consumer: Any) -> Outcome:
        """Commits the open transaction's outputs and `offsets` atomically, then opens the
        next transaction on the same producer (nothing may be closing)."""
        assert self._closed_at is None, "a closed transaction awaits its commit"
        released = self._release_held()
        if not released.committed:
            return released
        failure = self._commit_member(self._open_at, offsets, consumer.consumer_group_metadata() if offsets else None)
        if failure is not None:
            return self._settle(failure.what, failure.err)
        try:
            self._call("begin_transaction", self._producer.begin_transaction)
        except _CallFailed as failed:
            return self._settle(failed.what, failed.err)
        return DONE

    def close_epoch(self, consumer: Any) -> Outcome:
        """At a checkpoint's barrier: the open transaction takes no more output and waits
        for `commit_closed`; the pool's other producer opens the next one, for what the
        tasks produce from now on, held until the closed one's records are in the log (so
        each key's outputs keep their order). The group metadata is taken now: should the
        group move on before the commit, the commit is refused (KIP-447), not applied to
        partitions this worker no longer holds."""
        assert self._closed_at is None, "a closed transaction awaits its commit"
        if len(self._members) < 2:
            raise RuntimeError("closing an epoch needs a pool of two producers")
        released = self._release_held()  # the previous closed transaction committed: its records are in
        if not released.committed:
            return released
        closing, following = self._members[self._open_at], self._members[1 - self._open_at]
        if not self._next_begun:
            begun = self._begin_next()
            if not begun.committed:
                return begun
        self._next_begun = False
        self._closed_metadata = consumer.consumer_group_metadata()
        self._closed_at, self._open_at = self._open_at, 1 - self._open_at
        self._closed_epoch += 1
        self._held = HeldOutput(closing.producer, following.produce, self._max_message_bytes, self._wait_drained,
                                self._release_if_drained)
        self._routed.route(self._held)
        return DONE

    def _release_held(self) -> Outcome:
        """`_release`, its refusal by the open producer turned into an outcome."""
        try:
            self._release()
        except KafkaException as exc:
            return self.failed(exc)
        return DONE

    def _release(self) -> None:
        """The held records to the open transaction's producer, which takes output
        directly from now on."""
        held, self._held = self._held, None
        if held is not None:
            self._routed.route(self._members[self._open_at].produce)
            held.release()

    def _release_if_drained(self) -> bool:
        """Releases the held records if the closed transaction's producer has delivered
        its own (its delivery reports served first), for the hold to ask between polls.
        A hold thrown away with its transaction stays held."""
        if self._held is None:
            return False
        if self._closed_at is not None:
            self._members[self._closed_at].producer.poll(0)
            if not self._held.drained():
                return False
        self._release()
        return True

    def _wait_drained(self) -> None:
        """Waits until the closed transaction's records are in the log, then releases the
        held ones (for a record that cannot be held). Raises the producer's error."""
        closing = self._members[self._closed_at] if self._closed_at is not None else None
        if closing is not None:
            failure = self._flush(closing)
            if failure is not None:
                raise KafkaException(failure.err)
        self._release()

    def _flush(self, member: _Member) -> _CallFailed | None:
        """Waits until every record of the member's transaction is in the log."""
        what = "flushing the closing transaction"
        try:
            with self.waits.waiting("flush"):
                remaining = member.producer.flush(self.call_timeout_s)
        except KafkaException as exc:
            return _CallFailed(what, self._fatal_cause(member.producer, error_of(exc)))
        except SystemError as exc:
            # A producer that turns fatal (fenced) during flush makes confluent-kafka go on
            # serving callbacks with the error pending; what it raises then names no cause.
            return _CallFailed(what, self._fatal_cause(member.producer, KafkaError(KafkaError._FATAL, str(exc))))
        if remaining:
            return _CallFailed(what, KafkaError(
                KafkaError._TIMED_OUT, f"{remaining} records not delivered within {self.call_timeout_s:g}s"))
        return _delivery_failure(member)

    @property
    def closed_epoch(self) -> int:
        """The epoch `commit_closed` is to commit (taken at the barrier, on the loop)."""
        return self._closed_epoch

    def produce_closed(self, epoch: int, records: list[tuple[str, int, bytes, bytes]]) -> KafkaError | None:
        """Adds (topic, partition, key, value) records to closed epoch `epoch`'s
        transaction before its commit, off the loop's thread: the checkpoint's changelog.
        The error that refused them, if any, for `closed_committed` to act on."""
        with self._commit_lock:
            if epoch != self._closed_epoch or self._closed_at is None:
                return KafkaError(KafkaError._STATE, f"epoch {epoch}'s transaction was given up before its commit")
            member = self._members[self._closed_at]
            try:
                for topic, partition, key, value in records:
                    member.produce.blocking(topic, value, key, partition=partition)
            except KafkaException as exc:
                return self._fatal_cause(member.producer, error_of(exc))
        return None

    def commit_closed(self, epoch: int, offsets: list[TopicPartition]) -> KafkaError | None:
        """Commits closed epoch `epoch` with `offsets`, off the loop's thread: the error
        that failed it, if any, for `closed_committed` to act on."""
        with self._commit_lock:
            if epoch != self._closed_epoch or self._closed_at is None:
                return KafkaError(KafkaError._STATE, f"epoch {epoch}'s transaction was given up before its commit")
            failure = self._commit_member(self._closed_at, offsets, self._closed_metadata if offsets else None)
        return None if failure is None else failure.err

    def closed_committed(self, failure: KafkaError | None) -> Outcome:
        """Back on the loop's thread: a committed transaction frees its producer for a
        later epoch; a failed one ends the open one too (its output came from state the
        failed checkpoint would have made durable)."""
        if failure is None:
            self._closed_at, self._closed_metadata = None, None
            return DONE
        return self._settle("committing checkpoint's transaction", failure)

    def abort(self, reason: str, *, counts: bool, identity_in_doubt: bool = False) -> Outcome:
        """Gives up the open (and any closed) transaction for a reason found elsewhere (a
        checkpoint's storage failed, partitions were revoked or lost). `identity_in_doubt`:
        this process may have been replaced meanwhile (it lost its partitions)."""
        if self._producer is None:
            return Outcome(Kind.REWIND, reason, counts)
        return self._replace(reason, counts=counts, identity_in_doubt=identity_in_doubt)

    def failed(self, exc: BaseException) -> Outcome:
        """A producer exception raised outside the owner's calls: `produce()` in an
        operator was refused. A failed producer refuses with a bare `_FATAL`; any
        transactional call makes it say at once which error made it fatal."""
        return self._settle("producing an output record", self._fatal_cause(self._producer, error_of(exc)))

    @staticmethod
    def _fatal_cause(producer: Any, err: KafkaError) -> KafkaError:
        """The error that made a producer fatal, where `err` is a bare `_FATAL`: any
        transactional call on it answers with that error at once."""
        if err.code() != KafkaError._FATAL or producer is None:
            return err
        try:
            producer.abort_transaction(0)
        except KafkaException as cause:
            return error_of(cause)
        return err

    def consumer_failed(self, exc: BaseException) -> Outcome:
        return consumer_verdict(exc, self.slot_holder)

    def close(self, *, abort: bool) -> None:
        """Ends the producers. With `abort` (the worker stops after a failure) open
        transactions are aborted first, so read_committed readers need not wait out their
        timeout; whatever they held would never have been committed anyway."""
        for member in self._members:
            producer, member.producer = member.producer, None
            if producer is None:
                continue
            try:
                if abort and not self.abandoned:
                    producer.abort_transaction(EXIT_ABORT_S)
                producer.flush(0)
            except KafkaException as exc:
                log.debug("closing the producer: %s", exc)

    # -- how outcomes come about ------------------------------------------------------

    def _commit_member(self, index: int, offsets: list[TopicPartition], group_metadata: Any) -> _CallFailed | None:
        member = self._members[index]
        producer = member.producer
        try:
            if offsets:
                self._call("send_offsets_to_transaction", lambda: self._bounded(
                    "send_offsets_to_transaction",
                    lambda: producer.send_offsets_to_transaction(offsets, group_metadata, self.call_timeout_s)))
            self._call("commit_transaction", lambda: producer.commit_transaction(self.call_timeout_s))
        except _CallFailed as failed:
            return failed
        return _delivery_failure(member)  # reported during the commit's flush: it failed after all

    def _settle(self, what: str, err: KafkaError) -> Outcome:
        """The outcome of a failed call: the producers are replaced (the transactions
        aborted) unless the slot is another process's or no producer can do better."""
        reason, counts, in_doubt = verdict(what, err)
        if cause_of(err) is Cause.REFUSED:
            self._discard()
            return Outcome(Kind.FATAL, reason)
        return self._replace(reason, counts=counts, identity_in_doubt=in_doubt)

    def _replace(self, reason: str, *, counts: bool, identity_in_doubt: bool = False) -> Outcome:
        if identity_in_doubt:
            holder = self.slot_holder()
            if holder is not None:
                self._discard()
                return Outcome(Kind.REPLACED, f"{reason}; {holder}")
            log.warning("the worker slot's register lists no newer process, so this one still holds it (a "
                        "peer that took it for departed may have ended its transaction)")
        log.warning("aborting the open transaction of %r: %s", self.transactional_id, reason)
        self._discard()
        opened = self._open()
        return opened if not opened.committed else Outcome(Kind.REWIND, reason, counts)

    def _open(self) -> Outcome:
        """New producers, their transactional ids initialised (which aborts whatever the
        ids left open), a transaction begun on the first. The ids are initialised all at
        once: while the coordinator ends an id's open transaction it answers
        CONCURRENT_TRANSACTIONS, and librdkafka asks again only 0.5 s later, so each id
        after another added that wait to every replacement. While the cluster cannot be
        reached it waits, with backoff, rather than give up."""
        producers = [self.producer_factory({**self._config, "transactional.id": member.transactional_id,
                                            "on_delivery": member.failures.on_delivery})
                     for member in self._members]
        given_up = threading.Event()
        with self.waits.waiting("init_transactions"):
            outcomes = _together([
                functools.partial(self._initialise, member, producer, index == 0, given_up)
                for index, (member, producer) in enumerate(zip(self._members, producers))], given_up)
        failed = next((outcome for outcome in outcomes if outcome is not None and not outcome.committed), None)
        if failed is not None:
            for producer in producers:
                _purge(producer)
            self._discard()
            return failed
        for member, producer in zip(self._members, producers):
            member.producer, member.produce = producer, make_produce(producer)
        self._open_at, self._closed_at, self._closed_metadata = 0, None, None
        self._next_begun = False
        self._routed.route(self._members[0].produce)
        return DONE

    def _initialise(self, member: _Member, producer: Any, begin: bool, given_up: threading.Event) -> Outcome | None:
        """One id's `init_transactions` (and the first transaction's begin), retried
        until it succeeds or fails for good; None once another id failed for good
        (`given_up`) first."""
        for delay in backoff_delays():
            try:
                producer.init_transactions(self.call_timeout_s)
                if begin:
                    producer.begin_transaction()
                return DONE
            except KafkaException as exc:
                err = error_of(exc)
                cause = cause_of(err)
                if cause in (Cause.REFUSED, Cause.CLIENT_FATAL):
                    given_up.set()
                    return Outcome(Kind.FATAL, f"cannot initialise transactional id {member.transactional_id!r}: "
                                               f"{describe(err)}")
                if cause is Cause.FENCED and (holder := self.slot_holder()) is not None:
                    given_up.set()
                    return Outcome(Kind.REPLACED, f"initialising {member.transactional_id!r} was refused: {holder}")
                if given_up.is_set():
                    return None
                log.warning("waiting for the Kafka cluster to initialise transactions for %r (%s); "
                            "retrying in %.1fs", member.transactional_id, describe(err), delay)
                self.sleep(delay)
        raise AssertionError("backoff_delays never ends")

    def _discard(self) -> None:
        """Drops the producers; what they still queue belonged to abandoned transactions."""
        with self._commit_lock:
            for member in self._members:
                producer, member.producer, member.produce = member.producer, None, None
                member.failures.take()
                if producer is not None:
                    _purge(producer)
            self._closed_at, self._closed_metadata = None, None
            self._closed_epoch += 1
            self._held = None  # the open transaction's records, thrown away with it

    def _call(self, what: str, call: Callable[[], None]) -> None:
        """One transactional call, retried while its error says a retry may succeed."""
        with self.waits.waiting(what):
            for attempt in range(1, RETRIES + 1):
                try:
                    call()
                    return
                except KafkaException as exc:
                    err = error_of(exc)
                    if cause_of(err) is not Cause.RETRIABLE or attempt == RETRIES:
                        raise _CallFailed(what, err) from None
                    log.warning("%s: retriable error %s (attempt %d)", what, describe(err), attempt)
                    self.sleep(min(0.2 * attempt, 1.0))

    def _bounded(self, what: str, call: Callable[[], None]) -> None:
        """Runs a transactional call that librdkafka may not bound itself. Given up, it
        stays blocked on its thread with its producer, which is abandoned: the producer
        that replaces it fences it, so nothing it might still send can commit."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                call()
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome.append(exc)

        helper = threading.Thread(target=run, name=f"kafka-{what}", daemon=True)
        helper.start()
        helper.join(self.call_timeout_s + self.unanswered_grace_s)
        if helper.is_alive():
            self.abandoned = True
            raise KafkaException(KafkaError(
                KafkaError._TIMED_OUT, f"{what} did not return within {self.call_timeout_s:g}s "
                f"(+{self.unanswered_grace_s:g}s); this producer is abandoned"))
        if outcome[0] is not None:
            raise outcome[0]


class AtLeastOnceOwner:
    """At-least-once output: outputs are flushed, then the offsets committed through the
    consumer; a crash in between replays (and duplicates) the epoch's outputs. A rewind
    re-reads from the committed offsets; what was sent stays sent."""

    abandoned = False  # every call here is bounded by librdkafka itself
    asynchronous = False  # its commit flushes every output first: checkpoints run in the loop
    closing = False

    def __init__(self, bootstrap: str, *, extra: dict[str, str], call_timeout_s: float, slot_holder: SlotHolder,
                 waits: KafkaWaits | None = None, producer_factory: ProducerFactory = Producer) -> None:
        self.call_timeout_s = call_timeout_s
        self.slot_holder = slot_holder
        self.waits = waits if waits is not None else KafkaWaits()
        self.producer_factory = producer_factory
        self._failures = DeliveryFailures()
        self._config = base_producer_config(bootstrap, extra)
        self._config.update({"enable.idempotence": True, "on_delivery": self._failures.on_delivery})
        self._producer: Any = None
        self._routed = RoutedProduce()

    @property
    def started(self) -> bool:
        return self._producer is not None

    @property
    def produce(self) -> RoutedProduce:
        return self._routed

    def start(self) -> Outcome:
        self._producer = self.producer_factory(self._config)
        self._routed.route(make_produce(self._producer))
        return DONE

    def poll(self) -> Outcome:
        if self._producer is not None:
            try:
                self._producer.poll(0)
            except KafkaException as exc:
                return self.failed(exc)
        return DONE  # delivery failures are found before the next commit

    def commit(self, offsets: list[TopicPartition], consumer: Any) -> Outcome:
        with self.waits.waiting("flush and commit offsets"):
            remaining = self._producer.flush(self.call_timeout_s)
            failure = self._failures.take()
            if remaining or failure is not None:
                return Outcome(Kind.REWIND, f"outputs not delivered before committing offsets ({remaining} "
                                            f"pending, first error: {failure})", counts=True)
            if not offsets:
                return DONE
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                return self._refused(error_of(exc))
        return DONE

    def _refused(self, err: KafkaError) -> Outcome:
        cause = cause_of(err)
        reason = f"committing offsets refused: {describe(err)}"
        if cause is Cause.REFUSED:
            return Outcome(Kind.FATAL, reason)
        if cause in IDENTITY_IN_DOUBT:
            return self.abort(reason, counts=False, identity_in_doubt=True)
        return Outcome(Kind.REWIND, reason, counts=cause is not Cause.GROUP_MOVED)

    def abort(self, reason: str, *, counts: bool, identity_in_doubt: bool = False) -> Outcome:
        """Nothing to abort: outputs already sent stay (that is at-least-once)."""
        if identity_in_doubt and (holder := self.slot_holder()) is not None:
            return Outcome(Kind.REPLACED, f"{reason}; {holder}")
        return Outcome(Kind.REWIND, reason, counts)

    def failed(self, exc: BaseException) -> Outcome:
        """`produce()` refused: an idempotent producer that failed is replaced."""
        err = error_of(exc)
        self.close(abort=False)
        self.start()
        return Outcome(Kind.REWIND, f"producing an output record failed: {describe(err)}", counts=True)

    def consumer_failed(self, exc: BaseException) -> Outcome:
        return consumer_verdict(exc, self.slot_holder)

    def close(self, *, abort: bool) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self.call_timeout_s)


def _purge(producer: Any) -> None:
    """Drops what a producer being given up still queues."""
    try:
        producer.purge()
    except Exception:  # noqa: BLE001 - a failed producer is being discarded anyway
        pass


def _together(calls: list[Callable[[], Outcome | None]], given_up: threading.Event) -> list[Outcome | None]:
    """Runs the calls at once and returns their outcomes in order. A call that raises
    sets `given_up`, so the others stop retrying, and its exception is raised here
    once all have returned."""

    def run(call: Callable[[], Outcome | None]) -> Outcome | None:
        try:
            return call()
        except BaseException:
            given_up.set()
            raise

    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="kafka-init_transactions") as pool:
        futures = [pool.submit(run, call) for call in calls]
    return [future.result() for future in futures]
