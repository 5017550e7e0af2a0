"""The output side of a worker: one producer wrapper that alone knows transactions,
fencing and when a producer must be recreated.

Two implementations share one interface, chosen by the processing guarantee:

- `TransactionalProducer` (exactly-once): outputs and consumer offsets are committed
  in one Kafka transaction per checkpoint.
- `AtLeastOnceProducer`: outputs are flushed, then offsets committed through the
  consumer; a crash in between replays (and duplicates) the epoch's outputs.

librdkafka does not implement KIP-890, so after a transactional call times out the
producer's state is unknown: it is closed and replaced rather than retried blindly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from connectors.kafka_waits import KafkaWaits, backoff_delays
from eos.errors import GroupRebalancedError, ProducerFencedError, TransactionAbortedError

log = logging.getLogger(__name__)

# How long an abort may wait for the coordinator's answer, which says whether a newer
# instance fenced this producer; a healthy coordinator answers in milliseconds.
_FENCING_PROBE_S = 5.0

# A peer fencing this worker (it took it for departed) is still inside its own
# `init_transactions` when this worker learns of it: the coordinator bumps the epoch to
# abort this worker's transaction first and the peer retries after a backoff. A worker
# that initialised again at once and opened its next transaction before that retry
# would be fenced again, and again, until its checkpoints count as failing. Waiting
# this long lets the peer finish first (librdkafka's retry backoff is at most 1 s).
_PEER_FENCE_SETTLE_S = 2.0

_FENCING_CODES = {
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}
# The group coordinator refuses offsets sent with an outdated generation or member id:
# a rebalance happened meanwhile (or this worker was removed from the group).
_GROUP_GENERATION_CODES = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
}
_RETRIES = 5
# librdkafka's send_offsets_to_transaction can wait past its own timeout for a group
# coordinator it looked up while the broker was away (confluentinc/librdkafka#5456,
# #5511): seen in the soak after broker restarts, stuck for minutes. The call runs
# on a helper thread and is given up this long after its own timeout.
_UNANSWERED_GRACE_S = 5.0

ProduceFn = Callable[..., None]


@dataclass(frozen=True)
class Produce:
    """How operators send records: `fast` is the client's own produce (no wrapper on
    the hot path); when it raises BufferError (local queue full) they call `blocking`,
    which serves delivery reports until there is room."""

    fast: ProduceFn
    blocking: ProduceFn


def base_producer_config(bootstrap: str, extra: dict[str, str]) -> dict[str, Any]:
    """Settings for throughput without per-record callbacks: delivery reports only for
    failures, large local queues, Java-compatible key partitioning."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "partitioner": "murmur2_random",
        "delivery.report.only.error": True,
    }
    config.update(extra)
    return config


class OutputCommitter(Protocol):
    """What the checkpoint coordinator needs from the output side."""

    @property
    def started(self) -> bool: ...

    def start(self) -> None: ...

    def produce_fn(self) -> Produce: ...

    def poll(self) -> None: ...

    def commit(self, offsets: list[TopicPartition], consumer: Any) -> None: ...

    def abort(self) -> None: ...

    def fencing(self) -> ProducerFencedError | None:
        """The fencing behind a failure seen elsewhere (a fatal `produce()`), if any."""
        ...

    # True when a producer was left blocked in a call that never returned.
    abandoned: bool

    def close(self) -> None: ...


def _error_of(exc: KafkaException) -> KafkaError:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


class RecordTooLarge(ValueError):
    """An output record over the producer's `message.max.bytes`: no retry can send it."""


def refused_output(exc: KafkaException, topic: str, key: bytes | None, value: bytes | None) -> Exception:
    """What a `produce()` refusal means: the record's own fault (`RecordTooLarge`), the
    worker slot taken over (`ProducerFencedError`, so the worker stops with exit code 3
    rather than as an unexpected failure), or the producer's own error (`exc` itself).

    librdkafka checks the size when the record is queued, so that refusal comes at once
    and names the record that caused it, rather than failing the whole transaction later.
    """
    err = _error_of(exc)
    if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        size = len(key or b"") + len(value or b"")
        return RecordTooLarge(f"output to {topic!r} of {size} bytes is over the producer's message.max.bytes")
    if err.code() in _FENCING_CODES:
        return ProducerFencedError(f"producing to {topic!r} refused: this worker slot was taken over ({err.str()})")
    return exc


# Records purged from the local queue by our own abort (or producer replacement): they
# belonged to a transaction that is being thrown away, so their loss is intended.
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}


def _delivery_failed(holder: list[KafkaError]) -> Callable[[KafkaError | None, Any], None]:
    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None and not holder and err.code() not in _PURGED:
            where = f"{msg.topic()}[{msg.partition()}]" if msg is not None else "?"
            log.error("delivery to %s failed: %s", where, err)
            holder.append(err)

    return on_delivery


def _make_produce(producer: Producer) -> Produce:
    raw_produce = producer.produce
    poll = producer.poll

    def blocking(topic: str, value: bytes | None, key: bytes | None = None, *args: Any, **kwargs: Any) -> None:
        while True:
            try:
                raw_produce(topic, value, key, *args, **kwargs)
                return
            except BufferError:
                poll(0.05)

    return Produce(raw_produce, blocking)


class TransactionalProducer:
    """Exactly-once output: one open transaction per checkpoint epoch."""

    def __init__(self, bootstrap: str, transactional_id: str, *, extra: dict[str, str],
                 transaction_timeout_ms: int, call_timeout_s: float, waits: KafkaWaits | None = None,
                 confirm_slot: Callable[[], None] | None = None) -> None:
        self.transactional_id = transactional_id
        self.call_timeout_s = call_timeout_s
        self.waits = waits if waits is not None else KafkaWaits()
        # Raises ProducerFencedError when another instance holds this worker slot; asked
        # before the transactional id is initialised again. See SlotGuard in
        # service/membership/group.py.
        self.confirm_slot = confirm_slot
        self._config = base_producer_config(bootstrap, extra)
        self._config.update({
            "transactional.id": transactional_id,
            "transaction.timeout.ms": transaction_timeout_ms,
            "enable.idempotence": True,
        })
        self._delivery_errors: list[KafkaError] = []
        self._config["on_delivery"] = _delivery_failed(self._delivery_errors)
        self._producer: Producer | None = None
        self._produce: Produce | None = None
        # True once a producer was left blocked in a call that never returned: the
        # process must then exit without waiting on it in the producer's destructor.
        self.abandoned = False
        self.unanswered_grace_s = _UNANSWERED_GRACE_S

    @property
    def started(self) -> bool:
        return self._producer is not None

    def start(self) -> None:
        """Creates the producer, fences any older instance of this slot (aborting its
        dangling transaction) and opens the first transaction. While the cluster cannot
        be reached it waits, with backoff, rather than give up."""
        self._producer = Producer(self._config)
        self._produce = _make_produce(self._producer)
        with self.waits.waiting("init_transactions"):
            self._init_transactions()
        self._producer.begin_transaction()

    def _init_transactions(self) -> None:
        for delay in backoff_delays():
            try:
                self._producer.init_transactions(self.call_timeout_s)
                return
            except KafkaException as exc:
                err = _error_of(exc)
                if err.code() in _FENCING_CODES:
                    raise ProducerFencedError(self._fenced_message(err)) from None
                if err.fatal() and not err.retriable():
                    raise TransactionAbortedError(f"cannot initialise transactions: {err.str()}") from None
                log.warning("waiting for the Kafka cluster to initialise transactions for %r (%s); "
                            "retrying in %.1fs", self.transactional_id, err.str(), delay)
                time.sleep(delay)

    def produce_fn(self) -> Produce:
        assert self._produce is not None, "producer not started"
        return self._produce

    def poll(self) -> None:
        if self._producer is None:
            return  # not started yet: no assignment so far
        self._producer.poll(0)
        if self._delivery_errors:
            err = self._delivery_errors[0]
            self._delivery_errors.clear()
            self.abort()
            raise TransactionAbortedError(f"an output record could not be delivered: {err}")

    def commit(self, offsets: list[TopicPartition], consumer: Any) -> None:
        """Commits outputs and `offsets` atomically, then opens the next transaction.
        Raises TransactionAbortedError (rewind) or ProducerFencedError (stop)."""
        producer = self._producer
        if offsets:
            # Read on this thread: inside a rebalance callback the consumer answers no other.
            group_metadata = consumer.consumer_group_metadata()
            self._call("send_offsets_to_transaction", lambda: self._bounded(
                "send_offsets_to_transaction", lambda: producer.send_offsets_to_transaction(
                    offsets, group_metadata, self.call_timeout_s)))
        self._call("commit_transaction", lambda: producer.commit_transaction(self.call_timeout_s))
        if self._delivery_errors:  # reported during the commit's flush; it still failed
            err = self._delivery_errors[0]
            self._delivery_errors.clear()
            self.abort()
            raise TransactionAbortedError(f"an output record could not be delivered: {err}")
        producer.begin_transaction()

    def _bounded(self, what: str, call: Callable[[], None]) -> None:
        """Runs a transactional call that librdkafka may not bound itself. Given up, it
        stays blocked on its thread with this producer, which is abandoned: the abort
        that follows replaces it, and the new producer's `init_transactions` fences it,
        so nothing it might still send can commit."""
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

    def abort(self) -> None:
        """Aborts the open transaction by replacing the producer: `init_transactions`
        makes the coordinator abort whatever this transactional id left open. A plain
        `abort_transaction` can return success locally after a broker outage while the
        coordinator still holds the transaction open, which then blocks every later
        call of this producer until the transaction times out.

        Unless this process no longer holds the slot: then a new `init_transactions`
        would fence the instance that took it over. The abort itself asks the
        coordinator whether this producer was fenced, and `confirm_slot` asks the group
        whether another instance of the slot is there; a producer fenced by a peer that
        took this worker for departed initialises again (raises ProducerFencedError only
        when replaced)."""
        if self._producer is None:
            return  # never started: no transaction to abort
        try:
            with self.waits.waiting("abort_transaction"):
                self._raise_if_fenced(_FENCING_PROBE_S)
            fenced = False
        except ProducerFencedError:
            if self.confirm_slot is None:
                raise
            fenced = True
        if self.confirm_slot is not None:
            self.confirm_slot()
        if fenced:
            log.warning("transactional id %r was fenced, but no other instance of this worker slot is in "
                        "the group: a peer took this worker for departed; initialising it again in %.0fs",
                        self.transactional_id, _PEER_FENCE_SETTLE_S)
            time.sleep(_PEER_FENCE_SETTLE_S)
        self._discard()
        self._delivery_errors.clear()  # they belonged to the aborted transaction
        self.start()

    def fencing(self) -> ProducerFencedError | None:
        """The fencing behind a producer's fatal error, if that is what it was: a fatal
        `produce()` refusal names no cause, and the producer's transactional state may
        take a moment to record it."""
        try:
            self._raise_if_fenced(1.0)
        except ProducerFencedError as fenced:
            return fenced
        return None

    def _raise_if_fenced(self, wait_s: float) -> None:
        """Asks the coordinator to abort the open transaction and raises if it refuses
        because a newer instance fenced this producer. A fenced producer's fatal state
        is reported at once; otherwise the abort runs (up to `wait_s`), and whether it
        completes matters not: the caller discards this producer either way."""
        if self._producer is None:
            return
        try:
            self._producer.abort_transaction(wait_s)
        except KafkaException as exc:
            err = _error_of(exc)
            if err.code() in _FENCING_CODES or (err.fatal() and "fenced" in err.str().lower()):
                raise ProducerFencedError(self._fenced_message(err)) from None

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(0)
            except KafkaException as exc:  # fenced or failed: nothing left to save
                log.debug("closing the producer: %s", exc)
            self._producer = None

    def _discard(self) -> None:
        if self._producer is not None:
            try:
                self._producer.purge()
            except Exception:  # noqa: BLE001 - the old producer is being discarded anyway
                pass
        self._producer = None

    def _fenced_message(self, err: KafkaError) -> str:
        return (f"transactional id {self.transactional_id!r} was taken over ({err.str()}): either a newer "
                "instance of this worker slot started, or this worker was removed from the group (frozen "
                "or cut off past its session timeout) and a remaining worker ended its transaction; this "
                "instance stops")

    def _call(self, what: str, call: Callable[[], None]) -> None:
        with self.waits.waiting(what):
            self._call_with_retries(what, call)

    def _call_with_retries(self, what: str, call: Callable[[], None]) -> None:
        for attempt in range(1, _RETRIES + 1):
            try:
                call()
                return
            except KafkaException as exc:
                err = _error_of(exc)
                if err.code() in _FENCING_CODES:
                    if self.confirm_slot is None:
                        raise ProducerFencedError(self._fenced_message(err)) from None
                    self.confirm_slot()
                    raise TransactionAbortedError(
                        f"{what} refused: this producer was fenced ({err.str()}), but this process still "
                        "holds its worker slot; the work since the last checkpoint is redone") from None
                if err.retriable() and attempt < _RETRIES and err.code() != KafkaError._TIMED_OUT:
                    log.warning("%s: retriable error %s (attempt %d)", what, err, attempt)
                    time.sleep(min(0.2 * attempt, 1.0))
                    continue
                if err.code() in _GROUP_GENERATION_CODES:
                    log.info("%s refused by the group coordinator (%s): the group rebalanced; aborting",
                             what, err.name())
                    self.abort()
                    raise GroupRebalancedError(f"{what} refused: {err.str()}") from None
                log.warning("%s failed (%s); aborting the transaction", what, err)
                self.abort()
                raise TransactionAbortedError(f"{what} failed: {err.str()}") from None


class AtLeastOnceProducer:
    """At-least-once output: flush everything, then commit offsets with the consumer."""

    def __init__(self, bootstrap: str, *, extra: dict[str, str], call_timeout_s: float,
                 waits: KafkaWaits | None = None) -> None:
        self.call_timeout_s = call_timeout_s
        self.waits = waits if waits is not None else KafkaWaits()
        self._config = base_producer_config(bootstrap, extra)
        self._config["enable.idempotence"] = True
        self._delivery_errors: list[KafkaError] = []
        self._config["on_delivery"] = _delivery_failed(self._delivery_errors)
        self._producer: Producer | None = None
        self._produce: Produce | None = None

    @property
    def started(self) -> bool:
        return self._producer is not None

    def start(self) -> None:
        self._producer = Producer(self._config)
        self._produce = _make_produce(self._producer)

    def produce_fn(self) -> Produce:
        assert self._produce is not None, "producer not started"
        return self._produce

    def poll(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)

    def commit(self, offsets: list[TopicPartition], consumer: Any) -> None:
        with self.waits.waiting("flush and commit offsets"):
            self._flush_and_commit(offsets, consumer)

    def _flush_and_commit(self, offsets: list[TopicPartition], consumer: Any) -> None:
        remaining = self._producer.flush(self.call_timeout_s)
        if remaining or self._delivery_errors:
            errors = list(self._delivery_errors)
            self._delivery_errors.clear()
            raise TransactionAbortedError(
                f"outputs not delivered before committing offsets ({remaining} pending, errors: {errors})")
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                err = _error_of(exc)
                if err.code() in _FENCING_CODES:
                    raise ProducerFencedError(f"group membership was taken over: {err.str()}") from None
                raise TransactionAbortedError(f"offset commit failed: {err.str()}") from None

    def abort(self) -> None:
        """Nothing to abort: outputs already sent stay (that is at-least-once)."""

    abandoned = False  # its calls are all bounded by librdkafka

    def fencing(self) -> ProducerFencedError | None:
        return None  # no transactional id: nothing to be fenced by

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.call_timeout_s)
            self._producer = None
