"""State with a time to live, over a real RocksDB task state, without a broker: what
reads see, what the cleanup deletes and counts, what the job's plan and savepoints make
of it."""

from __future__ import annotations

import pytest

from eos import JSON, Job, KeyedProcessFunction
from eos.errors import ConfigurationError, SavepointError
from service.job.planner import plan
from service.savepoints.schema import declared_states
from statestore.codecs import JSON_CODEC, PICKLE_CODEC
from statestore.digests import DigestCache
from statestore.savepoint_data import value_encoder
from statestore.state import KeyedContext
from statestore.state_dir import TaskDirectory
from statestore.storage.file import FileStorage
from statestore.task_state import TaskState
from statestore.ttl import TtlClock, ttl_codec


class _Time:
    """The clock a chain would give: `now` for reads and writes, `settled` for the cleanup."""

    def __init__(self) -> None:
        self.now = self.settled = 0
        self.expired = 0

    def clock(self) -> TtlClock:
        return TtlClock(now=lambda: self.now, settled=lambda: self.settled, expired=self._count)

    def _count(self, n: int) -> None:
        self.expired += n


@pytest.fixture
def state(tmp_path):
    state = TaskState(TaskDirectory(tmp_path, "g", "t-0", "tok"), FileStorage(tmp_path / "s"), "g", "t-0",
                      DigestCache())
    state.open(None)
    yield state
    state.close()


def _stored(state: TaskState, cf: str) -> dict:
    return dict(state.tables[cf].items())


def test_an_expired_value_is_never_read_and_a_write_never_shortens_a_life(state):
    time = _Time()
    ctx = KeyedContext(state, "op", time.clock())
    last = ctx.value_state("last", ttl_ms=100)
    ctx.key = "u1"
    time.now = 1_000
    last.set("a")
    time.now = 1_099
    assert last.get() == "a"
    time.now = 990  # a record behind: written at 990, the value still lives from 1_000
    last.set("b")
    time.now = 1_099
    assert last.get() == "b"
    time.now = 1_100
    assert last.get("gone") == "gone", "an expired value was read"
    state.flush()
    assert _stored(state, "op:last") == {}, "reading an expired value did not delete it"


def test_map_entries_expire_one_by_one(state):
    time = _Time()
    ctx = KeyedContext(state, "op", time.clock())
    seen = ctx.map_state("seen", ttl_ms=50)
    ctx.key = "u1"
    time.now = 100
    seen.put("x", 1)
    time.now = 130
    seen.put("y", 2)
    time.now = 149
    assert sorted(seen.items()) == [("x", 1), ("y", 2)] and seen.contains("x")
    time.now = 150
    assert seen.keys() == ["y"] and seen.get("x") is None and not seen.contains("x")
    time.now = 180
    assert seen.items() == []


def test_the_cleanup_deletes_a_slice_of_expired_values_at_each_flush_and_counts_them(state, monkeypatch):
    import statestore.ttl as ttl

    monkeypatch.setattr(ttl, "SWEEP_ENTRIES", 300)
    time = _Time()
    totals = KeyedContext(state, "op", time.clock()).value_state("total", ttl_ms=1_000)
    ctx = totals._ctx
    for i in range(1_000):
        ctx.key, time.now = f"k{i:04d}", i * 10  # k0000 written at 0 ... k0999 at 9_990
        totals.set(i)
    state.flush()
    assert len(_stored(state, "op:total")) == 1_000
    time.settled = 6_000  # k0000..k0500 expired (written at or before 5_000)
    ctx.key, time.now = "k0100", 6_000
    state.tables["op:total"].put("k0100", (6_000, -1))  # rewritten since: the cleanup must keep it
    state.flush()
    assert 0 < time.expired <= 300, f"{time.expired} deleted by one flush, over its slice of 300 entries"
    for _ in range(4):
        state.flush()
    stored = _stored(state, "op:total")
    assert time.expired == 500 and len(stored) == 500
    assert "k0100" in stored and "k0099" not in stored and "k0501" in stored and "k0500" not in stored


def test_a_ttl_needs_a_positive_duration_and_a_stage_on_event_time(state):
    with pytest.raises(ConfigurationError, match="event time"):
        KeyedContext(state, "op").value_state("last", ttl_ms=1_000)
    with pytest.raises(ConfigurationError, match="positive"):
        KeyedContext(state, "op", _Time().clock()).map_state("m", ttl_ms=0)
    with pytest.raises(ConfigurationError, match="positive"):
        Job("j").source("in", value=JSON).key_by_record_key().aggregate(lambda a, v: a, ttl_ms=-5)


class _Recall(KeyedProcessFunction):
    def open(self, ctx):
        self.last = ctx.value_state("last", ttl_ms=5_000)
        self.plain = ctx.value_state("plain")

    def process(self, key, value, ctx):
        yield value


def test_operators_with_a_ttl_put_their_stage_on_event_time_and_savepoints_know_their_codec():
    job = Job("j")
    keyed = job.source("in", value=JSON).key_by(lambda v: v["k"], uid="by-k")
    keyed.process(_Recall, uid="recall").sink("out")
    keyed.aggregate(lambda a, v: a + 1, initial=0, ttl_ms=60_000, uid="count").sink("out2")
    p = plan(job, "g")
    assert [s.event_time for s in p.stages] == [True, True]
    states = declared_states(p)
    assert states["recall:last"].codec.name == "json+ttl" and states["recall:plain"].codec.name == "json"
    assert states["count:acc"].codec.name == "json+ttl"
    plain = Job("p")
    plain.source("in", value=JSON).key_by_record_key().aggregate(lambda a, v: a, initial=0).sink("out")
    assert not any(s.event_time for s in plan(plain, "g").stages)


def test_a_savepoint_refuses_to_add_or_drop_a_ttl_and_keeps_ttl_values_as_json():
    with pytest.raises(SavepointError, match="time to live"):
        value_encoder("json", ttl_codec(JSON_CODEC), "state op:last")
    with pytest.raises(SavepointError, match="time to live"):
        value_encoder("json+ttl", JSON_CODEC, "state op:last")
    encode = value_encoder("json+ttl", ttl_codec(JSON_CODEC), "state op:last")
    assert encode({"v": [1_000, {"a": 1}]}) == b'[1000,{"a":1}]'
    assert ttl_codec(PICKLE_CODEC).decode(ttl_codec(PICKLE_CODEC).encode((5, {"a"}))) == (5, {"a"})
