"""Where a partition ends, asked of a real broker right after a transaction commits.

A savepoint waits until every repartition partition is read to its end: the end it
compares with must already cover the records of the upstream transaction that just
committed, or the worker reports itself drained while those records are still to come.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer, TopicPartition

from connectors.offsets import ClusterOffsets
from tests.harness.kafka import create_topics, unique_name

pytestmark = pytest.mark.kafka

TRANSACTIONS = 200


def test_the_end_of_a_log_covers_a_transaction_as_soon_as_its_commit_returns(bootstrap):
    topic = unique_name("ends")
    create_topics(bootstrap, [topic], 1)
    offsets = ClusterOffsets({"bootstrap.servers": bootstrap})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique_name("ends-tx")})
    producer.init_transactions(30)
    written: list[int] = []
    for n in range(TRANSACTIONS):
        producer.begin_transaction()
        producer.produce(topic, str(n).encode(), on_delivery=lambda err, msg: written.append(msg.offset()))
        producer.commit_transaction(30)
        producer.poll(0)
        end = offsets.written_ends([TopicPartition(topic, 0)])[(topic, 0)]
        assert end > written[-1], f"transaction {n}: its record is at offset {written[-1]}, the end at {end}"
