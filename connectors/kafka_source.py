"""The input side of a worker: one consumer in the job's group, reading every stage's
input topic `read_committed`, never committing on its own.

Offsets are committed only inside the checkpoint's transaction (or, at-least-once,
after the checkpoint's outputs are flushed). Rebalance callbacks only record what was
assigned, revoked or lost; the worker's loop acts on it after `consume()` returns. A
newly assigned partition is paused until its task is restored and positioned, so no
record of it is fetched from a position the task does not begin at.

The group assigns each stage's lead topic; a task with several inputs takes the same
partition of its other topics along (`take` / `give_back`): they are added to the
consumer's assignment by the worker, outside the group's, and move with the lead.
A partition stays paused while anyone holds it (`hold` / `release`, each with a
reason), so pausing for a savepoint and pausing a full buffer never undo each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
    libversion,
)

from connectors.kafka_waits import KafkaWaits, backoff_delays
from connectors.reading import FETCH_WAIT_MAX_MS, learn_topics, read_available
from eos.errors import ConfigurationError

log = logging.getLogger(__name__)


ASSIGNED = "assigned"
REVOKED = "revoked"
LOST = "lost"


@dataclass(frozen=True)
class Rebalance:
    """What one rebalance callback said: partitions assigned, revoked or lost."""

    kind: str
    partitions: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class OutOfRange:
    """The consumer's position in a partition is no longer in the log."""

    topic: str
    partition: int
    offset: int


# librdkafka from 2.2 up to 2.13.0 moves a partition's position one past its end when an
# end-of-partition event is consumed; the library's own pause and resume in a rebalance
# then fetch from there, which skips the next record written or reports the partition
# as truncated (librdkafka issue 4844; fixed in 2.13.2, tests/test_consumer_position.py).
MIN_CLIENT_LIBRARY = (2, 13, 2)


def check_client_library(version: str) -> None:
    """Refuses a librdkafka whose positions cannot be trusted (see MIN_CLIENT_LIBRARY)."""
    numbers = tuple(int(part) for part in version.split("-")[0].split(".")[:3])
    if numbers < MIN_CLIENT_LIBRARY:
        wanted = ".".join(map(str, MIN_CLIENT_LIBRARY))
        raise ConfigurationError(
            f"librdkafka {version} can move a consumer's position past a partition's end and skip records "
            f"(librdkafka issue 4844); exactly-once needs librdkafka {wanted} or later (confluent-kafka>={wanted})")


# Records of a partition below which librdkafka fetches more, and the most a partition's
# prefetch holds: that bound plus one fetch of 1 MiB (at most about 16,000 records of 60 bytes).
# With 50,000 and 8 MiB fetches a worker reading a backlog of small records held 200 MiB
# more (docs/bench/README.md, "Memory with 10,000,000 keys"), at the same throughput.
PREFETCH_MIN_RECORDS = 10_000
PREFETCHED_RECORDS_PER_PARTITION = 30_000

# A member learns that its group is rebalancing only from the answer to a heartbeat, so
# each round of a rebalance (a worker joining, leaving or timed out; cooperative
# rebalancing takes two) waits up to one interval before every member rejoins. At 1 s,
# 4 workers starting together held their tasks 0.8 s later than at this interval
# (docs/bench, "Scaling per core"); a heartbeat is a few bytes.
HEARTBEAT_INTERVAL_MS = 250


def consumer_config(bootstrap: str, group: str, client_id: str, *, session_timeout_ms: int,
                    max_poll_interval_ms: int, static_membership: bool,
                    worker_id: str, extra: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Never reset on its own: a position that is gone is reported (see OutOfRange).
        "auto.offset.reset": "error",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": min(HEARTBEAT_INTERVAL_MS, session_timeout_ms // 3),
        "max.poll.interval.ms": max_poll_interval_ms,
        # The prefetch: librdkafka fetches a partition again while it holds fewer than
        # `queued.min.messages` of its records, each fetch up to one
        # `max.partition.fetch.bytes`. Its byte bound counts only keys and values, and a
        # small record costs several times its size in the queue, so the record count
        # is what bounds memory (about PREFETCHED_RECORDS_PER_PARTITION a partition).
        "queued.min.messages": PREFETCH_MIN_RECORDS,
        "queued.max.messages.kbytes": 8192,
        "max.partition.fetch.bytes": 1 << 20,
        "fetch.max.bytes": 8 << 20,
        # librdkafka waits a whole second after finding its local queue full: far too
        # long for a loop that drains the queue in milliseconds.
        "fetch.queue.backoff.ms": 10,
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        # Tasks with several inputs need to know when an input has nothing more for now.
        "enable.partition.eof": True,
        "client.id": client_id,
    }
    if static_membership:
        config["group.instance.id"] = worker_id
    config.update(extra)
    return config


_message_error = Message.error


class ConsumerFailed(KafkaException):
    """The consumer reported a fatal error: it cannot be used any more."""


def _keys(partitions: list[TopicPartition]) -> tuple[tuple[str, int], ...]:
    return tuple((tp.topic, tp.partition) for tp in partitions)


class KafkaSource:
    """A consumer subscribed to the job's input topics, its rebalances recorded.

    The callbacks run inside `consume`; there they only record, assign and pause: they
    call nothing that enters the client's call state again (consume, poll, list_topics,
    close), since confluent-kafka keeps one call state per client and a nested call
    clears it, which crashes the next callback of the same consume."""

    def __init__(self, config: dict[str, Any], start_from: str = "earliest", waits: KafkaWaits | None = None) -> None:
        check_client_library(libversion()[0])
        self.config = config
        self.waits = waits if waits is not None else KafkaWaits()
        self.consumer = Consumer(config)
        self._topics: list[str] = []
        # A fatal error to report at the next consume (fault injection, see `fail`).
        self._failure: KafkaError | None = None
        self._events: list[Rebalance] = []
        # The group's share of the assignment; `take` adds partitions beside it.
        self._group_assigned: set[tuple[str, int]] = set()
        self._out_of_range: list[OutOfRange] = []
        # Where the consumer last found each partition's end (an end-of-partition event):
        # records read later lie at or past it. Forgotten when the partition is sought.
        self.ends: dict[tuple[str, int], int] = {}
        # Why each paused partition is held: it is resumed when no reason is left.
        self._holds: dict[tuple[str, int], set[str]] = {}
        # Where each held partition's fetch resumes (see _resume).
        self._resume_at: dict[tuple[str, int], int] = {}
        # Where a partition nothing was committed for starts (the user's auto.offset.reset).
        self.reset_offset = OFFSET_END if start_from in ("latest", "largest", "end") else OFFSET_BEGINNING

    def subscribe(self, topics: Iterable[str]) -> None:
        self._topics = list(topics)
        self.consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def renew(self, close_timeout_s: float = 10.0) -> None:
        """Puts a new consumer, subscribed to the same topics under the same identity, in
        place of one that failed for good. Whatever the old one held or recorded is gone
        (the caller released its tasks)."""
        if not self.close(close_timeout_s):
            log.warning("the failed consumer did not close within %.0fs; left behind", close_timeout_s)
        self.consumer = Consumer(self.config)
        self._events, self._out_of_range = [], []
        self._group_assigned.clear()
        self.ends.clear()
        self._holds.clear()
        self._resume_at.clear()
        self.subscribe(self._topics)

    def fail(self, reason: str) -> None:
        """Makes the next `consume` report the fatal error librdkafka reports for a fenced
        static member (EOS_FAULT's `fail-consumer`: the fencing itself does not come on
        demand)."""
        self._failure = KafkaError(KafkaError._FATAL, reason, fatal=True)

    # What the transaction's owner and savepoints ask of the consumer, of whichever is current.

    def consumer_group_metadata(self) -> Any:
        return self.consumer.consumer_group_metadata()

    def commit(self, **kwargs: Any) -> Any:
        return self.consumer.commit(**kwargs)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return self.consumer.position(partitions)

    def take_out_of_range(self) -> list[OutOfRange]:
        """Positions the consumer found deleted from the log since the last call."""
        found, self._out_of_range = self._out_of_range, []
        return found

    def take_rebalances(self) -> list[Rebalance]:
        """What the callbacks recorded since the last call, in order."""
        events, self._events = self._events, []
        return events

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Recorded even when empty: it means the worker has joined.
        consumer.incremental_assign(partitions)
        if partitions:
            consumer.pause(partitions)
        self._group_assigned.update(_keys(partitions))
        self._events.append(Rebalance(ASSIGNED, _keys(partitions)))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_unassign(partitions)
        self._group_assigned.difference_update(_keys(partitions))
        self._forget(_keys(partitions))
        if partitions:
            self._events.append(Rebalance(REVOKED, _keys(partitions)))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_unassign(partitions)
        self._group_assigned.difference_update(_keys(partitions))
        self._forget(_keys(partitions))
        if partitions:
            self._events.append(Rebalance(LOST, _keys(partitions)))

    def group_assignment(self) -> set[tuple[str, int]]:
        """The partitions the group assigned to this consumer, without those `take` added."""
        return set(self._group_assigned)

    def _forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drops what was kept about partitions no longer assigned."""
        for key in partitions:
            self.ends.pop(key, None)
            self._holds.pop(key, None)
            self._resume_at.pop(key, None)

    def start_reading(self, positions: list[TopicPartition]) -> None:
        """Lets newly assigned (paused) partitions be fetched from where their tasks
        begin. A partition given an offset is sought while still paused, so that no fetch
        starts from where librdkafka placed it (its committed offset, which may be gone
        from the log). Once resumed, every partition is sought to start its fetch at once
        (see `_resume`). A position the broker must look up (the log's start or end) is
        sought only then, once: each seek to one starts a lookup of its own, and a later
        answer would take a fetch already under way back to where it began."""
        for position in positions:
            if position.offset >= 0:
                self.seek(position)
        free = [p for p in positions if not self.held((p.topic, p.partition))]
        if free:
            self.consumer.resume([TopicPartition(p.topic, p.partition) for p in free])
        for position in positions:
            if position.offset < 0 or not self.held((position.topic, position.partition)):
                self.seek(position)

    def take(self, positions: list[TopicPartition]) -> None:
        """Adds partitions to the assignment at their tasks' positions, beside what the
        group assigned: a task's other inputs, a carried task's lead, a global table.
        librdkafka starts fetching a partition of a topic it holds nothing of only once
        its next metadata refresh found the topic (0.6-1 s here); asked for the topic's
        metadata first, it fetches within a fetch wait."""
        if positions:
            learn_topics(self.consumer, {p.topic for p in positions} - {tp.topic for tp in self.consumer.assignment()})
            self.consumer.incremental_assign(positions)
            for position in positions:
                self.ends.pop((position.topic, position.partition), None)
            self._reapply_holds(positions)

    def give_back(self, partitions: list[tuple[str, int]]) -> None:
        """Removes partitions `take` added, when their task is released."""
        if partitions:
            try:
                self.consumer.incremental_unassign([TopicPartition(t, p) for t, p in partitions])
            except KafkaException as exc:  # already gone with the whole assignment (lost, closing)
                log.debug("giving back %s: %s", partitions, exc)
            self._forget(partitions)

    def hold(self, partitions: Iterable[tuple[str, int]], reason: str) -> None:
        """Pauses the partitions until every reason holding them is released."""
        new = []
        for key in partitions:
            reasons = self._holds.setdefault(key, set())
            if not reasons:
                new.append(TopicPartition(*key))
            reasons.add(reason)
        if new:
            for position in self.consumer.position(new):  # a pause drops what was fetched beyond it
                if position.offset >= 0:
                    self._resume_at[(position.topic, position.partition)] = position.offset
            self.consumer.pause(new)

    def release(self, partitions: Iterable[tuple[str, int]], reason: str) -> None:
        freed = []
        for key in partitions:
            reasons = self._holds.get(key)
            if reasons and reason in reasons:
                reasons.discard(reason)
                if not reasons:
                    del self._holds[key]
                    freed.append(TopicPartition(*key))
        if freed:
            try:
                self._resume(freed)
            except KafkaException as exc:  # no longer assigned
                log.debug("resuming %s: %s", freed, exc)

    def _resume(self, partitions: list[TopicPartition]) -> None:
        """Resumes held partitions and seeks each to where its fetch resumes. librdkafka
        acts on a resume only at its fetcher's next periodic wake-up, up to a second
        later; a seek wakes the fetcher at once."""
        self.consumer.resume(partitions)
        for tp in partitions:
            offset = self._resume_at.pop((tp.topic, tp.partition), None)
            if offset is not None:
                self.seek(TopicPartition(tp.topic, tp.partition, offset))

    def held(self, key: tuple[str, int]) -> bool:
        return bool(self._holds.get(key))

    def _reapply_holds(self, positions: list[TopicPartition]) -> None:
        held = [TopicPartition(p.topic, p.partition) for p in positions if self._holds.get((p.topic, p.partition))]
        if held:
            self.consumer.pause(held)

    def consume(self, max_records: int, timeout: float) -> list:
        """Up to `max_records` records, as soon as there is one: what is queued now, else
        the first to arrive within `timeout` and whatever came with it. librdkafka's own
        batch call waits out its whole timeout for a batch to fill, which at a moderate
        rate delays every record, barrier and checkpoint settlement by that much. Errors
        that only inform are logged, fatal ones raised."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise ConsumerFailed(failure)
        msgs = read_available(self.consumer, max_records, timeout)
        # map() calls the C method per record without a Python frame: the cheapest
        # complete check that no error event hides in the batch.
        if msgs and any(map(_message_error, msgs)):
            return [m for m in msgs if not self._is_error(m)]
        return msgs

    def _is_error(self, msg: Any) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            self.ends[(msg.topic(), msg.partition())] = msg.offset()
            return True
        if err.code() == KafkaError._AUTO_OFFSET_RESET:
            # A position that is gone: the partition stops until it is sought. Without an
            # offset it is one with nothing committed, which its task positions itself.
            if msg.offset() is not None and msg.offset() >= 0:
                self._out_of_range.append(OutOfRange(msg.topic(), msg.partition(), msg.offset()))
            return True
        if err.fatal() or err.code() == KafkaError._FATAL:
            raise ConsumerFailed(err)
        log.warning("consumer: %s", err)
        return True

    def committed_with_retry(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        """Committed offsets (with metadata); waits out an unreachable cluster with
        backoff, since nothing can be restored without them."""
        with self.waits.waiting("read committed offsets"):
            return self._committed_with_retry(partitions, timeout)

    def _committed_with_retry(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        for delay in backoff_delays():
            try:
                return self.consumer.committed(partitions, timeout=timeout)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.fatal():
                    raise
                log.warning("waiting for committed offsets (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)

    def seek(self, partition: TopicPartition) -> None:
        """Repositions an assigned partition; one whose fetcher is not running (seek
        answers 'erroneous state': not started yet, or stopped at a position that is
        gone) is re-assigned at the offset instead, and paused again if it is held."""
        key = (partition.topic, partition.partition)
        self.ends.pop(key, None)
        if self.held(key):
            if partition.offset >= 0:
                self._resume_at[key] = partition.offset
            else:  # looked up once, now (see start_reading)
                self._resume_at.pop(key, None)
        try:
            self.consumer.seek(partition)
        except KafkaException as exc:
            log.debug("seek %s[%d] failed (%s); re-assigning", partition.topic, partition.partition, exc)
            bare = TopicPartition(partition.topic, partition.partition)
            self.consumer.incremental_unassign([bare])
            self.consumer.incremental_assign([partition])
            self._reapply_holds([partition])

    def close(self, timeout_s: float | None = None) -> bool:
        """Closes the consumer; the partitions it still holds are released without
        calling the listener (whatever it held was committed or is abandoned).

        With `timeout_s`, gives up waiting after that long and returns False: a consumer
        closed in the middle of a cooperative rebalance (a fenced worker waking up while
        the group moves its partitions) can wait on the group indefinitely, and a worker
        that is stopping has nothing left to hand over. The group then drops it after the
        session timeout."""
        if timeout_s is None:
            _close_quietly(self.consumer)
            return True
        closer = threading.Thread(target=_close_quietly, args=(self.consumer,), name="consumer-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        return not closer.is_alive()


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.warning("closing the consumer: %s", exc)
