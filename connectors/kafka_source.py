"""The input side of a worker: one consumer in the job's group, reading every stage's
input topic `read_committed`, never committing on its own.

Offsets are committed only inside the checkpoint's transaction (or, at-least-once,
after the checkpoint's outputs are flushed). Rebalance callbacks are handed to a
listener that only delegates; the logic lives with the tasks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from connectors.kafka_waits import KafkaWaits, backoff_delays
from eos.errors import ProducerFencedError

log = logging.getLogger(__name__)


class RebalanceListener(Protocol):
    def on_assign(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Returns the partitions with the offsets to start from."""

    def on_revoke(self, partitions: list[TopicPartition]) -> None: ...

    def on_lost(self, partitions: list[TopicPartition]) -> None: ...


def consumer_config(bootstrap: str, group: str, worker_id: str, *, session_timeout_ms: int,
                    max_poll_interval_ms: int, auto_offset_reset: str, static_membership: bool,
                    extra: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": auto_offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, min(1000, session_timeout_ms // 5)),
        "max.poll.interval.ms": max_poll_interval_ms,
        "queued.max.messages.kbytes": 32768,
        "queued.min.messages": 50_000,
        "fetch.max.bytes": 64 << 20,
        "max.partition.fetch.bytes": 8 << 20,
        # librdkafka waits a whole second after finding its local queue full: far too
        # long for a loop that drains the queue in milliseconds.
        "fetch.queue.backoff.ms": 10,
        "fetch.wait.max.ms": 50,
        "client.id": f"{group}-{worker_id}",
    }
    if static_membership:
        config["group.instance.id"] = worker_id
    config.update(extra)
    return config


_message_error = Message.error


class KafkaSource:
    """A consumer subscribed to the job's input topics, with rebalances delegated.

    The listener runs inside `consume`; from there it may call `committed`, `seek` and
    the assignment methods, but nothing that enters the client's call state again
    (consume, poll, list_topics, close): confluent-kafka keeps one call state per client,
    and a nested call clears it, which crashes the next callback of the same consume."""

    def __init__(self, config: dict[str, Any], waits: KafkaWaits | None = None) -> None:
        self.config = config
        self.waits = waits if waits is not None else KafkaWaits()
        self.consumer = Consumer(config)
        self._listener: RebalanceListener | None = None
        self._member_ids: set[str] = set()
        reset = str(config.get("auto.offset.reset", "earliest"))
        self.reset_offset = OFFSET_END if reset in ("latest", "largest", "end") else OFFSET_BEGINNING

    def subscribe(self, topics: Iterable[str], listener: RebalanceListener) -> None:
        self._listener = listener
        self.consumer.subscribe(
            list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def member_ids(self) -> set[str]:
        """Every group member id this consumer has held. A session timeout makes it
        join again under a new one, while the group may still list an older one."""
        self._note_member_id()
        return set(self._member_ids)

    def _note_member_id(self) -> None:
        try:
            member_id = self.consumer.memberid()
        except RuntimeError:  # closed
            return
        if member_id:
            self._member_ids.add(member_id)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._note_member_id()
        # The listener hears even an empty assignment: it means the worker has joined.
        positioned = self._listener.on_assign(partitions) if self._listener is not None else []
        consumer.incremental_assign(positioned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and self._listener is not None:
            self._listener.on_revoke(partitions)
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and self._listener is not None:
            self._listener.on_lost(partitions)
        consumer.incremental_unassign(partitions)

    def consume(self, max_records: int, timeout: float) -> list:
        """A batch of records; errors that only inform are logged, fatal ones raised."""
        msgs = self.consumer.consume(max_records, timeout)
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
            return True
        fatal = err.fatal() or err.code() == KafkaError._FATAL
        if err.code() == KafkaError.FENCED_INSTANCE_ID or (fatal and "fenced" in err.str().lower()):
            raise ProducerFencedError(
                f"group instance id {self.config.get('group.instance.id')!r} was taken over by a newer "
                f"instance of this worker slot ({err.str()}); this instance stops")
        if fatal:
            raise KafkaException(err)
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
        """Repositions an assigned partition; one whose fetcher has not started yet
        (seek answers 'erroneous state') is re-assigned at the offset instead."""
        try:
            self.consumer.seek(partition)
        except KafkaException as exc:
            log.debug("seek %s[%d] failed (%s); re-assigning", partition.topic, partition.partition, exc)
            bare = TopicPartition(partition.topic, partition.partition)
            self.consumer.incremental_unassign([bare])
            self.consumer.incremental_assign([partition])

    def leave_group(self, timeout_s: float, joined: Callable[[], bool],
                    still_member: Callable[[], bool | None]) -> bool:
        """Gives up every partition and leaves the group now, so the remaining workers
        take the partitions over at once rather than after the session timeout (a
        static member does not leave when it merely closes; unsubscribing makes it).

        The listener's revoke callback runs on the way (it checkpoints what it holds);
        records fetched meanwhile are dropped unprocessed, so they are neither committed
        nor lost: the next owner reads them from the committed offsets.

        librdkafka sends the LeaveGroup request only after the unassignment is done, not
        at all for a member that is still joining, and (for a static member) not once
        closing has begun. So this waits for a join in progress to finish, and after
        unsubscribing until `still_member()` (asked of the group, None: unknown) says the
        group no longer lists this worker. Returns whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        while not joined() and time.monotonic() < deadline:
            self.consume(1000, 0.1)
        self.consumer.unsubscribe()
        while time.monotonic() < deadline:
            self.consume(1000, 0.1)
            if not self.consumer.assignment() and still_member() is False:
                return True
        return False

    def close(self, timeout_s: float | None = None) -> bool:
        """Closes the consumer; the partitions it still holds are released without
        calling the listener (whatever it held was committed or is abandoned).

        With `timeout_s`, gives up waiting after that long and returns False: a consumer
        closed in the middle of a cooperative rebalance (a fenced worker waking up while
        the group moves its partitions) can wait on the group indefinitely, and a worker
        that is stopping has nothing left to hand over. The group then drops it after the
        session timeout."""
        self._listener = None
        if timeout_s is None:
            self._close_quietly()
            return True
        closer = threading.Thread(target=self._close_quietly, name="consumer-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        return not closer.is_alive()

    def _close_quietly(self) -> None:
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the consumer: %s", exc)
