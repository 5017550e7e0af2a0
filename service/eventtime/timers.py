"""Timers of a keyed process function: event-time timers fire when the task's watermark
reaches them, processing-time timers when the wall clock does.

Each timer is keyed state (map state `timers`: key -> (kind, time) -> 1), so it is in
checkpoints and savepoints and moves with its key on a rescale. Firing a timer deletes
it in the same state change that holds what `on_timer` did, and its outputs go into the
same transaction: after a crash, a timer whose firing was not committed fires again and
the outputs of the aborted attempt are gone, so each timer fires exactly once in the
committed result. Registering a timer that exists (same key, kind and time) is a no-op,
as in Flink.

An index of timers by time, in memory, is rebuilt from the state when the chain is built.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

from eos.errors import EosError
from statestore.codecs import JSON_CODEC
from statestore.state import KeyedContext
from statestore.ttl import TtlClock

EVENT_TIME, PROCESSING_TIME = "event", "processing"


class TimerFailure(EosError):
    """`on_timer` raised: there is no input record to dead-letter, so the job stops."""


class _Timers:
    """Timers of one kind: (time -> keys) and a heap of the times."""

    def __init__(self) -> None:
        self.by_time: dict[int, dict[Any, None]] = {}
        self.heap: list[int] = []

    def add(self, key: Any, when: int) -> bool:
        keys = self.by_time.get(when)
        if keys is None:
            keys = self.by_time[when] = {}
            heapq.heappush(self.heap, when)
        elif key in keys:
            return False
        keys[key] = None
        return True

    def remove(self, key: Any, when: int) -> bool:
        keys = self.by_time.get(when)
        if keys is None or key not in keys:
            return False
        del keys[key]
        return True

    def pop_due(self, until: int) -> tuple[int, list[Any]] | None:
        """The earliest time at or before `until` that still has timers, and its keys."""
        while self.heap and self.heap[0] <= until:
            when = heapq.heappop(self.heap)
            keys = self.by_time.pop(when, None)
            if keys:
                return when, list(keys)
        return None


class ProcessContext(KeyedContext):
    """What a process function sees: keyed state, the current record's event time and
    the watermark, and the timer service."""

    def __init__(self, task_state: Any, uid: str, chain: Any, ttl_clock: TtlClock | None = None) -> None:
        super().__init__(task_state, uid, ttl_clock)
        self._chain = chain
        self._table = task_state.map_table(f"{uid}:timers", JSON_CODEC)
        self._timers = {EVENT_TIME: _Timers(), PROCESSING_TIME: _Timers()}
        for (key, (kind, when)), _ in self._table.items():
            self._timers[kind].add(key, when)
        self.timestamp: int | None = None

    @property
    def watermark(self) -> int:
        return self._chain.clock.watermark

    def register_event_time_timer(self, when: int) -> None:
        """Calls `on_timer(key, when, ctx)` once the watermark reaches `when` (ms)."""
        self._register(EVENT_TIME, int(when))

    def register_processing_time_timer(self, when: int) -> None:
        """Calls `on_timer(key, when, ctx)` once the wall clock reaches `when` (ms since
        the epoch)."""
        self._register(PROCESSING_TIME, int(when))

    def delete_event_time_timer(self, when: int) -> None:
        self._delete(EVENT_TIME, int(when))

    def delete_processing_time_timer(self, when: int) -> None:
        self._delete(PROCESSING_TIME, int(when))

    def _register(self, kind: str, when: int) -> None:
        if self._timers[kind].add(self.key, when):
            self._table.put(self.key, (kind, when), 1)

    def _delete(self, kind: str, when: int) -> None:
        if self._timers[kind].remove(self.key, when):
            self._table.delete(self.key, (kind, when))

    def fire(self, kind: str, until: int, on_timer: Callable[..., Iterable[Any] | None],
             down: Callable[[Any, Any], None], uid: str) -> None:
        """Fires every timer of `kind` due at `until`, earliest first (timers that
        `on_timer` registers at or before `until` fire in the same call)."""
        timers, chain = self._timers[kind], self._chain
        saved_ts, saved_key = chain.ts, self.key
        while (due := timers.pop_due(until)) is not None:
            when, keys = due
            for key in keys:
                self._table.delete(key, (kind, when))
                self.key, self.timestamp, chain.ts = key, when, when
                try:
                    produced = on_timer(key, when, self)
                    results = list(produced) if produced is not None else ()
                except Exception as exc:
                    raise TimerFailure(f"operator {uid!r}: on_timer for key {key!r} at {when} ({kind} time) "
                                       f"raised {type(exc).__name__}: {exc}") from exc
                for result in results:
                    down(key, result)
        chain.ts, self.key = saved_ts, saved_key
