"""The independent oracle for the running sum written to PostgreSQL.

It knows nothing of the product: it reads the tables with plain psycopg and compares them
with the input it generated. `user_totals` must hold, per user, the sum and count over
all of that user's orders (and nothing else); `order_log` must hold every input id
exactly once, and per user its rows, ordered by their count, must count 1, 2, 3, ... with
each total the previous total plus the order's amount. An at-least-once run that replays
after a crash leaves repeated ids in the log, which this catches.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg

from tests.harness.oracle import Order


@dataclass
class TableReport:
    users: int = 0
    log_rows: int = 0
    wrong_totals: list[str] = field(default_factory=list)
    missing_users: list[str] = field(default_factory=list)
    unknown_users: list[str] = field(default_factory=list)
    missing_ids: list[int] = field(default_factory=list)
    repeated_ids: list[int] = field(default_factory=list)
    unknown_ids: list[int] = field(default_factory=list)
    broken_sequences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.wrong_totals or self.missing_users or self.unknown_users or self.missing_ids
                    or self.repeated_ids or self.unknown_ids or self.broken_sequences)

    def summary(self) -> str:
        return (f"users={self.users} log_rows={self.log_rows} wrong_totals={len(self.wrong_totals)} "
                f"missing_users={len(self.missing_users)} unknown_users={len(self.unknown_users)} "
                f"missing_ids={len(self.missing_ids)} repeated_ids={len(self.repeated_ids)} "
                f"unknown_ids={len(self.unknown_ids)} broken_sequences={len(self.broken_sequences)}; e.g. "
                f"{(self.wrong_totals + self.broken_sequences)[:3]} repeated {self.repeated_ids[:5]} "
                f"missing {self.missing_ids[:5]}")


def read_tables(dsn: str) -> tuple[list[tuple], list[tuple]]:
    with psycopg.connect(dsn) as conn:
        totals = conn.execute("SELECT user_id, total, orders FROM user_totals").fetchall()
        log = conn.execute("SELECT order_id, user_id, amount, total, orders FROM order_log").fetchall()
    return totals, log


def check_tables(orders: dict[int, Order], dsn: str, refused: set[int] = frozenset()) -> TableReport:
    """`refused`: ids whose log row the table refuses (a constraint); they still count in
    the totals, and each leaves a gap in its user's sequence of counts."""
    totals, log = read_tables(dsn)
    report = TableReport(users=len(totals), log_rows=len(log))
    expected: dict[str, tuple[int, int]] = {}
    for order in orders.values():
        total, count = expected.get(order.user, (0, 0))
        expected[order.user] = (total + order.amount, count + 1)
    found = {user: (total, count) for user, total, count in totals}
    report.missing_users = sorted(set(expected) - set(found))
    report.unknown_users = sorted(set(found) - set(expected))
    for user in set(expected) & set(found):
        if found[user] != expected[user]:
            report.wrong_totals.append(f"{user}: (sum, count) {found[user]} != {expected[user]}")
    seen = Counter(order_id for order_id, *_ in log)
    report.repeated_ids = sorted(i for i, n in seen.items() if n > 1)
    report.missing_ids = sorted(set(orders) - set(refused) - set(seen))
    report.repeated_ids += sorted(set(refused) & set(seen))
    report.unknown_ids = sorted(set(seen) - set(orders))
    per_user: dict[str, list[tuple]] = defaultdict(list)
    for order_id, user, amount, total, count in log:
        per_user[user].append((count, total, order_id, amount))
    for user, rows in per_user.items():
        previous_count = previous = 0
        for count, total, order_id, amount in sorted(rows):
            order = orders.get(order_id)
            gap = count != previous_count + 1
            if (gap and not refused) or count <= previous_count or order is None or order.user != user \
                    or amount != order.amount or (not gap and total != previous + amount):
                report.broken_sequences.append(f"{user}: count {count}, total {total}, order {order_id} (amount "
                                               f"{amount}) after count {previous_count}, total {previous}")
                break
            previous_count, previous = count, total
    return report
