"""The dead-letter topic: where a record that cannot be processed goes, untouched.

The record keeps its original key and value bytes so that a fixed job, or a person, can
replay it; everything known about the failure travels in headers, because rewriting the
value would lose exactly the bytes that could not be read. The record is produced by the
job's transactional producer, so it is committed with the checkpoint that read it:
dead-lettered records are exactly-once like any other output.
"""

from __future__ import annotations

import time
from typing import Any

from connectors.kafka_sink import Produce

HEADER_PREFIX = "eos."
# Header values are for people reading the topic; an exception message can be huge.
_MAX_HEADER_TEXT = 1000


def dead_letter_topic(group: str) -> str:
    """One topic per job (its group), created at start with the input's partition count."""
    return f"{group}-dlq"


def failure_headers(topic: str, partition: int, offset: int, operator: str | None,
                    error_class: str, message: str) -> list[tuple[str, bytes]]:
    """Where the record came from and why it failed, as Kafka headers."""
    return [
        ("eos.source.topic", topic.encode()),
        ("eos.source.partition", str(partition).encode()),
        ("eos.source.offset", str(offset).encode()),
        ("eos.operator", (operator or "").encode()),
        ("eos.error.class", error_class.encode()),
        ("eos.error.message", message.encode("utf-8", "replace")[:_MAX_HEADER_TEXT]),
        ("eos.timestamp", str(int(time.time() * 1000)).encode()),
    ]


class DeadLetterSink:
    """Sends failed records to one dead-letter topic through the job's transaction."""

    def __init__(self, topic: str) -> None:
        self.topic = topic

    def send(self, produce: Produce, msg: Any, headers: list[tuple[str, bytes]]) -> None:
        # Blocking produce: under back-pressure a dead letter must not be dropped on the
        # floor any more than an output record.
        produce.blocking(self.topic, msg.value(), msg.key(), headers=headers)
