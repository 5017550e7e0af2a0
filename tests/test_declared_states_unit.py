"""The states a job declares, for savepoints and state queries: every stateful kind
the planner knows names its states, and listing them calls no user function."""

from __future__ import annotations

import logging

from eos import JSON, STRING, Job
from service.eventtime.clock import is_clock_uid
from service.job.api import STATEFUL_KINDS
from service.job.planner import plan
from service.savepoints.schema import declared_states
from statestore.savepoint_manifest import MAP_STATE, VALUE_STATE


def _never_called(*args):
    raise AssertionError(f"a user function was called while listing states: {args}")


def _tables_and_joins() -> Job:
    job = Job("tables")
    users = job.table("users", key=STRING, value=JSON, uid="users")
    users.group_by(_never_called, uid="by-country").count(uid="count").sink("counts", key=STRING, value=JSON)
    payments = job.source("payments", key=STRING, value=JSON, uid="payments")
    (job.source("orders", key=STRING, value=JSON, uid="orders")
        .join(payments, _never_called, within_ms=10_000, uid="paid")
        .sink("paid-out", key=STRING, value=JSON))
    job.source("profiles", key=STRING, value=JSON, uid="profiles").to_table(uid="latest").to_stream().sink("p")
    return job


def test_tables_aggregates_and_stream_joins_declare_their_states_without_running_user_code(caplog):
    with caplog.at_level(logging.WARNING):
        states = declared_states(plan(_tables_and_joins(), "g"))
    assert {cf: s.kind for cf, s in states.items()} == {
        "users:rows": VALUE_STATE, "count:acc": VALUE_STATE, "paid:left": MAP_STATE, "paid:right": MAP_STATE,
        "latest:rows": VALUE_STATE}
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_every_stateful_kind_of_the_planner_is_declared():
    job = _tables_and_joins()
    keyed = job.source("in", value=JSON).key_by(lambda v: v["k"], uid="by-k")
    keyed.aggregate(lambda a, v: a, initial=0, uid="agg").sink("o1")
    keyed.reduce(lambda a, v: v, uid="red").sink("o2")
    p = plan(job, "g")
    kinds = {n.kind for s in p.stages for n in s.nodes() if n.stateful} | {
        i.root.kind for s in p.stages for i in s.inputs if i.root.stateful}
    declared = {s.uid for s in declared_states(p).values()}
    stateful = {u for s in p.stages for u in s.stateful_uids if not is_clock_uid(u)}
    assert stateful <= declared, stateful - declared
    assert kinds <= STATEFUL_KINDS
