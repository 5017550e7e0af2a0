"""The worker's consumer prefetches a backlog only up to a bound of records a partition.

librdkafka's byte bound on its prefetch counts keys and values only; a small record costs
several times its size in the queue. A worker reading a backlog of 60-byte records held
hundreds of MiB of prefetched records until the record count was bounded too. Counted
here by librdkafka itself (its statistics: records received per partition)."""

from __future__ import annotations

import json
import time

from confluent_kafka import TopicPartition

from connectors.kafka_source import PREFETCHED_RECORDS_PER_PARTITION, KafkaSource, consumer_config
from tests.harness.kafka import produce, unique_name

PARTITIONS = 2
BACKLOG = 2 * PREFETCHED_RECORDS_PER_PARTITION
VALUE = b'{"id": 123456, "user": "u-12345", "amount": 17}'


def _received(report: dict, topic: str) -> dict[int, int]:
    partitions = report["topics"].get(topic, {}).get("partitions", {})
    return {int(p): s["rxmsgs"] for p, s in partitions.items() if int(p) >= 0}


def test_a_backlog_of_small_records_is_prefetched_only_up_to_its_bound(bootstrap, new_topic):
    topic = new_topic("prefetch", partitions=PARTITIONS)
    for partition in range(PARTITIONS):
        produce(bootstrap, topic, ((b"k%d" % i, VALUE) for i in range(BACKLOG)), partition=partition)
    reports: list[dict[int, int]] = []
    group = unique_name("prefetch")
    config = consumer_config(bootstrap, group, group, session_timeout_ms=6000, max_poll_interval_ms=60_000,
                             static_membership=False, worker_id="w", extra={"statistics.interval.ms": "100"})
    config["stats_cb"] = lambda report: reports.append(_received(json.loads(report), topic))
    source = KafkaSource(config)
    try:
        source.take([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        consumed, deadline = 0, time.monotonic() + 30
        # Only consume calls serve the statistics: one record every 20 ms leaves the
        # prefetch nearly whole. Settled: three reports in a row (0.3 s) with nothing
        # more received on any partition.
        while not (len(reports) > 3 and reports[-1] == reports[-4] and len(reports[-1]) == PARTITIONS
                   and all(reports[-1].values())):
            assert time.monotonic() < deadline, f"the prefetch did not settle: {reports[-3:]}"
            consumed += len(source.consume(1, 0))
            time.sleep(0.02)
        received = reports[-1]
    finally:
        source.close()
    assert max(received.values()) <= PREFETCHED_RECORDS_PER_PARTITION + consumed, \
        f"prefetched {received} records of {BACKLOG:,} a partition, having consumed {consumed}"
