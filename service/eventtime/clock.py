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
# Header of a repartition record that feeds a task of several inputs, off event time:
# b"<timestamp>", the time that task orders it by (the Kafka timestamp is when it was
# written, for the same reason as above).
TS_HEADER = "eos-ts"
CLOCK_STATE = "clock"
# The clock state's row that holds where a task resumed from a savepoint starts.
FLOOR = "floor"


def clock_uid(stage_id: str) -> str:
    """The state owner of a stage's clock, beside its operators' uids."""
    return f"{stage_id}@clock"


def is_clock_uid(uid: str) -> bool:
    return uid.endswith("@clock")


def clock_state(stage_id: str) -> str:
    """The column family of a stage's clock."""
    return f"{clock_uid(stage_id)}:{CLOCK_STATE}"


def savepoint_floor(watermarks: list[int | None]) -> int | None:
    """Where the clocks of a stage resumed from a savepoint start: the least watermark its
    tasks had, so no window they closed opens again and no origin is taken to be further
    than it was. Tasks that had seen nothing (or had no clock) do not count."""
    known = [w for w in watermarks if w is not None and w > NO_TIME]
    return min(known) if known else None


def time_header(origin: int, watermark: int, ts: int) -> list[tuple[str, bytes]]:
    return [(TIME_HEADER, b"%d:%d:%d" % (origin, watermark, ts))]


def marker_header(origin: int, watermark: int | None) -> list[tuple[str, bytes]]:
    """A marker of progress, or (watermark None) of an origin gone idle."""
    text = b"%d:idle" % origin if watermark is None else b"%d:%d" % (origin, watermark)
    return [(MARKER_HEADER, text)]


def ts_header(ts: int) -> list[tuple[str, bytes]]:
    return [(TS_HEADER, b"%d" % ts)]


def carried_time(headers: list[tuple[str, bytes]] | None) -> int | None:
    """The time a repartition record carries across (a marker: before everything, it
    only moves clocks); None when it carries none."""
    for name, value in headers or ():
        if name == TS_HEADER:
            return int(value)
        if name == TIME_HEADER:
            return int(value.rsplit(b":", 1)[1])
        if name == MARKER_HEADER:
            return NO_TIME
    return None


def time_of(headers: list[tuple[str, bytes]] | None) -> tuple[int, int | None, int | None] | None:
    """(origin, watermark or None for "idle", event time or None for a marker) from a
    repartition record's headers; None when it has neither header."""
    for name, value in headers or ():
        if name == TIME_HEADER:
            origin, watermark, ts = value.split(b":")
            return int(origin), int(watermark), int(ts)
        if name == MARKER_HEADER:
            origin, watermark = value.split(b":")
            return int(origin), None if watermark == b"idle" else int(watermark), None
    return None


class EventClock:
    """The watermark of each origin, and of the task: the least of them over the origins
    not idle. An origin that said it is idle (its input had nothing for the source's
    idle timeout) does not hold the others back until it sends again; the task's
    watermark never goes back."""

    def __init__(self, table: ValueTable, origins: int) -> None:
        self._table = table
        self.origins = origins
        self._views: dict[int, int] = {}
        self._idle: set[int] = set()
        # Origins whose progress is not in the table yet (written by `save`, before each
        # flush of the task's state: a watermark may move with every record).
        self._unsaved: set[int] = set()
        # Origins not heard from yet stand at the floor (a savepoint's), else at NO_TIME.
        self._floor = NO_TIME
        for origin, row in table.items():
            if origin == FLOOR:
                self._floor = row
                continue
            self._views[int(origin)] = row["wm"]
            if row["idle"]:
                self._idle.add(int(origin))
        self.watermark = NO_TIME
        self._moved()

    @classmethod
    def of(cls, state: Any, stage_id: str, origins: int) -> EventClock:
        """The clock of a task's state, saved into it before each flush."""
        cf = clock_state(stage_id)
        clock = cls(state.value_table(cf, JSON_CODEC), origins)
        state.before_flush[cf] = clock.save
        return clock

    def save(self) -> None:
        """Writes the progress of the origins that moved into the clock's table."""
        for origin in self._unsaved:
            self._table.put(origin, {"wm": self._views[origin], "idle": origin in self._idle})
        self._unsaved.clear()

    def view(self, origin: int) -> int:
        """Where one origin stands."""
        return self._views.get(origin, self._floor)

    def _least(self) -> int:
        views, floor, idle = self._views, self._floor, self._idle
        if self.origins == 1 and not idle:
            return views.get(0, floor)
        active = [views.get(origin, floor) for origin in range(self.origins) if origin not in idle]
        return min(active) if active else self.watermark

    def observe(self, origin: int, watermark: int) -> bool:
        """Takes an origin's progress; returns whether the task's watermark moved."""
        before = self._views.get(origin, self._floor)
        was_idle = origin in self._idle
        if watermark <= before:
            if not was_idle:
                return False
            watermark = before
        self._idle.discard(origin)
        self._views[origin] = watermark
        self._unsaved.add(origin)
        if not was_idle:
            if self.origins == 1:  # a source task: its watermark is its one origin's
                if watermark > self.watermark:
                    self.watermark = watermark
                    return True
                return False
            if before > self.watermark:
                return False  # it was not what held the task back (the watermark is at least the least)
        return self._moved()

    def idle(self, origin: int) -> bool:
        """The origin went idle; returns whether the task's watermark moved."""
        if origin in self._idle:
            return False
        self._idle.add(origin)
        self._unsaved.discard(origin)
        self._table.put(origin, {"wm": self.view(origin), "idle": True})  # seldom: at once
        return self._moved()

    def _moved(self) -> bool:
        least = self._least()
        if least > self.watermark:
            self.watermark = least
            return True
        return False
