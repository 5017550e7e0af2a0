"""Input for running-sum tests: orders with unique ids, a fixed set of users and keys
that have nothing to do with the user (so the job must repartition)."""

from __future__ import annotations

import json
import random

from tests.harness.kafka import produce
from tests.harness.oracle import Order


def make_orders(count: int, users: int = 50, seed: int = 7, start_id: int = 0) -> dict[int, Order]:
    rng = random.Random(seed)
    return {i: Order(i, f"user-{rng.randrange(users)}", rng.randint(1, 100))
            for i in range(start_id, start_id + count)}


def encode(order: Order, key_by_user: bool = False) -> tuple[bytes, bytes]:
    value = json.dumps({"id": order.id, "user": order.user, "amount": order.amount}).encode()
    key = order.user if key_by_user else f"order-{order.id}"
    return key.encode(), value


def produce_orders(bootstrap: str, topic: str, orders: dict[int, Order], key_by_user: bool = False) -> None:
    """`key_by_user` puts each user's orders in one partition, in order: then the
    per-user output sequence is deterministic and two runs can be compared exactly."""
    produce(bootstrap, topic, (encode(o, key_by_user) for o in orders.values()))
