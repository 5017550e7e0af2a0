"""The independent oracles for tables and joins, and the input they check.

They know nothing of the product. Input is generated here as one timeline of events in
timestamp order (table changes and stream records interleaved), produced chunk by chunk
with Kafka timestamps and keys partitioned as Kafka's Java client does (murmur2), and the
oracles recompute what the joins and aggregations must give with textbook rules:

- enrichment (stream-table join): a click at time t meets the row its user had at t: the
  latest change at or before t (a delete: no row);
- table-table join: the final output, read as a table (latest value per key, a tombstone
  deletes), equals the join of the two final tables;
- group-by with subtraction: the final count per group equals the count of the final
  table's rows in that group, and no group holds a row that moved away;
- stream-stream join: every pair of one key within the time bound appears once.

An at-least-once run repeats outputs after a crash; the stream checks count every output
and catch that.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Producer


@dataclass(frozen=True)
class Event:
    """One record of the timeline: `topic` is a role ("left", "right", "table", ...)."""

    topic: str
    key: str
    value: dict | None  # None: a tombstone
    ts: int


def base_time() -> int:
    """A day ago: brokers refuse timestamps far ahead of their clock."""
    return (int(time.time()) - 86_400) * 1000


def feed(bootstrap: str, topics: dict[str, str], events: list[Event], chunk: int = 200,
         pause_s: float = 0.3) -> threading.Thread:
    """Produces the events in order, `chunk` at a time, each chunk's records flushed
    before the next chunk starts; returns the feeding thread."""

    def run() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                             "partitioner": "murmur2_random"})
        for start in range(0, len(events), chunk):
            part = events[start:start + chunk]
            # Within a chunk, one role at a time: a chunk's later roles arrive after the
            # earlier ones, the race a join must sort out by timestamps.
            for role in dict.fromkeys(e.topic for e in part):
                for event in (e for e in part if e.topic == role):
                    value = None if event.value is None else json.dumps(event.value).encode()
                    producer.produce(topics[role], value, event.key.encode(), timestamp=event.ts)
                assert producer.flush(30) == 0
            time.sleep(pause_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- enrichment: a stream joined with a table -------------------------------------------


def enrichment_events(clicks: int, users: int, seed: int) -> list[Event]:
    """Profile changes (versions, some deletes) and clicks, 1 ms apart."""
    rng = random.Random(seed)
    now, version = base_time(), 0
    events = []
    for click in range(clicks):
        if rng.random() < 0.4:
            user = f"u{rng.randrange(users)}"
            deleted = rng.random() < 0.1
            version += 1
            events.append(Event("users", user, None if deleted else {"version": version}, now))
            now += 1
        events.append(Event("clicks", f"u{rng.randrange(users)}", {"id": click}, now))
        now += 1
    return events


def expected_enrichment(events: list[Event]) -> dict[int, int | None]:
    """Click id -> the version its user had at the click's time (None: no row)."""
    rows: dict[str, int | None] = {}
    expected = {}
    for event in sorted(events, key=lambda e: (e.ts, e.topic != "users")):
        if event.topic == "users":
            rows[event.key] = None if event.value is None else event.value["version"]
        else:
            expected[event.value["id"]] = rows.get(event.key)
    return expected


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    counted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        shown = "\n  ".join(self.problems[:15])
        more = f"\n  ... and {len(self.problems) - 15} more" if len(self.problems) > 15 else ""
        return f"{len(self.problems)} problems in {self.counted} outputs:\n  {shown}{more}"


def check_enrichment(expected: dict[int, int | None], outputs: list[tuple[bytes, bytes]]) -> Report:
    report = Report(counted=len(outputs))
    seen = Counter()
    for _, value in outputs:
        row = json.loads(value)
        seen[row["id"]] += 1
        if row["id"] in expected and row["version"] != expected[row["id"]]:
            report.problems.append(f"click {row['id']} met version {row['version']}, not {expected[row['id']]}")
    report.problems += [f"click {i} appears {n} times" for i, n in sorted(seen.items()) if n > 1]
    report.problems += [f"click {i} is missing" for i in sorted(set(expected) - set(seen))]
    report.problems += [f"click {i} was never produced" for i in sorted(set(seen) - set(expected))]
    return report


# -- tables: changes to two tables ----------------------------------------------------------


def table_events(changes: int, keys: int, seed: int, roles: tuple[str, ...] = ("left", "right"),
                 delete_share: float = 0.15, value: Callable[[random.Random, int], dict] | None = None
                 ) -> list[Event]:
    """Random upserts and deletes spread over `roles`, 1 ms apart."""
    rng = random.Random(seed)
    now = base_time()
    make = value or (lambda r, i: {"v": i})
    events = []
    for i in range(changes):
        role = rng.choice(roles)
        deleted = rng.random() < delete_share
        events.append(Event(role, f"k{rng.randrange(keys)}", None if deleted else make(rng, i), now))
        now += 1
    return events


def final_tables(events: list[Event]) -> dict[str, dict[str, dict]]:
    tables: dict[str, dict[str, dict]] = defaultdict(dict)
    for event in sorted(events, key=lambda e: e.ts):
        if event.value is None:
            tables[event.topic].pop(event.key, None)
        else:
            tables[event.topic][event.key] = event.value
    return tables


def as_table(outputs: list[tuple[bytes, bytes | None]]) -> dict[str, object]:
    """A changelog read as a table: the latest value per key, a tombstone deletes it."""
    table: dict[str, object] = {}
    for key, value in outputs:
        if value is None:
            table.pop(key.decode(), None)
        else:
            table[key.decode()] = json.loads(value)
    return table


def expected_outer_join(left: dict[str, dict], right: dict[str, dict]) -> dict[str, dict]:
    return {key: {"left": left.get(key, {}).get("v"), "right": right.get(key, {}).get("v")}
            for key in set(left) | set(right)}


def compare_tables(expected: dict[str, object], actual: dict[str, object]) -> Report:
    report = Report(counted=len(actual))
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) != actual.get(key):
            report.problems.append(f"key {key}: expected {expected.get(key)!r}, the output says {actual.get(key)!r}")
    return report


def expected_group_counts(final_users: dict[str, dict]) -> dict[str, int]:
    return dict(Counter(row["country"] for row in final_users.values()))


# -- stream-stream join -------------------------------------------------------------------


def stream_join_events(records: int, keys: int, seed: int, spread_ms: int = 30_000) -> list[Event]:
    """Orders and payments of the same order ids, the payment up to `spread_ms` after
    (or a little before) its order; some orders never paid, some payments unmatched.
    In timestamp order per key, so none is late."""
    rng = random.Random(seed)
    now = base_time()
    events = []
    for i in range(records):
        key = f"o{rng.randrange(keys)}"
        events.append(Event("orders", key, {"order": i}, now + i * 10))
        if rng.random() < 0.8:
            events.append(Event("payments", key, {"payment": i}, now + i * 10 + rng.randrange(-2_000, spread_ms)))
    return sorted(events, key=lambda e: e.ts)


def flush_events(events: list[Event], partitions: int, roles: tuple[str, ...]) -> list[Event]:
    """One record per partition of each role an hour past the last event, with keys that
    meet nothing: every watermark passes every earlier record."""
    last = max(e.ts for e in events)
    return [Event(role, key, {"flush": True}, last + 3_600_000)
            for role in roles for key in keys_covering(partitions, f"~flush-{role}-")]


def keys_covering(partitions: int, prefix: str) -> list[str]:
    """A key for each partition, placed as Kafka's Java client places keys."""
    from statestore.murmur2 import partition_for  # Kafka's published hash, checked against the Java client

    found: dict[int, str] = {}
    candidate = 0
    while len(found) < partitions:
        key = f"{prefix}{candidate}"
        found.setdefault(partition_for(key.encode(), partitions), key)
        candidate += 1
    return [found[p] for p in range(partitions)]


def expected_unmatched_orders(events: list[Event], within_ms: int) -> set[int]:
    matched = {order for order, _ in expected_pairs(events, within_ms)}
    return {e.value["order"] for e in events if e.topic == "orders" and "order" in e.value} - matched


def expected_pairs(events: list[Event], within_ms: int) -> Counter:
    orders = [e for e in events if e.topic == "orders" and "order" in e.value]
    payments: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if event.topic == "payments" and "payment" in event.value:
            payments[event.key].append(event)
    pairs: Counter = Counter()
    for order in orders:
        for payment in payments[order.key]:
            if abs(order.ts - payment.ts) <= within_ms:
                pairs[(order.value["order"], payment.value["payment"])] += 1
    return pairs


def check_pairs(expected: Counter, outputs: list[tuple[bytes, bytes]], unmatched: set[int] | None = None) -> Report:
    """Every pair as often as expected; with `unmatched`, each of those orders once with
    payment None (a left join), and no other order so."""
    report = Report(counted=len(outputs))
    seen: Counter = Counter()
    for _, value in outputs:
        row = json.loads(value)
        seen[(row["order"], row["payment"])] += 1
    wanted = Counter(expected)
    for order in unmatched or ():
        wanted[(order, None)] += 1
    for pair in sorted(set(wanted) | set(seen), key=str):
        if seen[pair] != wanted[pair]:
            report.problems.append(f"pair {pair} appears {seen[pair]} times, expected {wanted[pair]}")
    return report
