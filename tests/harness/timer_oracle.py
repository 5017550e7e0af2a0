"""The independent oracle for examples/inactivity_alert.py: which alerts its timers send.

From the input as each partition holds it (in offset order) it replays the textbook
rules: the partition's watermark is the largest event time so far; each order of a user
replaces that user's timer with one at its event time + the silence; after each order,
every timer at or below the watermark fires once. Each alert must appear exactly once;
an at-least-once run that replays after a crash repeats some.
"""

from __future__ import annotations

import json
from collections import Counter


def expected_alerts(partitions: dict[int, list[tuple[str, int]]], silence_ms: int) -> set[tuple[str, int]]:
    """`partitions`: partition -> [(user, event time)] in offset order. Returns
    (user, time the timer fired) of every alert."""
    alerts: set[tuple[str, int]] = set()
    for records in partitions.values():
        watermark: int | None = None
        pending: dict[str, int] = {}
        for user, ts in records:
            pending[user] = ts + silence_ms
            watermark = ts if watermark is None else max(watermark, ts)
            for due_user, due in sorted(pending.items(), key=lambda item: item[1]):
                if due <= watermark:
                    alerts.add((due_user, due))
                    del pending[due_user]
    return alerts


def check_alerts(expected: set[tuple[str, int]], outputs: list[tuple[bytes, bytes, int]],
                 silence_ms: int) -> str | None:
    """None when `outputs` ((key, value, timestamp) of the alert topic) are exactly the
    expected alerts, each once; otherwise what is wrong."""
    seen = Counter()
    wrong = []
    for key, raw, ts in outputs:
        value = json.loads(raw)
        alert = (key.decode(), ts)
        seen[alert] += 1
        if value != {"user": alert[0], "last_order_at": ts - silence_ms, "silent_for_ms": silence_ms}:
            wrong.append((alert, value))
    repeated = [a for a, n in seen.items() if n > 1]
    missing, unexpected = expected - set(seen), set(seen) - expected
    if repeated or missing or unexpected or wrong:
        return (f"{len(outputs)} alerts for {len(expected)} expected: repeated {repeated[:3]} ({len(repeated)}), "
                f"missing {sorted(missing)[:3]} ({len(missing)}), unexpected {sorted(unexpected)[:3]} "
                f"({len(unexpected)}), wrong {wrong[:2]}")
    return None
