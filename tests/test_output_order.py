"""Closing a transaction at a checkpoint's barrier, on a real broker: per-key output
order, and a producer fenced meanwhile.

With asynchronous checkpoints, transaction n closes at the barrier and the next producer
of the owner's pool takes the output of n+1. A read_committed consumer returns records in
log order, not commit order: if n+1's first records reached the partition before n's
last ones, a key's outputs would read back out of order (a compacted topic would keep a
stale value), though each was committed once.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer

from connectors.transactions import Kind, TransactionOwner
from tests.harness.kafka import create_topics, read_all, unique_name

pytestmark = pytest.mark.kafka

# Enough records before the barrier, sent in small batches one request at a time, that
# the closing producer still has batches to send when the next one produces its first.
BEFORE_BARRIER = 200_000
SMALL_BATCHES = {"batch.num.messages": "100", "max.in.flight.requests.per.connection": "1"}
AFTER_BARRIER = 10


def test_a_keys_outputs_read_back_in_the_order_they_were_produced_across_the_barrier(bootstrap):
    topic = unique_name("order")
    create_topics(bootstrap, [topic], 1)
    group_client = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("order-group")})
    owner = TransactionOwner(bootstrap, [unique_name("tx-a"), unique_name("tx-b")], extra=SMALL_BATCHES,
                             transaction_timeout_ms=60_000, call_timeout_s=30.0, slot_holder=lambda: None)
    try:
        assert owner.start().committed
        for seq in range(BEFORE_BARRIER):
            owner.produce.blocking(topic, str(seq).encode(), b"key")
        assert owner.close_epoch(group_client).committed
        for seq in range(BEFORE_BARRIER, BEFORE_BARRIER + AFTER_BARRIER):
            owner.produce.blocking(topic, str(seq).encode(), b"key")
            assert owner.poll().committed  # as the loop does between batches
        assert owner.commit_closed(owner.closed_epoch, []) is None
        assert owner.closed_committed(None).committed
        assert owner.commit([], group_client).committed
    finally:
        owner.close(abort=False)
        group_client.close()

    seen = [int(value) for _, value in read_all(bootstrap, topic)]  # read_committed, in log order
    assert len(seen) == BEFORE_BARRIER + AFTER_BARRIER
    out_of_order = [(a, b) for a, b in zip(seen, seen[1:]) if b < a]
    assert not out_of_order, f"{len(out_of_order)} records read back before an earlier one, e.g. {out_of_order[:3]}"


def test_a_producer_fenced_while_its_transaction_closes_stops_as_replaced(bootstrap):
    """A newer process of the slot initialised the transactional id: the closed
    transaction cannot commit, and the owner says the slot is taken."""
    topic = unique_name("order")
    create_topics(bootstrap, [topic], 4)
    ids = [unique_name("tx-a"), unique_name("tx-b")]
    group_client = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("order-group")})
    owner = TransactionOwner(bootstrap, ids, extra={}, transaction_timeout_ms=60_000, call_timeout_s=30.0,
                             slot_holder=lambda: "a newer process holds the slot")
    try:
        assert owner.start().committed
        Producer({"bootstrap.servers": bootstrap, "transactional.id": ids[0]}).init_transactions(30)
        for seq in range(1000):
            owner.produce.blocking(topic, str(seq).encode(), str(seq).encode())
        assert owner.close_epoch(group_client).committed
        outcome = owner.closed_committed(owner.commit_closed(owner.closed_epoch, []))
        assert outcome.kind is Kind.REPLACED, outcome
        assert "fenced" in outcome.reason, outcome
    finally:
        owner.close(abort=False)
        group_client.close()
