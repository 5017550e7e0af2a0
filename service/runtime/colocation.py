"""Which tasks travel together through the consumer group.

librdkafka's cooperative-sticky assignor balances how many partitions each member
holds, not which stages they belong to, and when a member joins it tends to hand over
whole topics: one worker could end up with every task of a job's first stage and
another with every task of the next, however differently the two cost
(docs/scale-out.md). librdkafka has no pluggable assignor, so the grouping is done
here: a stage fed by a repartition topic with as many partitions as the job's first
source topic (the *anchor*) is not assigned by the group. Its partition p travels with
the anchor's partition p, taken along as a join's partner inputs are, so every worker
holds an equal share of each such stage. They come and go with their anchor, and the
group's generation fences their offsets as it fences the anchor's.

A repartition topic with another partition count (`key_by(..., partitions=N)`) keeps
being assigned by the group: mapped onto fewer anchor partitions its tasks could not
spread over more workers.
"""

from __future__ import annotations

from collections.abc import Iterable

from connectors.group import Member
from eos.errors import ConfigurationError
from service.job.planner import Plan

TaskKey = tuple[str, int]


class Colocation:
    def __init__(self, plan: Plan, partition_counts: dict[str, int]) -> None:
        roots = [s.topic for s in plan.stages if not s.repartition]
        self.anchor = roots[0] if roots else None
        count = partition_counts.get(self.anchor) if self.anchor is not None else None
        self._carried_topics = [s.topic for s in plan.stages
                                if s.repartition and count is not None and partition_counts.get(s.topic) == count]
        carried = set(self._carried_topics)
        # What the consumer group assigns: every stage's lead but the carried ones.
        self.group_topics = [s.topic for s in plan.stages if s.topic not in carried]

    def tasks_of(self, partitions: Iterable[TaskKey]) -> list[TaskKey]:
        """The tasks of the partitions the group assigned: each one's own, and for an
        anchor partition those it carries."""
        tasks = []
        for topic, partition in partitions:
            tasks.append((topic, partition))
            if topic == self.anchor:
                tasks.extend((carried, partition) for carried in self._carried_topics)
        return tasks

    @property
    def carries(self) -> bool:
        """Whether any stage travels with the anchor (and the group's members are worth a look)."""
        return bool(self._carried_topics)

    def carried(self, key: TaskKey) -> bool:
        """Whether the task's lead partition is taken along rather than group-assigned."""
        return key[0] in self._carried_topics

    def assigned_with(self, key: TaskKey) -> TaskKey:
        """The group-assigned partition a task comes and goes with (its own, unless carried)."""
        return (self.anchor, key[1]) if self.carried(key) and self.anchor is not None else key

    def check_members(self, members: Iterable[Member]) -> None:
        """A member the group gives a carried partition subscribed to it itself: it runs
        a version of the job that assigns stages otherwise, and both it and this worker
        would run those tasks. Stops this worker rather than let them."""
        for member in members:
            wrong = sorted(key for key in member.assignment if self.carried(key))
            if wrong:
                raise ConfigurationError(
                    f"the group assigned {', '.join(f'{t}-{p}' for t, p in wrong)} to worker {member.worker} "
                    f"({member.describe()}), which this worker takes along with partitions of {self.anchor}: "
                    "that worker runs another version of the job or of eos. Every worker of a group must run "
                    "the same version; upgrade through a savepoint (docs/scale-out.md)")
