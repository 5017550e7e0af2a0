"""Turns a job graph into stages (Kafka Streams' sub-topologies).

A stage starts at a topic (a source, or a repartition topic) and runs every operator
until the next `key_by`, which ends it by writing to the repartition topic that starts
the next stage. A task is one partition of one stage.

When nothing between a stage's start and a `key_by` changes the record value (only
filters), the `key_by` forwards the record's original bytes and the next stage reads
them with the source's serde: no second serialisation on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.serdes import KEY, PICKLE, Serde
from eos.errors import ConfigurationError
from service.eventtime.clock import clock_uid
from service.job.api import TRANSACTIONAL_SINK, VALUE_CHANGING_KINDS, Job, Node


@dataclass
class Stage:
    id: str
    topic: str
    key_serde: Serde
    value_serde: Serde
    root: Node
    repartition: bool
    # The first stage's source topic: repartition topics take its partition count.
    origin_topic: str
    partitions: int | None = None
    stateful_uids: list[str] = field(default_factory=list)
    # A key_by of this stage forwards the record's original bytes.
    forwards_raw: bool = False
    # The stage whose key_by writes this stage's topic (repartition stages).
    upstream_topic: str | None = None
    # Runs on event time: a window is in it or in a stage it feeds. Its clock is state.
    event_time: bool = False


@dataclass
class Plan:
    job: Job
    group: str
    stages: list[Stage]

    @property
    def input_topics(self) -> list[str]:
        return [s.topic for s in self.stages]

    @property
    def repartition_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.repartition]

    @property
    def sink_topics(self) -> list[str]:
        """Topics the job writes that must exist: sinks and windows' late-data topics."""
        nodes = [n for s in self.stages for n in _walk_stage(s.root)]
        return sorted({n.options["topic"] for n in nodes if n.kind == "sink"}
                      | {n.options["late_topic"] for n in nodes if n.kind == "window" and n.options["late_topic"]})

    def transactional_sinks(self, stage: Stage | None = None) -> list[Node]:
        """The sinks to systems other than Kafka, of one stage or of the whole job."""
        stages = self.stages if stage is None else [stage]
        return [n for s in stages for n in _walk_stage(s.root) if n.kind == TRANSACTIONAL_SINK]

    def stage_of(self, topic: str) -> Stage:
        for stage in self.stages:
            if stage.topic == topic:
                return stage
        raise KeyError(topic)

    def error_overrides(self) -> dict[str, str]:
        """Operators (sources included) whose job code chose their own error policy."""
        nodes = [s.root for s in self.stages if not s.repartition]
        nodes += [n for s in self.stages for n in _walk_stage(s.root)]
        return {n.uid: n.on_error for n in nodes if n.on_error is not None}

    def time_topics(self, topic: str) -> list[str]:
        """Topics whose partition counts a task of `topic`'s stage needs on event time:
        the stage it hears from, and the repartition topics it writes."""
        stage = self.stage_of(topic)
        if not stage.event_time:
            return []
        written = [n.options["topic"] for n in _walk_stage(stage.root) if n.kind == "key_by"]
        return ([stage.upstream_topic] if stage.upstream_topic else []) + written

    @property
    def operator_uids(self) -> list[str]:
        return [n.uid for s in self.stages for n in _walk_stage(s.root)]


def repartition_topic(group: str, key_by_uid: str) -> str:
    return f"{group}-{key_by_uid}-repartition"


def _walk_stage(root: Node):
    """Nodes of one stage below its root, not crossing into the next stage."""
    for child in root.children:
        yield child
        if child.kind != "key_by":
            yield from _walk_stage(child)


def plan(job: Job, group: str) -> Plan:
    if not job.sources:
        raise ConfigurationError(f"job {job.name!r} has no source")
    stages: list[Stage] = []
    seen_topics: set[str] = set()

    def add_stage(stage: Stage) -> None:
        if stage.topic in seen_topics:
            raise ConfigurationError(
                f"topic {stage.topic!r} is read by two stages of job {job.name!r}; "
                "read it once and branch the stream instead")
        seen_topics.add(stage.topic)
        stages.append(stage)
        _walk(stage, stage.root, value_changed=False)

    def _walk(stage: Stage, node: Node, value_changed: bool) -> None:
        for child in node.children:
            if child.stateful:
                stage.stateful_uids.append(child.uid)
            if child.kind == "key_by":
                passthrough = not value_changed and child.options.get("value_serde") is None
                serde = stage.value_serde if passthrough else (child.options.get("value_serde") or PICKLE)
                child.options["topic"] = repartition_topic(group, child.uid)
                child.options["passthrough"] = passthrough
                child.options["repartition_serde"] = serde
                stage.forwards_raw = stage.forwards_raw or passthrough
                add_stage(Stage(
                    id=child.uid, topic=child.options["topic"], key_serde=KEY, value_serde=serde,
                    root=child, repartition=True, origin_topic=stage.origin_topic,
                    partitions=child.options.get("partitions"), upstream_topic=stage.topic))
            else:
                _walk(stage, child, value_changed or child.kind in VALUE_CHANGING_KINDS)

    for source in job.sources:
        opts = source.options
        add_stage(Stage(id=source.uid, topic=opts["topic"], key_serde=opts["key_serde"],
                        value_serde=opts["value_serde"], root=source, repartition=False,
                        origin_topic=opts["topic"]))
    _mark_event_time(stages)
    return Plan(job, group, stages)


def _mark_event_time(stages: list[Stage]) -> None:
    """A stage with a window or timers runs on event time, and so does every stage before it: its
    watermark is made from theirs. Each such stage keeps its clock as state."""
    by_topic = {s.topic: s for s in stages}
    for stage in stages:
        if any(n.kind == "window" or (n.kind == "process" and n.options.get("timers"))
               for n in _walk_stage(stage.root)):
            current: Stage | None = stage
            while current is not None and not current.event_time:
                current.event_time = True
                current.stateful_uids.append(clock_uid(current.id))
                current = by_topic.get(current.upstream_topic) if current.upstream_topic else None
