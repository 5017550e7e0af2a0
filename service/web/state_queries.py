"""Queryable state: `GET /state/{uid}/{key}` answers a key's state from a running worker.

The key's partition is where Kafka's producers send its records (murmur2 of its Kafka
key bytes, as savepoints place keys), so the key's task is known without asking anyone.
The worker that runs that task answers; any other worker answers 307 with the owner's
name and addresses (the group's assignment says who it is), as Kafka Streams' key query
metadata does.

A read reflects the task's *live* state: every record before the task's `position`,
including changes its next checkpoint has not committed yet. The answer says which
checkpoint the state last committed (`checkpoint`) and whether it has changed since
(`uncommitted`); when it has not, the value is exactly that checkpoint's, the state a
`read_committed` reader of the job's output has seen. A failure rolls uncommitted
changes back to that checkpoint, so read committed values where that matters.

Requests arrive on HTTP threads; the read runs on the worker's loop thread between two
batches (`tick`), like every other touch of task state, so the record path stays
lock-free.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from connectors.group import GroupView, Member
from service.job.planner import Plan, Stage
from service.savepoints.resume import kafka_key_bytes
from service.savepoints.schema import declared_states, operator_of
from service.web.routing import Request, Response, Router
from statestore.keys import KeyEncodingError, encode_key
from statestore.murmur2 import partition_for
from statestore.savepoint_manifest import MAP_STATE

log = logging.getLogger(__name__)

STATE_PREFIX = "/state/"
REPLY_TIMEOUT_S = 30.0


@dataclass
class _Query:
    stage: Stage
    uid: str
    key: Any
    partition: int
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[int, dict[str, Any]] | None = None


class StateQueries:
    """The worker's side: HTTP threads queue queries, the loop answers them."""

    def __init__(self, worker_id: str, group: str, client_config: dict[str, Any]) -> None:
        self.worker_id = worker_id
        self.group = group
        self._client_config = client_config
        self._group_view: GroupView | None = None
        self.plan: Plan | None = None
        self.manager: Any = None
        self.partition_counts: dict[str, int] = {}
        self._inbox: queue.SimpleQueue[_Query] = queue.SimpleQueue()

    def attach(self, plan: Plan, manager: Any, partition_counts: dict[str, int]) -> None:
        self.plan, self.manager, self.partition_counts = plan, manager, dict(partition_counts)
        self._declared = declared_states(plan)

    # -- HTTP threads -------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        uid, _, raw_key = request.path[len(STATE_PREFIX):].partition("/")
        uid = unquote(uid)
        if self.plan is None or self.manager is None or not getattr(self.manager, "ready", False):
            return Response.json(503, {"error": "the worker is still starting"})
        if not uid or not raw_key:
            return Response.json(400, {"error": "ask GET /state/{uid}/{key}"})
        stage = next((s for s in self.plan.stages if uid in s.stateful_uids), None)
        if stage is None:
            known = sorted(u for s in self.plan.stages for u in s.stateful_uids)
            return Response.json(404, {"error": f"no stateful operator {uid!r} in this job; stateful uids: "
                                                f"{', '.join(known) or 'none'}"})
        try:
            key = _parse_key(unquote(raw_key), parse_qs(request.query).get("key", ["string"])[0])
            partition = partition_for(kafka_key_bytes(stage)(encode_key(key)), self.partition_counts[stage.topic])
        except (ValueError, KeyEncodingError) as exc:
            return Response.json(400, {"error": str(exc)})
        query = _Query(stage, uid, key, partition)
        self._inbox.put(query)
        if not query.done.wait(REPLY_TIMEOUT_S):
            return Response.json(504, {"error": f"the worker's loop did not answer within {REPLY_TIMEOUT_S:.0f}s"})
        status, body = query.answer
        if status == 307:
            owner = self._owner(*self.manager.colocation.assigned_with((query.stage.topic, query.partition)))
            if owner is None:
                return Response(503, _dumps({**body, "error": f"no worker holds partition {query.partition} of "
                                                             f"{query.stage.topic} right now (a rebalance?)"}),
                                "application/json")
            body = {**body, "owner": owner.worker, "urls": list(owner.advertised)}
            return Response(307, _dumps(body), "application/json",
                            headers={"Location": f"{body['urls'][0]}{request.path}"
                                                 + (f"?{request.query}" if request.query else "")}
                            if body["urls"] else {})
        return Response(status, _dumps(body), "application/json")

    # -- loop thread ----------------------------------------------------------------------

    def tick(self, _loop: Any = None) -> None:
        """Called once per loop pass: one queue check while nobody asks."""
        while not self._inbox.empty():
            query = self._inbox.get_nowait()
            try:
                query.answer = self._answer(query)
            except Exception as exc:  # noqa: BLE001 - a failed read must not stop the worker
                log.exception("state query %s/%r", query.uid, query.key)
                query.answer = (500, {"error": f"{type(exc).__name__}: {exc}"})
            query.done.set()

    def _answer(self, query: _Query) -> tuple[int, dict[str, Any]]:
        stage, topic = query.stage, query.stage.topic
        about = {"uid": query.uid, "key": query.key, "stage": stage.id, "topic": topic,
                 "partition": query.partition, "task": f"{topic}-{query.partition}"}
        task = self.manager.tasks.get((topic, query.partition))
        if task is None:  # the HTTP thread asks the group who holds it
            return 307, {**about, "answered_by": self.worker_id}
        states = {}
        store_families = set(task.state.store.column_families) if task.state is not None else set()
        for cf in sorted(store_families):
            owner_of = operator_of(cf, stage.stateful_uids)
            if owner_of is None or owner_of[0] != query.uid:
                continue
            value = self._read(task.state, cf, query.key)
            if value is not None:
                states[owner_of[1]] = value
        body = {**about, "worker": self.worker_id, "found": bool(states), "state": states,
                "position": {i.topic: i.next_offset for i in task.inputs},
                "checkpoint": task.completed.checkpoint_id, "uncommitted": bool(task.changed)}
        return (200 if states else 404), body

    def _owner(self, topic: str, partition: int) -> Member | None:
        """The member the group assigned the partition to (asked on the HTTP thread)."""
        if self._group_view is None:
            self._group_view = GroupView(self.group, self._client_config, timeout_s=10.0)
        for member in self._group_view.members() or ():
            if (topic, partition) in member.assignment:
                return member
        return None

    def _read(self, task_state: Any, cf: str, key: Any) -> Any:
        table = task_state.tables.get(cf)
        declared = self._declared.get(cf)
        if table is None and declared is None:
            return None
        is_map = declared.kind == MAP_STATE if table is None else hasattr(table, "entries")
        if table is None:
            table = (task_state.map_table if is_map else task_state.value_table)(cf, declared.codec)
        if is_map:
            entries = table.entries(key)
            return [{"key": k, "value": v} for k, v in sorted(entries.items(), key=lambda kv: repr(kv[0]))] or None
        return table.get(key)


def _parse_key(text: str, kind: str) -> Any:
    """The key as the URL gives it: a string (default), or a JSON literal with
    `?key=json` (numbers, lists for tuple keys)."""
    if kind == "string":
        return text
    if kind == "json":
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"key {text!r} is not JSON ({exc})") from None
        return tuple(value) if isinstance(value, list) else value
    raise ValueError(f"?key= must be string or json, not {kind!r}")


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, default=repr, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"


def add_state_route(router: Router, queries: StateQueries) -> None:
    router.add_prefix("GET", STATE_PREFIX, queries.handle)
