"""The independent oracle for state with a time to live (tests/jobs/ttl_orders.py).

It knows nothing of the product. From the input as each partition holds it (in offset
order) it replays the rules the documentation gives: a partition's watermark before a
record is the largest event time before it minus the out-of-orderness bound; a record
reads and writes state at the later of its event time and that watermark; a value
written at w is gone for a read at t when w + ttl <= t; a write keeps the later of its
time and a living value's. It derives every output, then checks each appears exactly
once with that value.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from tests.harness.window_oracle import FLUSH_USER, TimedOrder


class _Expiring:
    """One user's value (or one map entry) with the time it was last written."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self.values: dict = {}
        self.expired = 0  # reads that found a value past its time

    def get(self, name, now: int):
        found = self.values.get(name)
        if found is None:
            return None
        if found[0] + self.ttl_ms <= now:
            del self.values[name]
            self.expired += 1
            return None
        return found[1]

    def put(self, name, value, now: int) -> None:
        found = self.values.get(name)
        written = now if found is None or found[0] + self.ttl_ms <= now else max(found[0], now)
        self.values[name] = (written, value)

    def live(self, prefix, now: int) -> list:
        return sorted(name[1] for name in list(self.values) if name[0] == prefix and self.get(name, now) is not None)


@dataclass
class TtlExpected:
    totals: dict[int, dict]  # order id -> the totals output
    recall: dict[int, dict]  # order id -> the recall output
    expiries: int = 0  # reads that found a value past its time
    users: set[str] = field(default_factory=set)


def expected_ttl(partitions: dict[int, list[TimedOrder]], ttl_ms: int, out_of_orderness_ms: int) -> TtlExpected:
    """`partitions`: partition -> its orders in offset order (each user on one partition)."""
    totals_out, recall_out, users = {}, {}, set()
    totals, previous, by_size = _Expiring(ttl_ms), _Expiring(ttl_ms), _Expiring(ttl_ms)
    for orders in partitions.values():
        watermark = None
        for order in orders:
            now = order.ts if watermark is None else max(order.ts, watermark)
            user = order.user
            acc = totals.get(user, now) or {"orders": 0, "amount": 0}
            acc = {"orders": acc["orders"] + 1, "amount": acc["amount"] + order.amount, "last_id": order.id}
            totals.put(user, acc, now)
            size = order.amount % 4
            recalled = {"id": order.id, "previous": previous.get(user, now), "same_size": by_size.get((user, size), now),
                        "sizes": by_size.live(user, now)}
            previous.put(user, order.id, now)
            by_size.put((user, size), order.id, now)
            if user != FLUSH_USER:
                totals_out[order.id], recall_out[order.id] = acc, recalled
                users.add(user)
            candidate = order.ts - out_of_orderness_ms
            watermark = candidate if watermark is None else max(watermark, candidate)
    return TtlExpected(totals_out, recall_out, totals.expired + previous.expired + by_size.expired, users)


def check_outputs(expected: dict[int, dict], outputs: list[tuple[bytes, bytes]], id_field: str) -> list[str]:
    """Problems: an order's output missing, repeated or with another value."""
    seen = Counter()
    problems = []
    for key, raw in outputs:
        if key.decode() == FLUSH_USER:
            continue
        value = json.loads(raw)
        order_id = value[id_field]
        seen[order_id] += 1
        if expected.get(order_id) != value and len(problems) < 8:
            problems.append(f"order {order_id}: {value}, expected {expected.get(order_id)}")
    repeated = [i for i, n in seen.items() if n > 1]
    missing = sorted(set(expected) - set(seen))
    if repeated:
        problems.append(f"{len(repeated)} orders with more than one output, e.g. {repeated[:5]}")
    if missing:
        problems.append(f"{len(missing)} orders without output, e.g. {missing[:5]}")
    return problems
