"""Which blocking Kafka call the worker's loop is inside, and since when.

While the cluster is away, librdkafka's blocking calls (committing a transaction,
initialising one again after an abort, reading committed offsets) hold the loop for as
long as their timeouts and our retries allow; the client's statistics are not served
meanwhile, so they cannot tell `/healthz` that Kafka is gone. This record can: it costs
two attribute writes per blocking call, none per record.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class KafkaWaits:
    def __init__(self) -> None:
        self.current: tuple[str, float] | None = None  # (call, monotonic start); one reference, read by HTTP threads

    @contextmanager
    def waiting(self, call: str) -> Iterator[None]:
        """Marks the loop as blocked in `call`; nested calls keep the outermost start."""
        outer = self.current
        if outer is None:
            self.current = (call, time.monotonic())
        try:
            yield
        finally:
            if outer is None:
                self.current = None

    def blocked_for(self, now: float) -> tuple[str, float] | None:
        current = self.current
        return None if current is None else (current[0], now - current[1])


def backoff_delays(first_s: float = 0.5, cap_s: float = 30.0) -> Iterator[float]:
    """Pauses between tries of a call that waits out an unreachable cluster: doubling,
    so a long outage costs few tries, and capped, so the worker notices the cluster's
    return within half a minute."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, cap_s)
