"""The window operators (tumbling, hopping, sliding, count) against the independent
oracle, without a broker: random inputs with out-of-order and late records run through the operator over
a real RocksDB, with the chain rebuilt from its state now and then (as after a restart);
what it sends must be what the oracle derives from the definitions."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from eos import JSON, Count, Hopping, Job, Sliding, Tumbling
from service.eventtime.count_operator import build_count
from service.eventtime.sliding_operator import build_sliding
from service.eventtime.window_operator import build_window
from service.job.api import Node
from service.runtime.operators import OperatorFailure
from statestore.rocks import TaskStore
from statestore.tables import MapTable, ValueTable
from tests.harness.window_oracle import (
    FLUSH_USER,
    TimedOrder,
    WindowRules,
    check_windows,
    expected_count_windows,
    expected_sliding,
    expected_windows,
)


class _State:
    """The task state's table factory over a real RocksDB; `flush` writes what changed,
    as a checkpoint does."""

    def __init__(self, path) -> None:
        self.store = TaskStore(path, [])
        self.tables: dict = {}

    def _table(self, cf, codec, kind):
        if cf not in self.tables:
            self.store.ensure_column_family(cf)
            self.tables[cf] = kind(self.store, cf, codec)
        return self.tables[cf]

    def map_table(self, cf, codec):
        return self._table(cf, codec, MapTable)

    def value_table(self, cf, codec):
        return self._table(cf, codec, ValueTable)

    def flush(self) -> None:
        batch = self.store.new_batch()
        for table in self.tables.values():
            table.drain_into(batch, self.store.handle(table.cf))
        self.store.commit(batch)
        for table in self.tables.values():
            table.evict()


class _Chain:
    """A one-origin chain: each record's watermark is the one before it."""

    def __init__(self, node: Node, state: _State, out_of_orderness_ms: int) -> None:
        self.node, self.state, self.out_of_orderness_ms = node, state, out_of_orderness_ms
        self.outputs: list[tuple[bytes, bytes, int]] = []
        self.watermark = -(2**63)
        self.rebuild()

    def rebuild(self) -> None:
        self.state.flush()
        self.ctx = ctx = SimpleNamespace(state=self.state, ts=0, record_watermark=self.watermark, raw=b"",
                                         clock=SimpleNamespace(watermark=self.watermark), watermark_listeners=[],
                                         late_counter=lambda uid, routed: lambda: None,
                                         produce=SimpleNamespace(blocking=None))

        def down(key, value):
            self.outputs.append((key.encode(), json.dumps(value).encode(), ctx.ts))

        build = {Count: build_count, Sliding: build_sliding}.get(type(self.node.options["shape"]), build_window)
        self.push = build(self.node, ctx, down, OperatorFailure)

    def send(self, order: TimedOrder) -> None:
        ctx = self.ctx
        ctx.ts, ctx.record_watermark, ctx.clock.watermark = order.ts, self.watermark, self.watermark
        self.push(order.user, {"amount": order.amount})
        moved = max(self.watermark, order.ts - self.out_of_orderness_ms)
        if moved > self.watermark:
            self.watermark = ctx.clock.watermark = moved
            for listener in ctx.watermark_listeners:
                listener(moved)


def _window_node(shape, emit: str) -> Node:
    job = Job("unit")
    stream = job.source("in", value=JSON).key_by_record_key().window(shape, grace_ms=GRACE_MS if not
                                                                     isinstance(shape, Count) else 0)
    stream.aggregate(_add, initial={"orders": 0, "amount": 0}, emit=emit, uid="w")
    return job.sources[0].children[0]


def _add(totals: dict, order: dict) -> dict:
    return {"orders": totals["orders"] + 1, "amount": totals["amount"] + order["amount"]}


SIZE_MS, GRACE_MS, OUT_OF_ORDERNESS_MS = 1_000, 300, 200


def _orders(seed: int, count: int, users: int) -> list[TimedOrder]:
    rng = random.Random(seed)
    orders, now = [], 1_000_000
    for i in range(count):
        now += rng.choice((0, 1, 5, 40, 200, 700))
        ts = now + rng.randint(-400, 100)
        if rng.random() < 0.08:
            ts -= rng.randint(600, 3_000)  # out of order, often late
        orders.append(TimedOrder(i, f"u{rng.randrange(users)}", rng.randint(1, 9), ts, 0))
    return orders + [TimedOrder(count, FLUSH_USER, 0, now + 10 * SIZE_MS, 0)]


def _run(shape, emit: str, orders: list[TimedOrder], tmp_path, rebuild_every: int) -> list:
    chain = _Chain(_window_node(shape, emit), _State(tmp_path), OUT_OF_ORDERNESS_MS)
    for i, order in enumerate(orders):
        if rebuild_every and i % rebuild_every == rebuild_every - 1:
            chain.rebuild()
        chain.send(order)
    return chain.outputs


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rebuild_every=st.sampled_from([0, 1, 7, 31]),
       advance=st.sampled_from([None, 250, 500]), emit=st.sampled_from(["final", "update"]))
def test_tumbling_and_hopping_windows_are_what_their_definition_says(seed, rebuild_every, advance, emit,
                                                                    tmp_path_factory):
    orders = _orders(seed, 300, users=3)
    expected = expected_windows(orders, WindowRules(SIZE_MS, advance, GRACE_MS, OUT_OF_ORDERNESS_MS))
    shape = Tumbling(SIZE_MS) if advance is None else Hopping(SIZE_MS, advance)
    outputs = _run(shape, emit, orders, tmp_path_factory.mktemp("tumbling"), rebuild_every)
    report = check_windows(expected, outputs, emit, SIZE_MS)
    assert report.ok, report.summary()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rebuild_every=st.sampled_from([0, 7, 31]),
       emit=st.sampled_from(["final", "update"]))
def test_sliding_windows_are_what_their_definition_says(seed, rebuild_every, emit, tmp_path_factory):
    orders = _orders(seed, 300, users=3)
    expected = expected_sliding(orders, SIZE_MS, GRACE_MS, OUT_OF_ORDERNESS_MS)
    outputs = _run(Sliding(SIZE_MS), emit, orders, tmp_path_factory.mktemp("sliding"), rebuild_every)
    report = check_windows(expected, outputs, emit, SIZE_MS, inclusive_end=True)
    assert report.ok, report.summary()


def test_closed_sliding_windows_leave_the_state_once_no_record_can_need_them(tmp_path):
    """A closed window stays only as long as a record still on time could build on it
    (its end plus size plus grace behind the watermark); after the flush record only the
    flush key's own windows are left."""
    chain = _Chain(_window_node(Sliding(SIZE_MS), "final"), _State(tmp_path), OUT_OF_ORDERNESS_MS)
    for order in _orders(3, 300, users=3):
        chain.send(order)
    chain.state.flush()
    left = {key for (key, _), _ in chain.state.tables["w:windows"].items()}
    assert left == {FLUSH_USER}, left


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rebuild_every=st.sampled_from([0, 5, 23]),
       shape=st.sampled_from([(4, None), (5, 2), (3, 3), (6, 4)]), emit=st.sampled_from(["final", "update"]))
def test_count_windows_are_what_their_definition_says(seed, rebuild_every, shape, emit, tmp_path_factory):
    size, slide = shape
    orders = _orders(seed, 200, users=4)
    expected = expected_count_windows(orders, size, slide or size, unfilled=emit == "update")
    outputs = _run(Count(size, slide), emit, orders, tmp_path_factory.mktemp("count"), rebuild_every)
    report = check_windows(expected, outputs, emit, 0, final_ts=False)
    assert report.ok, report.summary()
