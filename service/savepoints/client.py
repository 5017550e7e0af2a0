"""Taking a savepoint of a job's group: the client side of the workers' control API.

The client talks to every worker of the group (their `--http-port` URLs) and walks
them through the protocol in service/savepoints/control.py:

1. begin on every worker: each pauses its source partitions and commits a checkpoint;
2. poll until two consecutive rounds find every worker idle (drained, nothing
   uncommitted) with unchanged progress: then nothing is in flight anywhere, because
   any record still moving between stages would have changed some worker's progress
   or kept it busy in one of the two rounds;
3. write on every worker; each writes its tasks' state files and reports its part;
4. check that the parts cover every partition of every stage exactly once, then write
   the manifest, last and atomically: only now does the savepoint exist;
5. finish: workers resume their sources (`trigger`) or exit 0 (`stop`).

Any failure before the manifest cancels every worker (sources resume, nothing else
changes) and leaves a directory without a manifest, which is never listed as usable.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from eos.errors import SavepointError
from service.savepoints.control import savepoint_location
from service.savepoints.publish import MANIFEST_PATH, write_manifest
from service.web.http_client import PeerUnreachable, call_json
from statestore.savepoint_manifest import (
    OperatorState,
    PartitionPosition,
    SavepointManifest,
    StageLayout,
    StateFile,
)
from statestore.storage import S3Settings

log = logging.getLogger(__name__)

POLL_S = 0.05
HTTP_TIMEOUT_S = 150.0


def new_savepoint_id() -> str:
    return f"sp-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


class WorkerEndpoint:
    """One worker's control API."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        try:
            status, payload = call_json(self.url + path, method, body, token=self.token, timeout_s=HTTP_TIMEOUT_S)
        except PeerUnreachable as exc:
            raise SavepointError(f"cannot reach worker {exc} (is it running with --http-port?)") from None
        if status == 403:
            raise SavepointError(f"worker {self.url} refused control: {payload.get('error') or payload.get('text')}"
                                 " (remote callers need --control-allow and a control token on the worker, and "
                                 "the same token here: --control-token-file or EOS_CONTROL_TOKEN)")
        return status, payload

    def expect(self, method: str, path: str, body: dict[str, Any] | None, *ok: int) -> dict[str, Any]:
        status, payload = self.call(method, path, body)
        if status not in ok:
            raise SavepointError(f"worker {self.url}: {method} {path} answered {status}: "
                                 f"{payload.get('error') or payload}")
        return payload


@dataclass(frozen=True)
class SavepointResult:
    location: str
    manifest: SavepointManifest
    seconds: float
    warnings: tuple[str, ...] = ()


def take_savepoint(urls: list[str], *, mode: str, target: str | None = None, token: str | None = None,
                   timeout_s: float = 300.0, s3: S3Settings | None = None, job: str | None = None,
                   say: Callable[[str], None] = lambda text: None) -> SavepointResult:
    """Takes one savepoint of the group the workers at `urls` belong to (the group `job`,
    when given)."""
    if not urls:
        raise SavepointError("name the job, or its workers with --worker URL (one per worker)")
    began = time.monotonic()
    endpoints = [WorkerEndpoint(url, token) for url in urls]
    identities = [e.expect("GET", "/savepoints", None, 200) for e in endpoints]
    _check_one_group(urls, identities)
    if job is not None and identities[0]["group"] != job:
        raise SavepointError(f"the workers named run job {identities[0]['group']!r}, not {job!r}")
    _check_coverage(identities)
    directory = target or identities[0]["savepoint_dir"]
    savepoint_id = new_savepoint_id()
    location = savepoint_location(directory, savepoint_id)
    deadline = began + timeout_s
    begun: list[WorkerEndpoint] = []
    try:
        for endpoint in endpoints:
            endpoint.expect("POST", "/savepoints", {"id": savepoint_id, "target": directory, "mode": mode,
                                                    "timeout_s": 60.0}, 202)
            begun.append(endpoint)
        say(f"savepoint {savepoint_id}: sources paused on {len(endpoints)} worker(s); draining")
        _wait_drained(endpoints, savepoint_id, deadline)
        for endpoint in endpoints:
            endpoint.expect("POST", "/savepoints/write", {"id": savepoint_id}, 202)
        say(f"savepoint {savepoint_id}: drained; writing state")
        parts = _wait_written(endpoints, savepoint_id, deadline)
        manifest = assemble(savepoint_id, mode, parts)
        _publish(endpoints[0], location, manifest, s3)
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        for endpoint in begun:
            try:
                endpoint.call("POST", "/savepoints/cancel", {"id": savepoint_id, "reason": f"savepoint failed: {reason}"})
            except SavepointError as cancel_exc:
                log.warning("%s", cancel_exc)
        raise
    warnings = tuple(w for part in parts for w in part.get("undeclared", ()))
    for endpoint in endpoints:
        endpoint.expect("POST", "/savepoints/finish", {"id": savepoint_id}, 200)
    if mode == "stop":
        _wait_stopped(endpoints, deadline=time.monotonic() + 60)
    return SavepointResult(location, manifest, time.monotonic() - began,
                           tuple(f"state left out (no operator declares it): {w}" for w in warnings))


def _check_one_group(urls: list[str], identities: list[dict[str, Any]]) -> None:
    groups = {(i["job"], i["group"]) for i in identities}
    if len(groups) != 1:
        described = ", ".join(f"{u} ({i['job']}, group {i['group']})" for u, i in zip(urls, identities))
        raise SavepointError(f"the workers belong to different jobs or groups: {described}")
    workers = [i["worker"] for i in identities]
    if len(set(workers)) != len(workers):
        raise SavepointError(f"a worker is named twice: {', '.join(workers)}")


def _check_coverage(identities: list[dict[str, Any]]) -> None:
    """Refuses early when the workers asked do not hold every partition (the final
    manifest is checked again, since partitions may move meanwhile)."""
    topics = identities[0].get("topics") or {}
    held = {(topic, partition) for i in identities for topic, partition in i.get("assignment", [])}
    missing = [f"{topic}[{p}]" for topic, count in sorted(topics.items()) for p in range(count)
               if (topic, p) not in held]
    if missing:
        raise SavepointError(
            f"the workers asked ({', '.join(i['worker'] for i in identities)}) hold no task for partitions "
            f"{', '.join(missing)} of group {identities[0]['group']!r}: name every worker of the group with "
            "--job (or wait until a rebalance has finished)")


def _statuses(endpoints: list[WorkerEndpoint], savepoint_id: str) -> list[dict[str, Any]]:
    statuses = []
    for endpoint in endpoints:
        payload = endpoint.expect("GET", f"/savepoints?id={savepoint_id}", None, 200)
        status = payload.get("savepoint") or {}
        if status.get("phase") in ("failed", "cancelled"):
            raise SavepointError(f"worker {payload.get('worker')} ({endpoint.url}): savepoint {status.get('phase')}: "
                                 f"{status.get('error')}")
        statuses.append(status)
    return statuses


def _wait_drained(endpoints: list[WorkerEndpoint], savepoint_id: str, deadline: float) -> None:
    previous: list[str] | None = None
    while True:
        statuses = _statuses(endpoints, savepoint_id)
        progress = [s.get("progress", "") for s in statuses]
        if all(s.get("idle") for s in statuses):
            if progress == previous:
                return
            previous = progress
        else:
            previous = None
        if time.monotonic() > deadline:
            busy = [e.url for e, s in zip(endpoints, statuses) if not s.get("idle")]
            raise SavepointError(f"the workers did not drain in time (still busy: {', '.join(busy) or 'none'})")
        time.sleep(POLL_S)


def _wait_written(endpoints: list[WorkerEndpoint], savepoint_id: str, deadline: float) -> list[dict[str, Any]]:
    while True:
        statuses = _statuses(endpoints, savepoint_id)
        if all(s.get("phase") == "written" for s in statuses):
            return [s["part"] for s in statuses]
        if time.monotonic() > deadline:
            raise SavepointError("the workers did not finish writing the savepoint in time")
        time.sleep(POLL_S)


def _wait_stopped(endpoints: list[WorkerEndpoint], deadline: float) -> None:
    running = list(endpoints)
    while running and time.monotonic() < deadline:
        still = []
        for endpoint in running:
            try:
                endpoint.call("GET", "/savepoints")
                still.append(endpoint)
            except SavepointError:
                pass
        running = still
        if running:
            time.sleep(POLL_S)
    for endpoint in running:
        log.warning("worker %s still answers after stop-with-savepoint", endpoint.url)


def assemble(savepoint_id: str, mode: str, parts: list[dict[str, Any]]) -> SavepointManifest:
    """The manifest from every worker's part, complete only when every partition of
    every stage is covered exactly once."""
    first = parts[0]
    stages = tuple(StageLayout(**{**s, "stateful_uids": tuple(s["stateful_uids"])}) for s in first["stages"])
    for part in parts[1:]:
        other = tuple(StageLayout(**{**s, "stateful_uids": tuple(s["stateful_uids"])}) for s in part["stages"])
        if other != stages:
            raise SavepointError(f"workers {first['worker']} and {part['worker']} see different stage layouts "
                                 "(topics or partition counts); take the savepoint again")
    positions: dict[tuple[str, int], PartitionPosition] = {}
    for part in parts:
        for raw in part["positions"]:
            position = PartitionPosition(**raw)
            key = (position.topic, position.partition)
            if key in positions:
                raise SavepointError(f"topic {key[0]!r} partition {key[1]} is claimed by workers "
                                     f"{positions[key].worker} and {position.worker}; take the savepoint again")
            positions[key] = position
    missing = [f"{s.topic}[{p}]" for s in stages for p in range(s.partitions) if (s.topic, p) not in positions]
    if missing:
        raise SavepointError(
            f"the savepoint would not cover partitions {', '.join(missing)}: name every worker of group "
            f"{first['group']!r} with --job (workers asked: {', '.join(p['worker'] for p in parts)})")
    states: dict[tuple[str, str], OperatorState] = {}
    for part in parts:
        for raw in part["states"]:
            state = OperatorState(**{**raw, "files": tuple(StateFile(**f) for f in raw["files"])})
            key = (state.uid, state.name)
            known = states.get(key)
            if known is None:
                states[key] = state
                continue
            if (known.kind, known.codec, known.stage) != (state.kind, state.codec, state.stage):
                raise SavepointError(f"workers disagree on state {state.column_family!r} (kind, codec or stage)")
            states[key] = OperatorState(known.uid, known.name, known.kind, known.codec, known.stage,
                                        tuple(sorted(known.files + state.files, key=lambda f: f.partition)))
    return SavepointManifest(
        id=savepoint_id, job=first["job"], group=first["group"], kind=mode, created_at=time.time(),
        params=dict(first.get("params", {})), stages=stages,
        positions=tuple(sorted(positions.values(), key=lambda p: (p.topic, p.partition))),
        states=tuple(states[k] for k in sorted(states)), workers=tuple(sorted(p["worker"] for p in parts)),
        drained=True)  # written only once every worker was drained


def _publish(endpoint: WorkerEndpoint, location: str, manifest: SavepointManifest, s3: S3Settings | None) -> None:
    """A worker writes the manifest, in the storage it wrote the state files to; a worker
    of a version without that endpoint leaves it to this client, as before."""
    status, payload = endpoint.call("POST", MANIFEST_PATH, {"id": manifest.id,
                                                            "manifest": orjson.loads(manifest.to_bytes())})
    if status == 404 and "no such page" in str(payload.get("text", "")):
        write_manifest(location, manifest, s3)
        return
    if status != 200:
        raise SavepointError(f"worker {endpoint.url} could not write the manifest of savepoint {manifest.id}: "
                             f"{payload.get('error') or payload}")
