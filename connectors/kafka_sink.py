"""How operators hand records to a Kafka producer: the hot path's produce functions, the
producer settings, and the one refusal that is a record's own fault.

Which transaction the records belong to, and everything that can go wrong with it, is
the business of the transaction's owner (connectors/transactions.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from connectors.kafka_errors import error_of

log = logging.getLogger(__name__)

ProduceFn = Callable[..., None]


@dataclass(frozen=True)
class Produce:
    """How operators send records: `fast` is the client's own produce (no wrapper on
    the hot path); when it raises BufferError (local queue full) they call `blocking`,
    which serves delivery reports until there is room."""

    fast: ProduceFn
    blocking: ProduceFn


class RoutedProduce:
    """The produce functions of whichever producer takes output now: operators call
    `out.fast(...)` through this one object, and the transaction's owner points it at
    the producer of the open transaction (each checkpoint in flight keeps its own)."""

    __slots__ = ("fast", "blocking")

    def __init__(self) -> None:
        self.fast: ProduceFn = _not_started
        self.blocking: ProduceFn = _not_started

    def route(self, produce: Produce) -> None:
        self.fast, self.blocking = produce.fast, produce.blocking


def _not_started(*_: Any, **__: Any) -> None:
    raise RuntimeError("no producer is open yet")


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


def make_produce(producer: Any) -> Produce:
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


class RecordTooLarge(ValueError):
    """An output record over the producer's `message.max.bytes`: no retry can send it."""


def oversized(exc: KafkaException, topic: str, key: bytes | None, value: bytes | None) -> RecordTooLarge | None:
    """The record's own fault, if `produce()` refused it for its size. librdkafka checks
    the size when the record is queued, so the refusal comes at once and names the record
    that caused it; every other refusal is the producer's, for the transaction's owner."""
    if error_of(exc).code() != KafkaError.MSG_SIZE_TOO_LARGE:
        return None
    size = len(key or b"") + len(value or b"")
    return RecordTooLarge(f"output to {topic!r} of {size} bytes is over the producer's message.max.bytes")


# Records purged from the local queue when a producer is replaced: they belonged to a
# transaction that is being thrown away, so their loss is intended.
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}


class DeliveryFailures:
    """The first delivery failure since the last look, from the producer's callback."""

    def __init__(self) -> None:
        self.first: KafkaError | None = None

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and self.first is None and err.code() not in _PURGED:
            where = f"{msg.topic()}[{msg.partition()}]" if msg is not None else "?"
            log.error("delivery to %s failed: %s", where, err)
            self.first = err

    def take(self) -> KafkaError | None:
        first, self.first = self.first, None
        return first
