"""Which keyed states a job's code declares, with their kind and codec.

RocksDB's column families (`{uid}:{name}`) do not say whether a state is a value or a
map state, nor how its values are encoded; the job's code does. `aggregate` and
`reduce` keep one value state, `acc`, with the operator's codec, and the other built-in
operators the states `BUILT_IN_STATES` names; only a `process` operator declares its
states in user code, `KeyedProcessFunction.open`, which is called here against a
recording context (no state store behind it). Savepoints use this to write every state
in its canonical form, and to encode restored values the way the resumed code reads
them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from service.eventtime.windows import Count, Session
from service.job.planner import Plan, Stage
from statestore.codecs import JSON_CODEC, ValueCodec
from statestore.savepoint_manifest import MAP_STATE, VALUE_STATE
from statestore.ttl import ttl_codec

log = logging.getLogger(__name__)

# The states of built-in operators other than aggregates and windows, each with the
# operator's codec (service/tables/operators.py, service/tables/stream_join.py).
BUILT_IN_STATES = {
    "table": (("rows", VALUE_STATE),),
    "materialize": (("rows", VALUE_STATE),),
    "table_aggregate": (("acc", VALUE_STATE),),
    "stream_join": (("left", MAP_STATE), ("right", MAP_STATE)),
}


@dataclass(frozen=True)
class DeclaredState:
    uid: str
    name: str
    kind: str
    codec: ValueCodec
    stage: Stage

    @property
    def column_family(self) -> str:
        return f"{self.uid}:{self.name}"


class _Inert:
    """Stands in for a state handle while `open` runs; using it there is a mistake."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("state handles cannot be used inside open()")


class _RecordingContext:
    def __init__(self) -> None:
        self.declared: list[tuple[str, str, ValueCodec]] = []

    def value_state(self, name: str, codec: ValueCodec = JSON_CODEC, ttl_ms: int | None = None) -> _Inert:
        self.declared.append((name, VALUE_STATE, codec if ttl_ms is None else ttl_codec(codec)))
        return _Inert()

    def map_state(self, name: str, codec: ValueCodec = JSON_CODEC, ttl_ms: int | None = None) -> _Inert:
        self.declared.append((name, MAP_STATE, codec if ttl_ms is None else ttl_codec(codec)))
        return _Inert()


def declared_states(plan: Plan) -> dict[str, DeclaredState]:
    """Every state the job's code declares, by column family name."""
    states: dict[str, DeclaredState] = {}
    for stage in plan.stages:
        operators = {i.root.uid: i.root for i in stage.inputs} | {n.uid: n for n in stage.nodes()}
        for uid in stage.stateful_uids:
            node = operators.get(uid)
            if node is None:
                continue  # an event-time clock: per task, not per key
            if node.kind in ("aggregate", "reduce"):
                codec = node.options.get("codec") or JSON_CODEC
                declared = [("acc", VALUE_STATE, codec if node.options.get("ttl_ms") is None else ttl_codec(codec))]
            elif node.kind in BUILT_IN_STATES:
                declared = [(name, kind, node.options["codec"]) for name, kind in BUILT_IN_STATES[node.kind]]
            elif node.kind == "window":
                name = "sessions" if isinstance(node.options["shape"], Session) else "windows"
                declared = [(name, MAP_STATE, node.options["codec"])]
                if isinstance(node.options["shape"], Count):
                    declared.append(("count", VALUE_STATE, JSON_CODEC))
            elif node.kind == "process":
                declared = _process_states(uid, node.fn)
                if node.options.get("timers"):
                    declared.append(("timers", MAP_STATE, JSON_CODEC))
            else:
                raise AssertionError(f"operator {uid!r}: the states of a {node.kind!r} are not known")
            for name, kind, codec in declared:
                state = DeclaredState(uid, name, kind, codec, stage)
                states[state.column_family] = state
    return states


def operator_of(column_family: str, uids: list[str]) -> tuple[str, str] | None:
    """(uid, state name) of a column family, given the operators that may own it."""
    for uid in sorted(uids, key=len, reverse=True):
        if column_family.startswith(uid + ":"):
            return uid, column_family[len(uid) + 1:]
    return None


def _process_states(uid: str, factory: Any) -> list[tuple[str, str, ValueCodec]]:
    context = _RecordingContext()
    try:
        factory().open(context)
    except Exception as exc:  # noqa: BLE001 - user code; the live tables still tell
        log.warning("operator %r: cannot list its states by calling open() (%s: %s); states it has "
                    "opened in a task are still known", uid, type(exc).__name__, exc)
    return context.declared
