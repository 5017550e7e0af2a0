"""Restart strategies: a worker that fails inside its process starts again, in-process.

    none                          fail: the process exits with the worker's code (default)
    fixed-delay:ATTEMPTS:DELAY    up to ATTEMPTS restarts, DELAY apart (e.g. 3:10s)
    exponential-backoff:MAX       1s, 2s, 4s ... capped at MAX between restarts, without an
                                  attempt limit; after a run that lasted MAX or longer, the
                                  delay starts again at 1s

Each restart builds a new worker (new consumer, producer and incarnation token) that
recovers from the last completed checkpoint like any start; the worker slot's record
(service/membership/incarnation.py) counts it in `eos_restarts_total`. What a restart cannot cure
is never retried: a bad record under policy `fail` (exit 2; the same record would stop
it again), a newer process holding the slot (exit 3), another live process with the same
worker id (exit 5), configuration errors, lost snapshots, input records deleted before
they were processed and savepoint errors (exit 1, for a reason a restart does not
change). A kill (SIGKILL, OOM) ends the process and is the process supervisor's to
restart.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from eos.errors import (
    ConfigurationError,
    DuplicateWorkerError,
    MissingInputError,
    PartitionCountChangedError,
    RecordError,
    SavepointError,
    SnapshotLostError,
    WorkerReplacedError,
)
from service.runtime.config import parse_duration

log = logging.getLogger(__name__)

NONE = "none"
FIXED_DELAY = "fixed-delay"
EXPONENTIAL_BACKOFF = "exponential-backoff"
FIRST_BACKOFF_S = 1.0

# Failures a restart cannot cure.
_PERMANENT = (RecordError, WorkerReplacedError, DuplicateWorkerError, ConfigurationError, SnapshotLostError,
              SavepointError, MissingInputError, PartitionCountChangedError)


@dataclass(frozen=True)
class RestartStrategy:
    kind: str = NONE
    attempts: int | None = 0  # None: no limit
    delay_s: float = 0.0
    max_delay_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> RestartStrategy:
        spec = text.strip()
        if spec == NONE:
            return cls()
        match = re.fullmatch(rf"{FIXED_DELAY}:(\d+):(.+)", spec)
        if match:
            return cls(FIXED_DELAY, int(match.group(1)), parse_duration(match.group(2), "--restart-strategy delay"))
        match = re.fullmatch(rf"{EXPONENTIAL_BACKOFF}:(.+)", spec)
        if match:
            ceiling = parse_duration(match.group(1), "--restart-strategy maximum delay")
            if ceiling <= 0:
                raise ConfigurationError("--restart-strategy exponential-backoff:MAX needs MAX > 0")
            return cls(EXPONENTIAL_BACKOFF, None, FIRST_BACKOFF_S, ceiling)
        raise ConfigurationError(
            f"--restart-strategy {text!r} is not one of: none, fixed-delay:ATTEMPTS:DELAY (e.g. fixed-delay:3:10s), "
            "exponential-backoff:MAX (e.g. exponential-backoff:5m)")

    def delay(self, restarts_so_far: int, last_run_s: float, previous_delay_s: float) -> float | None:
        """Seconds to wait before the next restart, or None when no restart is left."""
        if self.kind == NONE:
            return None
        if self.kind == FIXED_DELAY:
            return self.delay_s if restarts_so_far < (self.attempts or 0) else None
        if last_run_s >= self.max_delay_s or previous_delay_s <= 0:
            return min(FIRST_BACKOFF_S, self.max_delay_s)
        return min(previous_delay_s * 2, self.max_delay_s)

    def describe(self) -> str:
        if self.kind == FIXED_DELAY:
            return f"{FIXED_DELAY} ({self.attempts} attempts, {self.delay_s:g}s apart)"
        if self.kind == EXPONENTIAL_BACKOFF:
            return f"{EXPONENTIAL_BACKOFF} (up to {self.max_delay_s:g}s apart)"
        return NONE


def restartable(failure: BaseException | None) -> bool:
    """Whether a restart may cure this failure (a checkpoint error burst, a client or
    storage failure, checkpoint storage out of reach, an unexpected exception)."""
    return failure is not None and not isinstance(failure, _PERMANENT)


Attempt = Callable[[], tuple[int, BaseException | None]]


def run_with_restarts(attempt: Attempt, strategy: RestartStrategy,
                      wait: Callable[[float], bool] | None = None) -> int:
    """Runs `attempt` (one worker from start to exit: its exit code and failure) and
    restarts it as the strategy allows. `wait(seconds)` returns False when a stop was
    asked for meanwhile (SIGTERM/SIGINT), which ends the restarts."""
    waiter = wait or _interruptible_sleep
    restarts = 0
    previous_delay = 0.0
    while True:
        began = time.monotonic()
        code, failure = attempt()
        ran_s = time.monotonic() - began
        if code == 0:
            return code
        if not restartable(failure):
            if strategy.kind != NONE and failure is not None:
                log.error("not restarting: %s is not cured by a restart (exit code %d)", type(failure).__name__, code)
            return code
        delay = strategy.delay(restarts, ran_s, previous_delay)
        if delay is None:
            if strategy.kind != NONE:
                log.error("not restarting: the %s restart strategy is exhausted after %d restarts",
                          strategy.describe(), restarts)
            return code
        restarts += 1
        previous_delay = delay
        log.warning("worker failed (exit code %d: %s); restart %d in %.1fs (%s)", code, failure, restarts, delay,
                    strategy.describe())
        if not waiter(delay):
            log.info("stop requested while waiting to restart; exiting")
            return code


def _interruptible_sleep(seconds: float) -> bool:
    """Sleeps, but a SIGTERM/SIGINT meanwhile ends the wait (and the restarts)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return not stop.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
