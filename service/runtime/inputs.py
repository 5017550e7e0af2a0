"""The inputs of a task: one partition of each topic its stage reads.

A task with one input runs each batch as it comes. A task with several (a join) runs
their records in timestamp order, as Kafka Streams' partition group does: each input
buffers what the consumer fetched, and the task always takes the earliest head. An
input with nothing buffered holds the others back until it is known to have nothing
earlier: the consumer found the partition's end after the last record it read (an
end-of-partition event), and, with `max_task_idle_s`, that long has passed since it
was found empty while another input had records (for records produced meanwhile: the
wait starts afresh each time the task has caught up on every input). So the result is
the same whenever the data is present, however fetches interleave. At equal timestamps a table's change goes first: a record
sees the row as of its own time, changes at that time included.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, TopicPartition

from service.eventtime.clock import carried_time
from service.job.planner import StageInput

# An input that buffers more records than this is paused until it is down to half:
# the other inputs' earlier records are what it waits for.
MAX_BUFFERED = 20_000
BUFFER_HOLD = "buffer"


class TaskInput:
    """One partition of one topic of a task: where it is read from, what has been
    processed, and (with several inputs) what is buffered."""

    __slots__ = ("index", "spec", "topic", "partition", "key", "next_offset", "read_from", "buffer",
                 "last_received", "last_input", "empty_since", "step", "priority", "origins")

    def __init__(self, index: int, spec: StageInput, partition: int) -> None:
        self.index = index
        self.spec = spec
        self.topic = spec.topic
        self.partition = partition
        self.key = (spec.topic, partition)
        self.next_offset: int | None = None  # after the last record processed
        self.read_from: int | None = None  # where the partition is read from since the (re)start
        self.buffer: deque[tuple[int, Any]] = deque()  # (timestamp, message), received, not processed
        self.last_received = -1
        self.last_input = time.monotonic()  # when the partition last brought records
        self.empty_since: float | None = None
        self.step: Any = None  # runs one record of this input through the chain
        # Ties at one timestamp: tables first, then inputs in the stage's order.
        self.priority = (0 if spec.table else 1, index)
        # The first clock origin of this input on event time, set by the task.
        self.origins = 0

    def position(self, reset_offset: int) -> TopicPartition:
        return TopicPartition(self.topic, self.partition, self.read_from if self.read_from is not None
                              else reset_offset)

    def restart(self, offset: int | None) -> None:
        self.next_offset = offset
        self.buffer.clear()
        self.last_received = -1
        self.empty_since = None


def timestamp_of(msg: Any) -> int:
    """The time a record is ordered by: the event time a repartition record carries,
    else its Kafka timestamp (0 when it has none)."""
    carried = carried_time(msg.headers())
    if carried is not None:
        return carried
    kind, ts = msg.timestamp()
    return 0 if kind == TIMESTAMP_NOT_AVAILABLE or ts < 0 else ts


class PartitionGroup:
    """Picks the next record of a task with several inputs."""

    def __init__(self, inputs: list[TaskInput], ends: dict[tuple[str, int], int], max_idle_s: float,
                 hold: Any, release: Any) -> None:
        self.inputs = inputs
        # The consumer's end-of-partition offsets (KafkaSource.ends), read, never written.
        self.ends = ends
        self.max_idle_s = max_idle_s
        self.hold, self.release = hold, release

    def receive(self, task_input: TaskInput, msgs: list) -> None:
        buffer = task_input.buffer
        for msg in msgs:
            buffer.append((timestamp_of(msg), msg))
        task_input.last_received = msgs[-1].offset()
        task_input.last_input = time.monotonic()
        task_input.empty_since = None
        if len(buffer) > MAX_BUFFERED:
            self.hold([task_input.key], BUFFER_HOLD)

    def next(self) -> tuple[TaskInput, Any] | None:
        """The input and message to run next, or None while an empty input may still
        bring an earlier record."""
        best: TaskInput | None = None
        best_ts = 0
        now: float | None = None
        for task_input in self.inputs:
            buffer = task_input.buffer
            if buffer:
                ts = buffer[0][0]
                if best is None or ts < best_ts or (ts == best_ts and task_input.priority < best.priority):
                    best, best_ts = task_input, ts
                continue
            if now is None:
                now = time.monotonic()
            if not self._nothing_earlier(task_input, now):
                return None
        if best is None:
            # Caught up on every input: the next record starts a wait of its own.
            for task_input in self.inputs:
                task_input.empty_since = None
            return None
        _, msg = best.buffer.popleft()
        if len(best.buffer) == MAX_BUFFERED // 2:
            self.release([best.key], BUFFER_HOLD)
        return best, msg

    def _nothing_earlier(self, task_input: TaskInput, now: float) -> bool:
        end = self.ends.get(task_input.key)
        if end is None or end <= task_input.last_received:
            return False  # the consumer has not yet found the end past what it read
        if self.max_idle_s <= 0:
            return True
        if task_input.empty_since is None:
            task_input.empty_since = now
        return now - task_input.empty_since >= self.max_idle_s

    def buffered(self) -> bool:
        return any(task_input.buffer for task_input in self.inputs)
