"""Which tasks the consumer group assigns and which travel with the first source's
partitions (service/runtime/colocation.py), on plans of real jobs."""

from __future__ import annotations

import pytest

from connectors.group import Member
from eos.errors import ConfigurationError
from service.job.api import Job
from service.job.planner import plan, repartition_topic
from service.runtime.colocation import Colocation

GROUP = "sums"
REPARTITION = repartition_topic(GROUP, "by")


def _two_stage(partitions: int | None = None) -> Job:
    job = Job("sums")
    stream = job.source("orders", uid="in")
    keyed = stream.key_by(lambda v: v, uid="by") if partitions is None else \
        stream.key_by(lambda v: v, uid="by", partitions=partitions)
    keyed.aggregate(lambda acc, v: acc, initial=0, uid="agg")
    return job


def test_a_repartition_stage_with_the_sources_partition_count_travels_with_the_source():
    colocation = Colocation(plan(_two_stage(), GROUP), {"orders": 4, REPARTITION: 4})
    assert colocation.group_topics == ["orders"] and colocation.carries
    assert colocation.tasks_of([("orders", 1), ("orders", 3)]) == [
        ("orders", 1), (REPARTITION, 1), ("orders", 3), (REPARTITION, 3)]
    assert colocation.carried((REPARTITION, 2)) and not colocation.carried(("orders", 2))
    assert colocation.assigned_with((REPARTITION, 2)) == ("orders", 2)
    assert colocation.assigned_with(("orders", 2)) == ("orders", 2)


def test_a_repartition_stage_with_another_partition_count_stays_assigned_by_the_group():
    colocation = Colocation(plan(_two_stage(partitions=8), GROUP), {"orders": 4, REPARTITION: 8})
    assert colocation.group_topics == ["orders", REPARTITION] and not colocation.carries
    assert colocation.tasks_of([("orders", 1), (REPARTITION, 6)]) == [("orders", 1), (REPARTITION, 6)]
    assert not colocation.carried((REPARTITION, 6))


def _member(worker: str, assignment: tuple[tuple[str, int], ...]) -> Member:
    return Member(worker, "1", f"m-{worker}", f"{GROUP}-{worker}#1", "/10.0.0.7", (), assignment)


def test_a_member_assigned_a_carried_partition_by_the_group_stops_the_worker():
    colocation = Colocation(plan(_two_stage(), GROUP), {"orders": 4, REPARTITION: 4})
    colocation.check_members([_member("w1", (("orders", 0), ("orders", 1)))])
    with pytest.raises(ConfigurationError, match=rf"assigned {REPARTITION}-3 to worker w2 .*same version"):
        colocation.check_members([_member("w1", (("orders", 0),)), _member("w2", (("orders", 3), (REPARTITION, 3)))])
