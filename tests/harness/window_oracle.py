"""The independent oracle for windowed jobs, and the event-time input it checks.

It knows nothing of the product: from the input it generated (which partition each
order went to, in which order) it recomputes, with the textbook rules, which records are
late and what every window holds, then checks the output topic against that.

- A source partition's watermark before a record is the largest event time of the
  records before it in that partition, minus the out-of-orderness bound.
- A record is late for a window when the window's end plus the grace period is at or
  below that watermark; it is dropped from that window. A record late for all its
  windows counts as a dropped late record.
- Each partition ends with a flush record far in the future, so every other window
  closes.

With emit=final, every window must appear exactly once with its value; with
emit=update, each window's updates must count 1, 2, ... n once each and end at its
value. An at-least-once run that replays after a crash repeats outputs and fails.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

FLUSH_USER = "~flush"


@dataclass(frozen=True)
class TimedOrder:
    id: int
    user: str
    amount: int
    ts: int
    partition: int


@dataclass(frozen=True)
class WindowRules:
    size_ms: int
    advance_ms: int | None  # None: tumbling
    grace_ms: int
    out_of_orderness_ms: int

    def starts(self, ts: int) -> list[int]:
        step = self.advance_ms or self.size_ms
        last = ts - ts % step
        return [s for s in range(last - self.size_ms + step, last + 1, step) if s <= ts < s + self.size_ms]


def timed_orders(count: int, partitions: int, users: int = 20, seed: int = 5, late_every: int = 37,
                 step_ms: int = 40, empty_partitions: tuple[int, ...] = ()) -> list[TimedOrder]:
    """Orders in production order: event time rises `step_ms` per order from a day ago
    (brokers refuse timestamps far ahead of their clock) with up to ±700 ms of disorder,
    and every `late_every`-th order is 15 s behind (late). Each partition ends with a
    flush order an hour past the last. `empty_partitions` get nothing at all."""
    rng = random.Random(seed)
    base_ms = (int(time.time()) - 86_400) // 60 * 60_000
    orders = []
    for i in range(count):
        ts = base_ms + i * step_ms + rng.randint(-700, 700)
        if i % late_every == late_every - 1:
            ts -= 15_000
        used = [p for p in range(partitions) if p not in empty_partitions]
        orders.append(TimedOrder(i, f"user-{rng.randrange(users)}", rng.randint(1, 100), ts, used[i % len(used)]))
    flush_ts = base_ms + count * step_ms + 3_600_000
    orders += [TimedOrder(count + p, FLUSH_USER, 0, flush_ts, p) for p in range(partitions) if p not in empty_partitions]
    return orders


def encode(order: TimedOrder) -> bytes:
    return json.dumps({"id": order.id, "user": order.user, "amount": order.amount, "ts": order.ts}).encode()


@dataclass
class Expected:
    windows: dict[tuple[str, int], dict[str, int]]  # (user, start) -> {"orders", "amount"}
    late_records: int
    late_ids: set[int] = field(default_factory=set)
    ends: dict[tuple[str, int], int] | None = None  # sessions: each window's own end
    # Count windows are named by their end (early windows of a sliding count share start
    # 0): (user, end) -> start.
    starts: dict[tuple[str, int], int] | None = None


def expected_windows(orders: list[TimedOrder], rules: WindowRules, resumed_at: int | None = None) -> Expected:
    """`resumed_at`: the id of the first order read after a savepoint; from there every
    partition's watermark starts at the least watermark any partition had."""
    watermark: dict[int, int] = {}
    floor: int | None = None
    windows: dict[tuple[str, int], dict[str, int]] = {}
    late, late_ids = 0, set()
    for order in orders:
        if order.id == resumed_at:
            floor, watermark = min(watermark.values()), {}
        before = watermark.get(order.partition, floor)
        accepted = False
        for start in rules.starts(order.ts):
            if before is not None and start + rules.size_ms + rules.grace_ms <= before:
                continue
            accepted = True
            if order.user != FLUSH_USER:
                acc = windows.setdefault((order.user, start), {"orders": 0, "amount": 0})
                acc["orders"] += 1
                acc["amount"] += order.amount
        if not accepted:
            late += 1
            late_ids.add(order.id)
        candidate = order.ts - rules.out_of_orderness_ms
        watermark[order.partition] = candidate if before is None else max(before, candidate)
    return Expected(windows, late, late_ids)


def _on_time_by_user(orders: list[TimedOrder], grace_ms: int,
                     out_of_orderness_ms: int) -> tuple[dict[str, list[TimedOrder]], set[int]]:
    """For shapes where a record is late when its event time is `grace_ms` or more
    behind its partition's watermark (sessions, sliding): each user's on-time orders, in
    production order, and the ids of the late ones."""
    watermark: dict[int, int] = {}
    on_time: dict[str, list[TimedOrder]] = defaultdict(list)
    late_ids = set()
    for order in orders:
        before = watermark.get(order.partition)
        if before is not None and order.ts + grace_ms <= before:
            late_ids.add(order.id)
        elif order.user != FLUSH_USER:
            on_time[order.user].append(order)
        candidate = order.ts - out_of_orderness_ms
        watermark[order.partition] = candidate if before is None else max(before, candidate)
    return on_time, late_ids


def expected_sessions(orders: list[TimedOrder], gap_ms: int, grace_ms: int, out_of_orderness_ms: int) -> Expected:
    """Session windows: a record is late when its event time is `grace_ms` or more
    behind its partition's watermark; the on-time records of a user, in event-time
    order, form one session while each starts before the previous one's last + gap."""
    on_time, late_ids = _on_time_by_user(orders, grace_ms, out_of_orderness_ms)
    windows: dict[tuple[str, int], dict[str, int]] = {}
    ends: dict[tuple[str, int], int] = {}
    for user, records in on_time.items():
        start = end = None
        for order in sorted(records, key=lambda o: o.ts):
            if end is None or order.ts >= end:
                start, end = order.ts, order.ts + gap_ms
                windows[(user, start)] = {"orders": 0, "amount": 0}
            else:
                end = max(end, order.ts + gap_ms)
            windows[(user, start)]["orders"] += 1
            windows[(user, start)]["amount"] += order.amount
            ends[(user, start)] = end
    return Expected(windows, len(late_ids), late_ids, ends)


def expected_sliding(orders: list[TimedOrder], size_ms: int, grace_ms: int, out_of_orderness_ms: int) -> Expected:
    """Sliding windows, from their definition: a record is late when its event time is
    `grace_ms` or more behind its partition's watermark; over the on-time records of a
    user, a window [s, s + size] (both ends inclusive) exists for s = t - size for every
    record time t, and for s = t + 1 when some record lies in (t, t + 1 + size]; it holds
    every on-time record of the user in its range."""
    on_time, late_ids = _on_time_by_user(orders, grace_ms, out_of_orderness_ms)
    windows: dict[tuple[str, int], dict[str, int]] = {}
    for user, records in on_time.items():
        times = sorted({o.ts for o in records})
        starts = {t - size_ms for t in times}
        starts |= {t + 1 for t in times if any(t < r <= t + 1 + size_ms for r in times)}
        for start in starts:
            inside = [o for o in records if start <= o.ts <= start + size_ms]
            windows[(user, start)] = {"orders": len(inside), "amount": sum(o.amount for o in inside)}
    return Expected(windows, len(late_ids), late_ids)


def expected_count_windows(orders: list[TimedOrder], size: int, slide: int, unfilled: bool = False) -> Expected:
    """Count windows: each user's records numbered in the order its partition holds
    them (each user's orders go to one partition); a window ends after every `slide`-th
    record, at position c, and holds positions [max(0, c - size), c). Windows that never
    fill are expected only with `unfilled` (emit=update sends them as they grow)."""
    by_user: dict[str, list[TimedOrder]] = defaultdict(list)
    for order in orders:
        if order.user != FLUSH_USER:
            by_user[order.user].append(order)
    windows: dict[tuple[str, int], dict[str, int]] = {}
    starts: dict[tuple[str, int], int] = {}
    for user, records in by_user.items():
        last = len(records) + (size if unfilled else 1)
        for end in range(slide, last, slide):
            inside = records[max(0, end - size):end]
            if not inside:
                continue
            windows[(user, end)] = {"orders": len(inside), "amount": sum(o.amount for o in inside)}
            starts[(user, end)] = max(0, end - size)
    return Expected(windows, 0, set(), starts=starts)


@dataclass
class WindowReport:
    outputs: int = 0
    windows: int = 0
    missing: int = 0
    unexpected: int = 0
    repeated: int = 0
    wrong: int = 0
    bad_updates: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.repeated or self.wrong or self.bad_updates)

    def note(self, text: str) -> None:
        if len(self.examples) < 8:
            self.examples.append(text)

    def summary(self) -> str:
        return (f"outputs={self.outputs} windows={self.windows} missing={self.missing} unexpected={self.unexpected} "
                f"repeated={self.repeated} wrong={self.wrong} bad_updates={self.bad_updates}; e.g. {self.examples}")


def check_windows(expected: Expected, outputs: list[tuple[bytes, bytes, int]], emit: str,
                  size_ms: int, inclusive_end: bool = False, final_ts: bool = True) -> WindowReport:
    """`outputs`: (key, value, Kafka timestamp) in the order a read_committed consumer
    saw them (a user's outputs share one partition, so theirs are in commit order).
    A final result's timestamp is its window's last millisecond: end - 1, or end for
    windows whose end is inclusive (sliding); `final_ts` False skips that check (count
    windows carry the time of their last record). With emit=update, the updates of a
    window made from another one start at the count it was made with."""
    report = WindowReport(outputs=len(outputs), windows=len(expected.windows))
    seen: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for key, raw, ts in outputs:
        value = json.loads(raw)
        user = key.decode()
        if user == FLUSH_USER:
            continue
        if expected.starts is not None:
            window = (user, value["end"])
            if value["start"] != expected.starts.get(window, value["start"]):
                report.wrong += 1
                report.note(f"{window}: start {value['start']}")
        else:
            window = (user, value["start"])
            want_end = value["start"] + size_ms if expected.ends is None else expected.ends.get(window, value["end"])
            if value["end"] != want_end:
                report.wrong += 1
                report.note(f"{window}: end {value['end']}")
        last_ms = value["end"] if inclusive_end else value["end"] - 1
        if emit == "final" and final_ts and ts != last_ms:
            report.wrong += 1
            report.note(f"{window}: timestamp {ts}, not {last_ms}")
        seen[window].append(value["value"])
    for window, values in seen.items():
        want = expected.windows.get(window)
        if want is None:
            report.unexpected += 1
            report.note(f"{window}: not an expected window ({values[:3]})")
            continue
        if emit == "final":
            if len(values) > 1:
                report.repeated += 1
                report.note(f"{window}: {len(values)} final results")
        else:
            counts = Counter(v["orders"] for v in values)
            lowest = min(counts) if inclusive_end else 1
            if sorted(counts) != list(range(lowest, want["orders"] + 1)) or max(counts.values()) > 1:
                report.bad_updates += 1
                report.note(f"{window}: update counts {sorted(counts.elements())[:12]} for {want['orders']} orders")
        if values[-1] != want:
            report.wrong += 1
            report.note(f"{window}: last {values[-1]}, expected {want}")
    missing = set(expected.windows) - set(seen)
    report.missing = len(missing)
    for window in sorted(missing)[:3]:
        report.note(f"{window}: no output")
    return report
