"""Where partitions start and end, and how many a topic has, asked of the cluster.

A batched ListOffsets (`read_committed`: the end is the last stable offset) on an admin
client of the worker's own answers in about a millisecond. The consumer's per-partition
watermark calls would queue behind its fetch long-polls on the same broker connection,
about 50 ms each, which a savepoint would pay on every drain check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from connectors.kafka_errors import Cause, cause_of, describe, error_of
from connectors.kafka_waits import KafkaWaits, backoff_delays

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
# How long a listing rides out a cluster that answers "ask again" (leadership moving
# after a broker restart, a partition without a leader for a moment).
RETRY_FOR_S = 60.0

T = TypeVar("T")


class ClusterOffsets:
    """Created with the worker's client settings; connects on first use."""

    def __init__(self, config: dict[str, Any], admin_factory: Callable[[dict[str, Any]], Any] = AdminClient,
                 retry_pause_s: float | None = None, waits: KafkaWaits | None = None) -> None:
        self._config = config
        self._admin_factory = admin_factory
        self._admin: Any = None
        self._retry_pause_s = retry_pause_s
        self.waits = waits if waits is not None else KafkaWaits()

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = self._admin_factory(self._config)
        return self._admin

    def connect(self) -> None:
        """Connects and learns the partitions' leaders ahead of the first question. A
        restarted worker asks at its first assignment, on its way to its first output,
        and a new client answered that first question only after 1 or 3 s in about one
        restart in fifty under load. A failure leaves it to the first question."""
        try:
            self.admin.list_topics(timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            log.debug("connecting for partition offsets: %s", exc)

    def ends(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """Where a read_committed reader can read up to now (the last stable offset)."""
        return self._list(partitions, OffsetSpec.latest())

    def written_ends(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """Where the logs end, open transactions included (the high watermarks). A
        transaction's records are here before its commit returns, but the last stable
        offset passes them only once the coordinator wrote its markers, a moment later."""
        return self._list(partitions, OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED)

    def starts(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        return self._list(partitions, OffsetSpec.earliest())

    def settled_commits(self, group: str, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets (with their metadata) as of its completed commits.
        Offsets a transaction still holds open are left out, not waited for: a
        `read_committed` consumer's `committed()` waits for them to settle (KIP-447), and
        those of a process killed between sending its offsets and committing settle only
        when its slot's next process initialises the transactional id, or when the
        transaction times out."""
        def ask() -> list[TopicPartition]:
            request = [ConsumerGroupTopicPartitions(group, [TopicPartition(tp.topic, tp.partition) for tp in partitions])]
            listed = self.admin.list_consumer_group_offsets(request, require_stable=False, request_timeout=TIMEOUT_S)
            found = listed[group].result().topic_partitions or []
            for tp in found:
                if tp.error is not None:
                    raise KafkaException(tp.error)
            return found

        return self._ask("read committed offsets", ask) if partitions else []

    def _list(self, partitions: list[TopicPartition], spec: OffsetSpec,
              isolation: IsolationLevel = IsolationLevel.READ_COMMITTED) -> dict[tuple[str, int], int]:
        def ask() -> dict[tuple[str, int], int]:
            futures = self.admin.list_offsets({TopicPartition(tp.topic, tp.partition): spec for tp in partitions},
                                              isolation_level=isolation, request_timeout=TIMEOUT_S)
            return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}

        return self._ask("list partition offsets", ask) if partitions else {}

    def _ask(self, what: str, call: Callable[[], T]) -> T:
        """One request, asked again while the cluster says to (retriable errors, or no
        leader known yet) for up to RETRY_FOR_S, and for as long as it does not answer at
        all: a reading changes nothing, so one that timed out is simply asked again, and
        the loop is marked as waiting for Kafka meanwhile (/healthz says so). Any other
        error, or one that outlasts RETRY_FOR_S, is raised. Each new attempt has a new
        admin client: after a broker restart the old one keeps the partitions' old
        leader epochs, and is refused (FENCED_LEADER_EPOCH) for as long as it asks."""
        deadline = time.monotonic() + RETRY_FOR_S
        delays = backoff_delays(cap_s=5.0)
        with self.waits.waiting(what):
            while True:
                try:
                    return call()
                except KafkaException as exc:
                    err = error_of(exc)
                    cause = cause_of(err)
                    unanswered = cause is Cause.UNKNOWN_OUTCOME
                    asked_again = cause is Cause.RETRIABLE or err.code() == KafkaError._NOENT
                    if not (unanswered or asked_again) or (asked_again and time.monotonic() > deadline):
                        raise
                    log.info("%s: %s; asking again", what, describe(err))
                    self._admin = None
                    time.sleep(next(delays) if self._retry_pause_s is None else self._retry_pause_s)

    def partition_counts(self, topics: list[str]) -> dict[str, int]:
        metadata = self.admin.list_topics(timeout=TIMEOUT_S)
        counts = {}
        for topic in topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART,
                                                f"cannot read the partition count of topic {topic!r}"))
            counts[topic] = len(info.partitions)
        return counts
