"""Where a partition ends, and what a group has committed, asked of a real broker.

A savepoint waits until every repartition partition is read to its end: the end it
compares with must already cover the records of the upstream transaction that just
committed, or the worker reports itself drained while those records are still to come.
A worker resuming from a savepoint compares the group's commits with it before its own
producers exist, so a transaction a killed process left open must not hold that up.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

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


def test_a_groups_settled_commits_are_its_last_completed_ones_while_a_transaction_holds_newer_ones_open(bootstrap):
    """What a resumed worker compares with its savepoint before its own producers exist:
    a transaction a killed process left open must neither be waited for nor counted."""
    topic, group = unique_name("settled"), unique_name("settled-group")
    create_topics(bootstrap, [topic], 2)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 5, metadata="eos1:checkpoint 3")], asynchronous=False)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique_name("settled-tx"),
                         "transaction.timeout.ms": 300_000})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.send_offsets_to_transaction([TopicPartition(topic, 0, 9, metadata="eos1:checkpoint 4")],
                                         consumer.consumer_group_metadata(), 30)
    consumer.close()

    began = time.monotonic()
    settled = ClusterOffsets({"bootstrap.servers": bootstrap}).settled_commits(
        group, [TopicPartition(topic, 0), TopicPartition(topic, 1)])
    assert time.monotonic() - began < 5, "waited for the open transaction"
    assert sorted((tp.partition, tp.offset, tp.metadata) for tp in settled) == [(0, 5, "eos1:checkpoint 3"),
                                                                              (1, -1001, None)]
    producer.abort_transaction(30)
