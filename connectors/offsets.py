"""Where partitions start and end, and how many a topic has, asked of the cluster.

A batched ListOffsets (`read_committed`: the end is the last stable offset) on an admin
client of the worker's own answers in about a millisecond. The consumer's per-partition
watermark calls would queue behind its fetch long-polls on the same broker connection,
about 50 ms each, which a savepoint would pay on every drain check.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

TIMEOUT_S = 10.0


class ClusterOffsets:
    """Created with the worker's client settings; connects on first use."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._admin: AdminClient | None = None

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self._config)
        return self._admin

    def ends(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        return self._list(partitions, OffsetSpec.latest())

    def starts(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        return self._list(partitions, OffsetSpec.earliest())

    def _list(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self.admin.list_offsets({TopicPartition(tp.topic, tp.partition): spec for tp in partitions},
                                          isolation_level=IsolationLevel.READ_COMMITTED,
                                          request_timeout=TIMEOUT_S)
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}

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
