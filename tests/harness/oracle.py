"""The independent oracle for the running-sum contract.

It knows nothing of the product: it reads the input it generated and the output topic
(read_committed) with plain confluent-kafka, and checks, per user, that counts go
1, 2, 3, ... with no gap or repeat, that each sum is the previous sum plus the amount
of the record named by `last_id`, and that every input id appears as `last_id` exactly
once. An at-least-once run that replays after a crash must fail it (duplicates).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Order:
    id: int
    user: str
    amount: int


@dataclass
class OracleReport:
    outputs: int = 0
    users: int = 0
    duplicates: int = 0
    gaps: int = 0
    wrong_sums: int = 0
    wrong_users: int = 0
    missing_ids: list[int] = field(default_factory=list)
    unknown_ids: list[int] = field(default_factory=list)
    repeated_ids: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.gaps or self.wrong_sums or self.wrong_users
                    or self.missing_ids or self.unknown_ids or self.repeated_ids)

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    def summary(self) -> str:
        return (f"outputs={self.outputs} users={self.users} duplicates={self.duplicates} gaps={self.gaps} "
                f"wrong_sums={self.wrong_sums} wrong_users={self.wrong_users} "
                f"missing_ids={len(self.missing_ids)} unknown_ids={len(self.unknown_ids)} "
                f"repeated_ids={len(self.repeated_ids)}; e.g. {self.examples[:5]}")


def check_running_sum(orders: dict[int, Order], outputs: list[tuple[bytes | None, bytes | None]],
                      decode: Callable[[bytes], dict] = json.loads) -> OracleReport:
    """`outputs` in the order a read_committed consumer saw them per partition: log
    order (each user's outputs share one partition, so a user's outputs of two
    transactions that overlapped in the log read back interleaved, and fail here);
    `decode` turns a value into its fields (JSON by default)."""
    report = OracleReport(outputs=len(outputs))
    state: dict[str, tuple[int, int]] = {}  # user -> (count, sum)
    seen_ids: dict[int, int] = defaultdict(int)
    for key, raw in outputs:
        value = decode(raw)
        user, count, total, last_id = value["user"], value["count"], value["sum"], value["last_id"]
        if key is not None and key.decode() != user:
            report.wrong_users += 1
            report.note(f"key {key!r} carries user {user!r}")
        seen_ids[last_id] += 1
        order = orders.get(last_id)
        if order is None:
            report.unknown_ids.append(last_id)
            continue
        if order.user != user:
            report.wrong_users += 1
            report.note(f"id {last_id} belongs to {order.user}, output says {user}")
        prev_count, prev_sum = state.get(user, (0, 0))
        if count <= prev_count:
            report.duplicates += 1
            report.note(f"{user}: count {count} after {prev_count} (repeat)")
            continue
        if count != prev_count + 1:
            report.gaps += 1
            report.note(f"{user}: count jumps {prev_count} -> {count}")
        elif total != prev_sum + order.amount:
            report.wrong_sums += 1
            report.note(f"{user}: sum {total} != {prev_sum} + {order.amount} (id {last_id})")
        state[user] = (count, total)
    report.users = len(state)
    report.missing_ids = sorted(set(orders) - set(seen_ids))
    report.repeated_ids = sorted(i for i, n in seen_ids.items() if n > 1)
    return report
