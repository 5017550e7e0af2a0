"""A job's changelog topics on the cluster: where they end, trimming them, reading one
task's changes back.

Each stateful stage has one changelog topic with the partitions of its input; the task
of partition p writes its changes to partition p, inside its checkpoints' transactions
(statestore/changelog.py is the record format). Only committed records count, so the
reader is `read_committed`. Nothing but the job deletes from these topics: they are
created without time or size retention, and a snapshot's commit trims what came before
the offset it continues from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.offsets import ClusterOffsets
from eos.errors import CorruptSnapshotError, SnapshotLostError
from statestore.changelog import ChangelogFormatError, PartHeader, decode_changes

log = logging.getLogger(__name__)

# Topic settings: the job decides what is deleted, Kafka never does.
TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


def changelog_topic(group: str, stage_id: str) -> str:
    return f"{group}-{stage_id}-changelog"


@dataclass(frozen=True)
class Replayed:
    """Where a replay ended: the checkpoint it reached, with the task's input offsets
    that checkpoint committed, and how much it applied."""

    header: PartHeader
    checkpoints: int
    entries: int
    seconds: float


class Changelog:
    """Created with the worker's client settings; connects on first use."""

    def __init__(self, client_config: dict[str, Any], timeout_s: float,
                 offsets: ClusterOffsets | None = None) -> None:
        self._client_config = client_config
        self.timeout_s = timeout_s
        self.offsets = offsets if offsets is not None else ClusterOffsets(client_config)
        self._consumer: Consumer | None = None

    def written_ends(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """Where each changelog partition ends now, open transactions included: a
        snapshot taken now continues from there (every earlier checkpoint committed
        before this one began, and its changes lie below)."""
        return self.offsets.written_ends(partitions)

    def trim(self, partitions: list[TopicPartition]) -> None:
        """Deletes each partition's records before the given offset: what the newest
        snapshot already holds. A failure leaves them for the next snapshot's trim."""
        if not partitions:
            return
        try:
            futures = self.offsets.admin.delete_records(partitions, request_timeout=self.timeout_s)
            for partition, future in futures.items():
                future.result()
        except KafkaException as exc:
            log.warning("trimming changelog %s: %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions), exc)

    def replay(self, topic: str, partition: int, start: int, after_id: int, until_id: int,
               apply: Callable[[Iterable[tuple[str, bytes, bytes | None]]], int]) -> Replayed:
        """Applies the changes of checkpoints after `after_id` up to `until_id`, read from
        `start` on. `until_id` was committed, so its changes are in the log and become
        readable once its transaction's marker is: the replay waits for them up to the
        timeout. Records deleted before they were read, or a checkpoint past `until_id`,
        are errors: the state could not be rebuilt."""
        began = time.monotonic()
        where = f"changelog {topic!r} partition {partition}"
        consumer = self._reader()
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + self.timeout_s
        checkpoints = entries = 0
        last: PartHeader | None = None
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)  # returns with the first record, unlike a batch read
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise self._read_error(where, start, error)
                at = f"{where} offset {msg.offset()}"
                try:
                    header = PartHeader.from_key(msg.key(), at)
                    if header.checkpoint_id > until_id:
                        raise CorruptSnapshotError(
                            f"{at} holds changes of checkpoint {header.checkpoint_id}, after the committed "
                            f"checkpoint {until_id}: these are not the changes of this task's history")
                    if header.checkpoint_id <= after_id:
                        continue
                    entries += apply(decode_changes(msg.value() or b"", at))
                except ChangelogFormatError as exc:
                    raise CorruptSnapshotError(str(exc)) from None
                if header.part == header.parts - 1:
                    checkpoints += 1
                    last = header
                    if header.checkpoint_id == until_id:
                        return Replayed(header, checkpoints, entries, time.monotonic() - began)
        finally:
            consumer.unassign()
        raise SnapshotLostError(
            f"{where}: the changes of checkpoint {until_id} were not readable within {self.timeout_s:g}s (read "
            f"from offset {start}, last checkpoint seen {last.checkpoint_id if last else 'none'}); the state "
            "that belongs with the committed offsets cannot be rebuilt")

    @staticmethod
    def _read_error(where: str, start: int, error: KafkaError) -> Exception:
        if error.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            return SnapshotLostError(
                f"{where}: records from offset {start} on were deleted before they were replayed "
                f"({error.str()}); the state that belongs with the committed offsets cannot be rebuilt")
        return KafkaException(error)

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer({**self._client_config, "group.id": "eos-changelog-reader",
                                       "enable.auto.commit": False, "isolation.level": "read_committed",
                                       "auto.offset.reset": "error", "enable.partition.eof": True,
                                       # a replay reads to an end that is already written: a broker
                                       # long-poll would hold up each task's replay after the first
                                       "fetch.wait.max.ms": 10})
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
