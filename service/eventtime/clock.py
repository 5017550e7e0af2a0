"""A task's time progress: watermarks, per origin, kept with the task's state.

A watermark says "no more records older than this are expected". It follows the input
with a bounded out-of-orderness, as Flink's: the largest event time seen minus the bound.
A bound of 0 makes it Kafka Streams' stream time.

A task reading a source partition has one origin, itself. A task reading a repartition
topic hears from every task of the stage before it (its origins): each record carries its
origin and the origin's watermark in a header, and an origin whose watermark passes a
marker interval sends a marker record to every partition, so progress reaches partitions
that get none of its records. The task's watermark is the least over all origins, so one
upstream task running ahead cannot close windows early.

Whether a record is late is decided against the watermark its own origin had when it
sent it, never against the task's, which depends on how origins interleave in the
partition (that can differ after a retry). An on-time record always arrives before its
window closes: its origin's later progress comes after it in the same partition. So the
same input gives the same windows, with or without failures.
"""

from __future__ import annotations

from typing import Any

from statestore.codecs import JSON_CODEC
from statestore.tables import ValueTable

# Before any record: earlier than every timestamp.
NO_TIME = -(2**63)
# Origins tell downstream tasks of their progress each time it passes a multiple of this.
MARKER_INTERVAL_MS = 1_000
# Header of a repartition record: b"<origin>:<watermark>:<event time>". The event time
# travels here, not as the Kafka timestamp, so the topic's time-based retention counts
# from when the record was written, never from an event time that may be months old.
# A header b"<origin>:<watermark>" under MARKER_HEADER marks a record that only carries progress.
TIME_HEADER = "eos-time"
MARKER_HEADER = "eos-watermark"
CLOCK_STATE = "clock"


def clock_uid(stage_id: str) -> str:
    """The state owner of a stage's clock, beside its operators' uids."""
    return f"{stage_id}@clock"


def is_clock_uid(uid: str) -> bool:
    return uid.endswith("@clock")


def time_header(origin: int, watermark: int, ts: int) -> list[tuple[str, bytes]]:
    return [(TIME_HEADER, b"%d:%d:%d" % (origin, watermark, ts))]


def marker_header(origin: int, watermark: int) -> list[tuple[str, bytes]]:
    return [(MARKER_HEADER, b"%d:%d" % (origin, watermark))]


def time_of(headers: list[tuple[str, bytes]] | None) -> tuple[int, int, int | None] | None:
    """(origin, watermark, event time or None for a marker) from a repartition record's
    headers; None when it has neither header."""
    for name, value in headers or ():
        if name == TIME_HEADER:
            origin, watermark, ts = value.split(b":")
            return int(origin), int(watermark), int(ts)
        if name == MARKER_HEADER:
            origin, watermark = value.split(b":")
            return int(origin), int(watermark), None
    return None


class EventClock:
    """The watermark of each origin, and of the task: the least of them."""

    def __init__(self, table: ValueTable, origins: int) -> None:
        self._table = table
        self.origins = origins
        self._views: dict[int, int] = {int(k): int(v) for k, v in table.items()}
        self.watermark = self._least()

    @classmethod
    def of(cls, state: Any, stage_id: str, origins: int) -> EventClock:
        return cls(state.value_table(f"{clock_uid(stage_id)}:{CLOCK_STATE}", JSON_CODEC), origins)

    def _least(self) -> int:
        views = self._views
        return min(views.get(origin, NO_TIME) for origin in range(self.origins))

    def observe(self, origin: int, watermark: int) -> bool:
        """Takes an origin's progress; returns whether the task's watermark moved."""
        if watermark <= self._views.get(origin, NO_TIME):
            return False
        self._views[origin] = watermark
        self._table.put(origin, watermark)
        least = self._least()
        if least > self.watermark:
            self.watermark = least
            return True
        return False
