"""The job API, planner and operator chain, without Kafka (the chain is fed directly)."""

from __future__ import annotations

import pytest

from connectors.kafka_sink import Produce
from connectors.serdes import JSON, STRING
from eos.errors import ConfigurationError
from service.checkpointing.faults import FaultInjector
from service.job.api import Job, KeyedProcessFunction, Params, initial_factory
from service.job.planner import plan
from service.runtime.config import parse_duration
from service.runtime.operators import ChainContext, OperatorFailure, build_input
from statestore.digests import DigestCache
from statestore.state_dir import TaskDirectory
from statestore.storage.file import FileStorage
from statestore.task_state import TaskState


class Collector:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(self, topic, value, key=None, *args):
        self.records.append((topic, key, value))

    def as_produce(self) -> Produce:
        return Produce(self.produce, self.produce)


def _state(tmp_path):
    state = TaskState(TaskDirectory(tmp_path, "g", "t-0", "tok"), FileStorage(tmp_path / "s"), "g", "t-0",
                      DigestCache())
    state.open(None)
    return state


def test_key_by_ends_a_stage_and_forwards_raw_bytes_when_the_value_is_unchanged():
    job = Job("j")
    (job.source("in", value=JSON).filter(lambda v: v["ok"]).key_by(lambda v: v["user"], uid="by")
        .aggregate(lambda a, v: a + 1, initial=0, uid="count").sink("out", key=STRING, value=JSON))
    p = plan(job, "grp")
    assert [s.topic for s in p.stages] == ["in", "grp-by-repartition"]
    assert p.stages[0].forwards_raw and p.stages[1].value_serde is JSON
    assert p.stages[1].stateful_uids == ["count"] and p.sink_topics == ["out"]


def test_key_by_after_a_map_serialises_the_new_value():
    job = Job("j")
    job.source("in", value=JSON).map(lambda v: (v, 1)).key_by(lambda v: v[0], uid="by").sink("out")
    p = plan(job, "g")
    assert not p.stages[0].forwards_raw and p.stages[1].value_serde.name == "pickle"


def test_duplicate_uids_and_missing_params_are_clear_errors():
    job = Job("j")
    stream = job.source("in", uid="x")
    with pytest.raises(ConfigurationError, match="used twice"):
        stream.map(str, uid="x")
    with pytest.raises(ConfigurationError, match="needs parameter 'output'"):
        Params({"input": "a"})["output"]


def test_chain_runs_stateful_aggregate_per_key(tmp_path):
    job = Job("j")
    (job.source("in", value=JSON).key_by_record_key()
        .aggregate(lambda acc, v: acc + v, initial=0, uid="sum").sink("out", key=STRING, value=JSON))
    stage = plan(job, "g").stages[0]
    out = Collector()
    push = build_input(stage.lead, ChainContext(out.as_produce(), _state(tmp_path)))
    for key, value in [("a", 1), ("b", 10), ("a", 2)]:
        push(key, value)
    assert out.records == [("out", b"a", b"1"), ("out", b"b", b"10"), ("out", b"a", b"3")]


def test_process_function_uses_named_state_for_the_current_key(tmp_path):
    class Dedupe(KeyedProcessFunction):
        def open(self, ctx):
            self.seen = ctx.map_state("seen")

        def process(self, key, value, ctx):
            if not self.seen.contains(value):
                self.seen.put(value, True)
                yield value

    job = Job("j")
    job.source("in").key_by_record_key().process(Dedupe, uid="dedupe").sink("out", key=STRING, value=JSON)
    out = Collector()
    push = build_input(plan(job, "g").stages[0].lead, ChainContext(out.as_produce(), _state(tmp_path)))
    for key, value in [("a", 1), ("a", 1), ("b", 1), ("a", 2)]:
        push(key, value)
    assert [(k, v) for _, k, v in out.records] == [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")]


def test_user_function_errors_name_their_operator(tmp_path):
    job = Job("j")
    job.source("in", value=JSON).map(lambda v: v["missing"], uid="extract").sink("out")
    push = build_input(plan(job, "g").stages[0].lead, ChainContext(Collector().as_produce(), None))
    with pytest.raises(OperatorFailure) as raised:
        push(None, {"present": 1})
    assert raised.value.uid == "extract" and isinstance(raised.value.cause, KeyError)


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("1s", 1.0), ("2m", 120.0), ("1.5", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text, "x") == seconds


def test_fault_specs_are_validated():
    assert FaultInjector("after_commit@4").at == 4
    with pytest.raises(ValueError, match="is not one of"):
        FaultInjector("after_lunch")


def test_kraft_cluster_ids_never_start_with_a_dash():
    # One in 64 random ids would; kafka-storage would then read it as an option.
    from service.local_kafka.broker import _cluster_id

    assert not any(_cluster_id().startswith("-") for _ in range(5_000))


@pytest.mark.parametrize("initial", [{"sum": 0, "count": 0}, [0, 0], {"sum": 0, "items": []}, {"n": {"k": 0}}])
def test_every_key_gets_its_own_copy_of_a_mutable_initial_accumulator(initial):
    make = initial_factory(initial)
    first, second = make(), make()
    assert first == second == initial
    assert first is not second and first is not initial
    for member in (first.values() if isinstance(first, dict) else first):
        if isinstance(member, (dict, list)):
            assert all(member is not m for m in (second.values() if isinstance(second, dict) else second))
