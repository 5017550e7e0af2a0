"""The first records of transaction n+1, held back until closed transaction n's records
are in the log.

A read_committed reader returns records in log order, whatever order transactions
commit in. n+1's records come from the other producer of the owner's pool, over its own
connection: sent at once, they could reach a partition before n's last ones, and a key's
outputs would read back out of order. Waiting at the barrier for n's producer to drain
would pause processing for a broker round trip; holding n+1's first records costs only
their delay, usually a few milliseconds (one `linger.ms` and the acknowledgement).

The hold asks its owner every DRAIN_CHECK_EVERY records whether n's producer has
drained, rather than waiting for the loop's next poll of the owner: that comes once per
batch of input, and a batch of thousands of records would all be held (and produced
twice over, into the hold and out of it) though the drain took a millisecond.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connectors.kafka_sink import Produce
from statestore.codecs import own_size

# Held records past which the next output waits for the closed producer to drain: the
# hold must not become an unbounded queue while a partition's leader is away.
MAX_HELD_RECORDS = 100_000
# Held records between two looks at the closed producer (a poll and a count, about a
# microsecond).
DRAIN_CHECK_EVERY = 128


class HeldOutput:
    """Stands in for the open transaction's produce functions (`fast`, `blocking`) while
    the closed transaction's producer still has records on their way.

    A record that may be over the producer's `message.max.bytes` is not held: librdkafka
    refuses such a record when it is produced, and the refusal must come while the
    operator still knows which record caused it. Such a record, and any past
    MAX_HELD_RECORDS, first waits for the drain (`wait_drained`)."""

    __slots__ = ("closing", "target", "records", "unsure_bytes", "wait_drained", "release_if_drained", "until_check")

    def __init__(self, closing: Any, target: Produce, max_message_bytes: int,
                 wait_drained: Callable[[], None], release_if_drained: Callable[[], bool]) -> None:
        self.closing = closing
        self.target = target
        self.records: list[tuple[str, Any, Any, tuple, dict]] = []
        self.unsure_bytes = max_message_bytes // 2
        self.wait_drained = wait_drained
        self.release_if_drained = release_if_drained
        self.until_check = DRAIN_CHECK_EVERY

    def fast(self, topic: str, value: bytes | None = None, key: bytes | None = None, *args: Any, **kwargs: Any) -> None:
        self.until_check -= 1
        if not self.until_check:
            self.until_check = DRAIN_CHECK_EVERY
            if self.release_if_drained():  # what was held is out; later records go straight to `target`
                self.target.fast(topic, value, key, *args, **kwargs)
                return
        if len(self.records) >= MAX_HELD_RECORDS or self._may_be_too_large(value, key, kwargs):
            self.wait_drained()  # releases what is held; later records go straight to `target`
            self.target.fast(topic, value, key, *args, **kwargs)
            return
        self.records.append((topic, own_size(value), own_size(key), args, kwargs))  # up to MAX_HELD_RECORDS

    blocking = fast

    def _may_be_too_large(self, value: bytes | None, key: bytes | None, kwargs: dict[str, Any]) -> bool:
        size = len(value or b"") + len(key or b"")
        for name, header in kwargs.get("headers") or ():
            size += len(name) + len(header or b"")
        return size > self.unsure_bytes

    def drained(self) -> bool:
        """Whether the closed transaction's producer has no record left to deliver (it
        was served its delivery reports by the owner's poll)."""
        return len(self.closing) == 0

    def release(self) -> None:
        """Produces what was held, in order, to the open transaction's producer."""
        blocking = self.target.blocking
        records, self.records = self.records, []
        for topic, value, key, args, kwargs in records:
            blocking(topic, value, key, *args, **kwargs)
