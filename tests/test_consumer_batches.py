"""The worker's source hands over what the consumer has queued at once, and waits only
while nothing is queued.

librdkafka's batch call waits out its whole timeout for a batch to fill, so with the
loop's 100 ms timeout every record, barrier and checkpoint settlement of a job reading
fewer than 50,000 records/s was up to 100 ms late. The timeout here is long enough that
a call waiting for its batch to fill cannot pass for one that did not wait."""

from __future__ import annotations

import time

from confluent_kafka import TopicPartition

from connectors.kafka_source import KafkaSource, consumer_config
from tests.harness.kafka import produce, unique_name

TIMEOUT_S = 20.0
BATCH = 5000


def _source(bootstrap: str, topic: str) -> KafkaSource:
    group = unique_name("batches")
    source = KafkaSource(consumer_config(bootstrap, group, group, session_timeout_ms=6000,
                                         max_poll_interval_ms=60_000, static_membership=False, worker_id="w",
                                         extra={}))
    source.take([TopicPartition(topic, 0, 0)])
    return source


def _records_after(source: KafkaSource, expected: int) -> float:
    """Seconds until `expected` records were handed over. A call may also return empty
    at once: the end of the partition is an event, which the source keeps to itself."""
    began, got = time.monotonic(), 0
    while got < expected:
        assert time.monotonic() - began < TIMEOUT_S / 2, f"{got} of {expected} records so far"
        got += len(source.consume(BATCH, TIMEOUT_S))
    assert got == expected
    return time.monotonic() - began


def test_records_are_handed_over_without_waiting_for_the_batch_to_fill(bootstrap, new_topic):
    topic = new_topic("batches", partitions=1)
    produce(bootstrap, topic, ((b"k%d" % i, b"v") for i in range(10)), partition=0)
    source = _source(bootstrap, topic)
    try:
        waited = _records_after(source, 10)  # the first records arrive while it waits
        assert waited < TIMEOUT_S / 2, f"10 records took {waited:.1f}s"
        produce(bootstrap, topic, ((b"k%d" % i, b"w") for i in range(5)), partition=0)
        waited = _records_after(source, 5)
        assert waited < TIMEOUT_S / 2, f"5 new records took {waited:.1f}s"
    finally:
        source.close()
