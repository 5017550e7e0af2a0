"""Window shapes: which windows a timestamp falls into.

Windows are aligned to the epoch, as in Flink and Kafka Streams: a tumbling window of one
minute covers [12:00, 12:01), never [12:00:17, 12:01:17). Times are milliseconds; a
window's start is inclusive and its end exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

from eos.errors import ConfigurationError


@dataclass(frozen=True)
class Tumbling:
    """Fixed-size windows that do not overlap: each record belongs to exactly one."""

    size_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise ConfigurationError(f"a window's size must be positive, not {self.size_ms} ms")

    def starts(self, ts: int) -> tuple[int, ...]:
        return (ts - ts % self.size_ms,)


@dataclass(frozen=True)
class Hopping:
    """Fixed-size windows that start every `advance_ms`: a record belongs to
    size / advance of them (Flink's sliding event-time windows)."""

    size_ms: int
    advance_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.advance_ms <= 0 or self.advance_ms > self.size_ms:
            raise ConfigurationError(
                f"a hopping window needs 0 < advance <= size (got size {self.size_ms} ms, "
                f"advance {self.advance_ms} ms)")

    def starts(self, ts: int) -> tuple[int, ...]:
        last = ts - ts % self.advance_ms
        first = last - self.size_ms + self.advance_ms
        return tuple(range(first, last + 1, self.advance_ms))


@dataclass(frozen=True)
class Sliding:
    """Windows defined by the records themselves (Kafka Streams' SlidingWindows): a
    window [start, start + size_ms], both ends inclusive, exists for each distinct time
    at which a record enters or leaves it. Per key, for every record at `t`: the window
    that ends at `t` ([t - size, t], the record and everything up to size_ms before it),
    and, when some record lies in (t, t + 1 + size], the window that starts just after
    it ([t + 1, t + 1 + size]). Every distinct set of records at most size_ms apart is
    one window: a moving aggregate over the last size_ms, per key.

    A record is late when its event time is `grace_ms` or more behind the watermark its
    origin had (as for sessions): then every window it belongs to has closed."""

    size_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise ConfigurationError(f"a sliding window's size must be positive, not {self.size_ms} ms")


@dataclass(frozen=True)
class Count:
    """Windows of a number of records per key, in the order the key's records arrive
    (Flink's countWindow): `Count(size)` fires every `size` records with those records;
    `Count(size, slide)` fires every `slide` records with the last `size` of them (fewer
    for the first firings, as in Flink). Windows on counts know no time: no grace period,
    nothing is late."""

    size: int
    slide: int | None = None

    def __post_init__(self) -> None:
        slide = self.size if self.slide is None else self.slide
        if self.size <= 0 or slide <= 0 or slide > self.size:
            raise ConfigurationError(
                f"a count window needs 0 < slide <= size (got size {self.size}, slide {self.slide})")

    @property
    def every(self) -> int:
        """How many records apart the windows fire."""
        return self.size if self.slide is None else self.slide


@dataclass(frozen=True)
class Session:
    """Windows of activity per key: a record opens [ts, ts + gap) and sessions that
    overlap merge, so a session ends `gap_ms` after its last record. A record is late
    when its event time is `grace_ms` or more behind the watermark its origin had: that
    rule, not the window's end, is what lets a session close the moment no on-time
    record can reach it any more (its end plus the grace), with or without failures."""

    gap_ms: int

    def __post_init__(self) -> None:
        if self.gap_ms <= 0:
            raise ConfigurationError(f"a session gap must be positive, not {self.gap_ms} ms")


WindowShape = Tumbling | Hopping | Sliding | Session | Count
