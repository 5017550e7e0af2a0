"""Input records deleted before the job processed them: a decision, never an accident.

Kafka's retention, or `kafka-delete-records`, may remove records past a task's position
while the job is down or behind. librdkafka would quietly reset such a partition to its
earliest offset; here its consumer reports the gap instead (`auto.offset.reset=error`),
and every partition restored from a committed offset is checked against where its log
starts and ends. What follows is the `--on-missing-input` policy:

  fail              (default) stop, naming the topic, partition, committed offset,
                    earliest offset left and how many records are gone
  skip-to-earliest  read on from the earliest offset left, with the same facts logged
                    at WARNING for each partition

Either way the records that are gone are counted in `eos_input_records_missing_total`,
each once: a task restored again before its next checkpoint finds the same gap from the
same committed offset, and is told so again, but the count does not grow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from connectors.offsets import ClusterOffsets
from eos.errors import ConfigurationError, MissingInputError
from service.monitoring.metrics import WorkerMetrics

log = logging.getLogger(__name__)

FAIL = "fail"
SKIP_TO_EARLIEST = "skip-to-earliest"
POLICIES = (FAIL, SKIP_TO_EARLIEST)


@dataclass(frozen=True)
class Gap:
    topic: str
    partition: int
    position: int  # where the task was to read on
    earliest: int  # the earliest offset the log still holds
    latest: int    # its end (last stable offset)

    @property
    def missing(self) -> int:
        return max(0, self.earliest - self.position)

    def describe(self) -> str:
        where = f"topic {self.topic!r} partition {self.partition}"
        if self.position > self.latest:
            return (f"{where}: the job's position {self.position} is past the log's end ({self.latest}); the "
                    "topic was recreated or truncated, so the records between are unknown")
        return (f"{where}: {self.missing} records were deleted before they were processed (the job's position is "
                f"offset {self.position}, the earliest offset left is {self.earliest}; retention or a deletion "
                "ran past it)")


class MissingInput:
    """Checks positions against the logs and applies the policy to gaps."""

    def __init__(self, policy: str, offsets: ClusterOffsets, metrics: WorkerMetrics) -> None:
        if policy not in POLICIES:
            raise ConfigurationError(f"--on-missing-input {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy = policy
        self.offsets = offsets
        self.metrics = metrics
        # Per partition, the offset up to which its missing records are counted.
        self._counted_to: dict[tuple[str, int], int] = {}

    def read_from(self, positions: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Where to read each partition from, given where its task is to read on: the
        same offset while the log still holds it, else the policy decides."""
        if not positions:
            return {}
        partitions = [TopicPartition(topic, partition) for topic, partition in positions]
        starts, ends = self.offsets.starts(partitions), self.offsets.ends(partitions)
        gaps = [Gap(topic, partition, offset, starts[(topic, partition)], ends[(topic, partition)])
                for (topic, partition), offset in positions.items()
                if offset < starts[(topic, partition)] or offset > ends[(topic, partition)]]
        decided = dict(positions)
        for gap in gaps:
            decided[(gap.topic, gap.partition)] = self.decide(gap)
        return decided

    def out_of_range(self, topic: str, partition: int, position: int) -> int:
        """The consumer found `position` gone while reading; returns where to read on."""
        tp = [TopicPartition(topic, partition)]
        return self.decide(Gap(topic, partition, position, self.offsets.starts(tp)[(topic, partition)],
                               self.offsets.ends(tp)[(topic, partition)]))

    def decide(self, gap: Gap) -> int:
        self._count(gap)
        if self.policy == FAIL:
            raise MissingInputError(f"{gap.describe()}. The worker stops rather than skip them; to go on from "
                                    f"offset {gap.earliest}, run with --on-missing-input {SKIP_TO_EARLIEST}")
        log.warning("%s; skipping to offset %d (--on-missing-input %s)", gap.describe(), gap.earliest,
                    SKIP_TO_EARLIEST)
        return gap.earliest

    def _count(self, gap: Gap) -> None:
        key = (gap.topic, gap.partition)
        counted_to = self._counted_to.get(key, gap.position)
        fresh = max(0, gap.earliest - max(gap.position, counted_to))
        self._counted_to[key] = max(counted_to, gap.earliest)
        self.metrics.labels(self.metrics.input_records_missing, topic=gap.topic).inc(fresh)
