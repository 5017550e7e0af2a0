"""Turns a job graph into stages (Kafka Streams' sub-topologies).

A stage starts at one or more topics and runs every operator until the next `key_by`
(or a table's `group_by`), which ends it by writing to the repartition topic that starts
the next stage. A task is one partition of one stage: the same partition of each of its
input topics.

Inputs meet in one stage when an operator needs them together: a join, or a stateful
operator after a merge. Such inputs must be co-partitioned (same partition count, keys
hashed alike); a stream re-keyed for a join is repartitioned to match the other side:
its repartition topic takes that side's partition count and key serde. The first input
of a stage is its *lead*: the consumer group assigns lead partitions (or a lead travels
with the first source's partition, service/runtime/colocation.py), and each task takes
the same partition of the stage's other inputs along.

When nothing between a stage's start and a `key_by` changes the record value (only
filters), the `key_by` forwards the record's original bytes and the next stage reads
them with the source's serde: no second serialisation on the hot path.

Every serde is bound here to the topic and field it reads or writes (`Serde.bound`):
a schema registry's serializers name their subject after them. Sources, tables and
global tables read their topic; sinks and repartitioning writers write theirs; a key
serialised like another input's keys, to meet them in a join, is bound to that input's
topic, so it gets the bytes (and the schema id) the other side's producers write.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from connectors.serdes import KEY, KEY_FIELD, PICKLE, VALUE_FIELD, Serde
from eos.errors import ConfigurationError
from service.eventtime.clock import clock_uid
from service.job.api import JOIN_KINDS, TRANSACTIONAL_SINK, VALUE_CHANGING_KINDS, Job, Node


@dataclass
class StageInput:
    """One topic a stage reads, and the node whose operators run on its records."""

    topic: str
    root: Node
    key_serde: Serde
    value_serde: Serde
    repartition: bool
    # A table's changelog: each record is a row (a null value deletes it).
    table: bool = False
    # The stage whose key_by (or group_by) writes this input (repartition inputs).
    upstream_topic: str | None = None
    # A repartition topic's partition count: asked for by key_by, or another input's
    # topic it must match (None: the first source's count).
    partitions: int | None = None
    partitions_like: str | None = None
    # The source topic this input descends from: a repartition topic takes its
    # partition count unless told otherwise.
    origin_topic: str = ""


@dataclass
class Stage:
    id: str
    inputs: list[StageInput]
    stateful_uids: list[str] = field(default_factory=list)
    # A key_by of this stage forwards the record's original bytes.
    forwards_raw: bool = False
    # Runs on event time: a window is in it or in a stage it feeds. Its clock is state.
    event_time: bool = False
    # A key_by of this stage feeds a stage with several inputs, which orders records by
    # their timestamps: it carries each record's timestamp across.
    carries_time: bool = False

    @property
    def lead(self) -> StageInput:
        return self.inputs[0]

    @property
    def origin_topic(self) -> str:
        return self.lead.origin_topic

    @property
    def topic(self) -> str:
        return self.lead.topic

    @property
    def root(self) -> Node:
        return self.lead.root

    @property
    def key_serde(self) -> Serde:
        return self.lead.key_serde

    @property
    def value_serde(self) -> Serde:
        return self.lead.value_serde

    @property
    def repartition(self) -> bool:
        return self.lead.repartition

    @property
    def partitions(self) -> int | None:
        return self.lead.partitions

    @property
    def upstream_topic(self) -> str | None:
        return self.lead.upstream_topic

    @property
    def topics(self) -> list[str]:
        return [i.topic for i in self.inputs]

    @property
    def upstream_topics(self) -> list[str]:
        return [i.upstream_topic for i in self.inputs if i.upstream_topic is not None]

    def input_of(self, topic: str) -> StageInput:
        return next(i for i in self.inputs if i.topic == topic)

    def nodes(self) -> Iterator[Node]:
        """Every operator of the stage below its inputs' roots, once each."""
        seen: set[int] = set()
        for stage_input in self.inputs:
            for node in _walk_stage(stage_input.root):
                if id(node) not in seen:
                    seen.add(id(node))
                    yield node


@dataclass
class Plan:
    job: Job
    group: str
    stages: list[Stage]

    @property
    def all_input_topics(self) -> list[str]:
        return [t for s in self.stages for t in s.topics]

    @property
    def repartition_inputs(self) -> list[StageInput]:
        return [i for s in self.stages for i in s.inputs if i.repartition]

    @property
    def repartition_stages(self) -> list[Stage]:
        return [s for s in self.stages if any(i.repartition for i in s.inputs)]

    @property
    def global_tables(self) -> list[Node]:
        return list(self.job.global_tables)

    @property
    def sink_topics(self) -> list[str]:
        """Topics the job writes that must exist: sinks and windows' late-data topics."""
        nodes = [n for s in self.stages for n in s.nodes()]
        return sorted({n.options["topic"] for n in nodes if n.kind == "sink"}
                      | {n.options["late_topic"] for n in nodes if n.kind == "window" and n.options["late_topic"]})

    def transactional_sinks(self, stage: Stage | None = None) -> list[Node]:
        """The sinks to systems other than Kafka, of one stage or of the whole job."""
        stages = self.stages if stage is None else [stage]
        return [n for s in stages for n in s.nodes() if n.kind == TRANSACTIONAL_SINK]

    def stage_of(self, topic: str) -> Stage:
        for stage in self.stages:
            if topic in stage.topics:
                return stage
        raise KeyError(topic)

    def error_overrides(self) -> dict[str, str]:
        """Operators (sources included) whose job code chose their own error policy."""
        nodes = [i.root for s in self.stages for i in s.inputs if not i.repartition]
        nodes += [n for s in self.stages for n in s.nodes()]
        return {n.uid: n.on_error for n in nodes if n.on_error is not None}

    def time_topics(self, topic: str) -> list[str]:
        """Topics whose partition counts a task of `topic`'s stage needs on event time:
        the stages it hears from, and the repartition topics it writes."""
        stage = self.stage_of(topic)
        if not stage.event_time:
            return []
        written = [n.options["topic"] for n in stage.nodes() if n.kind in ("key_by", "group_by")]
        return stage.upstream_topics + written

    @property
    def operator_uids(self) -> list[str]:
        return [n.uid for s in self.stages for n in s.nodes()]


def repartition_topic(group: str, key_by_uid: str) -> str:
    return f"{group}-{key_by_uid}-repartition"


def _walk_stage(root: Node) -> Iterator[Node]:
    """Nodes of one stage below `root`, not crossing into the next stage (a node with
    two parents may be yielded twice)."""
    for child in root.children:
        yield child
        if child.kind not in ("key_by", "group_by"):
            yield from _walk_stage(child)


def plan(job: Job, group: str) -> Plan:
    if not job.sources:
        raise ConfigurationError(f"job {job.name!r} has no source")
    inputs = _inputs(job, group)
    stages = _stages(inputs)
    _check_topics_read_once(job, stages)
    for stage in stages:
        _co_partition(stage)
    _choose_repartition_serdes(stages, inputs)
    _bind_outputs(job, stages)
    _mark_event_time(stages)
    return Plan(job, group, stages)


def _inputs(job: Job, group: str) -> list[StageInput]:
    """One input per topic the job reads: sources and tables first, then every
    repartition topic, in the order the graph declares them."""
    inputs: list[StageInput] = []
    seen: set[int] = set()

    def visit(node: Node, upstream_topic: str, origin: str) -> None:
        for child in node.children:
            if id(child) in seen:
                continue
            seen.add(id(child))
            if child.kind in ("key_by", "group_by"):
                child.options["topic"] = repartition_topic(group, child.uid)
                child.options.setdefault("key_serde", KEY)
                inputs.append(StageInput(
                    topic=child.options["topic"], root=child, key_serde=KEY, value_serde=PICKLE,
                    repartition=True, upstream_topic=upstream_topic,
                    partitions=child.options.get("partitions"), origin_topic=origin))
                visit(child, child.options["topic"], origin)
            else:
                visit(child, upstream_topic, origin)

    for source in job.sources:
        opts = source.options
        topic = opts["topic"]
        inputs.append(StageInput(topic=topic, root=source, key_serde=opts["key_serde"].bound(topic, KEY_FIELD),
                                 value_serde=opts["value_serde"].bound(topic, VALUE_FIELD), repartition=False,
                                 table=source.kind == "table", origin_topic=topic))
    for source in job.sources:
        visit(source, source.options["topic"], source.options["topic"])
    return inputs


def _stages(inputs: list[StageInput]) -> list[Stage]:
    """Groups inputs into stages: inputs that reach a common join, or a common
    stateful operator after a merge, belong to one stage."""
    owner = list(range(len(inputs)))

    def find(i: int) -> int:
        while owner[i] != i:
            owner[i] = owner[owner[i]]
            i = owner[i]
        return i

    meeting: dict[int, int] = {}  # a node that needs its inputs together -> an input reaching it
    for index, stage_input in enumerate(inputs):
        for node in _walk_stage(stage_input.root):
            if node.kind in JOIN_KINDS or (node.kind == "merge" and _stateful_below(node)):
                other = meeting.setdefault(id(node), index)
                owner[find(index)] = find(other)
    groups: dict[int, list[StageInput]] = {}
    for index, stage_input in enumerate(inputs):
        groups.setdefault(find(index), []).append(stage_input)
    return [Stage(id=members[0].root.uid, inputs=members) for members in groups.values()]


def _stateful_below(node: Node) -> bool:
    return any(n.stateful for n in _walk_stage(node))


def _check_topics_read_once(job: Job, stages: list[Stage]) -> None:
    seen: set[str] = set()
    for stage in stages:
        for topic in stage.topics:
            if topic in seen:
                raise ConfigurationError(
                    f"topic {topic!r} is read twice by job {job.name!r}; read it once and branch the stream instead")
            seen.add(topic)


def _co_partition(stage: Stage) -> None:
    """Inputs that meet in one task must be partitioned alike: repartitioned inputs take
    the layout of the stage's input from outside the job (its partition count, and the
    serde its keys are hashed in), or of the lead. Also collects the state the stage's
    operators keep."""
    external = [i for i in stage.inputs if not i.repartition]
    if len(stage.inputs) > 1:
        key_serdes = {i.key_serde.name for i in external}
        if len(key_serdes) > 1:
            raise ConfigurationError(
                f"stage {stage.id!r} joins {', '.join(i.topic for i in external)}, whose keys are read with "
                f"different serdes ({', '.join(sorted(key_serdes))}): the same key must read alike on both "
                "sides. Read them with one key serde, or key_by one side.")
        for stage_input in stage.inputs:
            if not stage_input.repartition:
                continue
            if external:
                stage_input.key_serde = external[0].key_serde
                stage_input.root.options["key_serde"] = external[0].key_serde.bound(external[0].topic, KEY_FIELD,
                                                                                    writes=True)
                stage_input.partitions_like = external[0].topic
            elif stage_input is not stage.lead:
                if stage.lead.partitions is None:
                    stage_input.partitions_like = stage.lead.topic
                else:
                    stage_input.partitions = stage.lead.partitions
    for stage_input in stage.inputs:
        if stage_input.root.stateful:
            stage.stateful_uids.append(stage_input.root.uid)
    for node in stage.nodes():
        if node.stateful:
            stage.stateful_uids.append(node.uid)


def _choose_repartition_serdes(stages: list[Stage], inputs: list[StageInput]) -> None:
    """Decides for each key_by whether it forwards its input's bytes unchanged, and so
    which serde its repartition topic's values are in. Inputs come upstream first, so
    an input's own serde is settled before its key_bys forward it."""
    stage_of = {id(i): s for s in stages for i in s.inputs}
    by_root = {id(i.root): i for i in inputs}
    decided: set[int] = set()

    def walk(stage: Stage, stage_input: StageInput, node: Node, value_changed: bool) -> None:
        for child in node.children:
            if child.kind in ("key_by", "group_by"):
                if id(child) in decided:  # reached again through another input: values differ
                    child.options["passthrough"] = False
                else:
                    decided.add(id(child))
                    child.options["passthrough"] = (child.kind == "key_by" and not value_changed
                                                    and child.options.get("value_serde") is None)
                topic = child.options["topic"]
                if child.options["passthrough"]:
                    writer = reader = stage_input.value_serde  # the source's bytes, as they are
                else:
                    serde = child.options.get("value_serde") or PICKLE
                    writer, reader = serde.bound(topic, VALUE_FIELD, writes=True), serde.bound(topic, VALUE_FIELD)
                child.options["repartition_serde"] = writer
                by_root[id(child)].value_serde = reader
                stage.forwards_raw = stage.forwards_raw or child.options["passthrough"]
            else:
                walk(stage, stage_input, child, value_changed or child.kind in VALUE_CHANGING_KINDS)

    for stage_input in inputs:
        walk(stage_of[id(stage_input)], stage_input, stage_input.root, value_changed=stage_input.table)


def _bind_outputs(job: Job, stages: list[Stage]) -> None:
    """Binds each sink's serdes to the topic it writes and each global table's to the
    topic it reads. A serde bound before (the job planned again) is bound anew."""
    for node in {id(n): n for s in stages for n in s.nodes() if n.kind == "sink"}.values():
        topic = node.options["topic"]
        node.options["key_serde"] = node.options["key_serde"].bound(topic, KEY_FIELD, writes=True)
        node.options["value_serde"] = node.options["value_serde"].bound(topic, VALUE_FIELD, writes=True)
    for node in job.global_tables:
        topic = node.options["topic"]
        node.options["key_serde"] = node.options["key_serde"].bound(topic, KEY_FIELD)
        node.options["value_serde"] = node.options["value_serde"].bound(topic, VALUE_FIELD)


def _one_upstream_per_input(stage: Stage, stages: list[Stage]) -> None:
    """On event time a repartition input's origins are the tasks of the one stage that
    writes it; a key_by after a merge of several streams has more than one."""
    for stage_input in stage.inputs:
        if not stage_input.repartition:
            continue
        writers = [s.id for s in stages if any(n is stage_input.root for n in s.nodes())]
        if len(writers) > 1:
            raise ConfigurationError(
                f"{stage_input.root.uid!r} is written by several stages ({', '.join(writers)}), after a merge, and "
                f"feeds {stage.id!r}, which runs on event time: watermarks cannot travel through it yet. Key "
                "each stream before merging them, into a stage of several inputs.")


def _mark_event_time(stages: list[Stage]) -> None:
    """A stage with a window, timers, state with a time to live or a stream-stream join
    runs on event time (its operators say so in their "event_time" option), and so
    does every stage before it: its watermark is made from theirs. Each such stage keeps
    its clock as state. A key_by feeding a stage of several inputs carries timestamps."""
    by_topic = {t: s for s in stages for t in s.topics}
    for stage in stages:
        if len(stage.inputs) > 1:
            for upstream in stage.upstream_topics:
                by_topic[upstream].carries_time = True
        if any(n.kind in ("window", "stream_join") or n.options.get("event_time") for n in stage.nodes()):
            pending = [stage]
            while pending:
                current = pending.pop()
                if current.event_time:
                    continue
                _one_upstream_per_input(current, stages)
                current.event_time = True
                current.stateful_uids.append(clock_uid(current.id))
                pending.extend(by_topic[t] for t in current.upstream_topics)
