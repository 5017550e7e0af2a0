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


def encode(order: Order) -> tuple[bytes, bytes]:
    value = json.dumps({"id": order.id, "user": order.user, "amount": order.amount}).encode()
    return f"order-{order.id}".encode(), value


def produce_orders(bootstrap: str, topic: str, orders: dict[int, Order]) -> None:
    produce(bootstrap, topic, (encode(o) for o in orders.values()))
