"""The whole job as one view: its workers, found through the job's consumer group, and
what each of them publishes about itself.

Workers advertise their HTTP addresses in their consumer client ids
(connectors/group.py), so describing the group gives every live worker, its
assignment and where to reach it; each worker's `/status.json` then gives its tasks,
lag and checkpoints. Any worker serves the result (`/job`, `/job.json`) and the `eos`
client builds the same (`eos job status`). An explicit list of worker URLs replaces the
group's when given (a worker whose advertised addresses the caller cannot reach).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from connectors.group import GroupView, Member
from service.web.http_client import PeerUnreachable, call_json

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


@dataclasses.dataclass
class Peer:
    """One worker of the job: who the group says it is, and where it answered."""

    worker: str
    url: str | None = None
    advertised: tuple[str, ...] = ()
    host: str = ""
    status: dict[str, Any] | None = None
    error: str | None = None


def resolve(member: Member, group: str, path: str = "/status.json", token: str | None = None,
            timeout_s: float = PROBE_TIMEOUT_S) -> Peer:
    """Tries the member's advertised addresses in order; the first that answers as this
    worker of this group is its address (another address may reach another worker, e.g.
    `localhost:8081` from inside a container)."""
    peer = Peer(member.worker, advertised=member.advertised, host=member.host.lstrip("/"))
    if not member.advertised:
        peer.error = "advertises no HTTP address (started without --http-port, or by an older version)"
        return peer
    problems = []
    for url in member.advertised:
        try:
            code, body = call_json(url + path, token=token, timeout_s=timeout_s)
        except PeerUnreachable as exc:
            problems.append(str(exc))
            continue
        if code == 200 and body.get("worker") == member.worker and body.get("group") == group:
            peer.url, peer.status = url, body
            return peer
        if code == 403:
            problems.append(f"{url}{path}: refused control: {body.get('text') or body.get('error')} (give the "
                            "worker's control token: --control-token-file or EOS_CONTROL_TOKEN)")
        else:
            problems.append(f"{url}{path}: answered {code} as worker {body.get('worker')!r} of "
                            f"{body.get('group')!r}")
    peer.error = "; ".join(problems)
    return peer


def fetch(url: str, path: str = "/status.json", token: str | None = None,
          timeout_s: float = PROBE_TIMEOUT_S) -> Peer:
    """A worker named by URL (the explicit list): it says who it is."""
    url = url.rstrip("/")
    try:
        code, body = call_json(url + path, token=token, timeout_s=timeout_s)
    except PeerUnreachable as exc:
        return Peer("?", url=None, advertised=(url,), error=str(exc))
    if code != 200:
        return Peer(str(body.get("worker", "?")), advertised=(url,), error=f"{url}{path} answered {code}")
    return Peer(str(body.get("worker")), url=url, advertised=(url,), status=body)


class JobView:
    """Finds the job's workers and gathers their status."""

    def __init__(self, group: str, client_config: dict[str, Any], *, own_worker: str | None = None,
                 own_status: Callable[[], Any] | None = None, timeout_s: float = 10.0) -> None:
        self.group = group
        self._client_config = client_config
        self._timeout_s = timeout_s
        self._group_view: GroupView | None = None
        self._own_worker = own_worker
        self._own_status = own_status

    def members(self) -> list[Member]:
        if self._group_view is None:
            self._group_view = GroupView(self.group, self._client_config, timeout_s=self._timeout_s)
        members = self._group_view.members()
        if members is None:
            raise PeerUnreachable(f"cannot describe consumer group {self.group!r} (is Kafka reachable?)")
        return sorted(members, key=lambda m: m.worker)

    def peers(self, urls: list[str] | None = None) -> list[Peer]:
        """Every worker with its status: the group's members, or the workers at `urls`."""
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="eos-job-view") as pool:
            if urls:
                return list(pool.map(fetch, urls))
            return list(pool.map(self._peer, self.members()))

    def _peer(self, member: Member) -> Peer:
        if member.worker == self._own_worker and self._own_status is not None:
            return Peer(member.worker, url=None, advertised=member.advertised, host=member.host.lstrip("/"),
                        status=dataclasses.asdict(self._own_status()))
        return resolve(member, self.group)

    def snapshot(self, urls: list[str] | None = None) -> dict[str, Any]:
        return job_snapshot(self.group, self.peers(urls))


def job_snapshot(group: str, peers: list[Peer]) -> dict[str, Any]:
    """`/job.json`: every worker with its figures and last checkpoint, and every task of
    the job with the worker that runs it, its position, lag and last checkpoint."""
    workers, tasks = [], []
    for peer in sorted(peers, key=lambda p: p.worker):
        status = peer.status or {}
        last = next((c for c in status.get("checkpoints", ()) if c.get("result") == "committed"), None)
        lags = [t["lag"] for t in status.get("tasks", ()) if t.get("lag") is not None]
        workers.append({
            "worker": peer.worker, "url": peer.url, "advertised": list(peer.advertised), "host": peer.host,
            "reachable": peer.status is not None, "error": peer.error,
            "state": status.get("state"), "ready": status.get("ready"),
            "tasks": len(status.get("tasks", ())), "last_checkpoint_id": status.get("last_checkpoint_id"),
            "last_checkpoint": last, "records_in": status.get("records_in"),
            "records_out": status.get("records_out"), "restarts": status.get("restarts"),
            "lag": sum(lags) if lags else None, "last_error": status.get("last_error"),
        })
        for task in status.get("tasks", ()):
            tasks.append({**task, "worker": peer.worker})
    tasks.sort(key=lambda t: (t["stage"], t["topic"], t["partition"]))
    reachable = [w for w in workers if w["reachable"]]
    lags = [w["lag"] for w in reachable if w["lag"] is not None]
    job_name = next((p.status.get("job") for p in peers if p.status), group)
    return {
        "job": job_name, "group": group, "gathered_at": time.time(), "workers": workers, "tasks": tasks,
        "totals": {"workers": len(workers), "reachable": len(reachable), "tasks": len(tasks),
                   "records_in": sum(w["records_in"] or 0 for w in reachable),
                   "records_out": sum(w["records_out"] or 0 for w in reachable),
                   "lag": sum(lags) if lags else None,
                   "last_checkpoint_id": max((w["last_checkpoint_id"] or 0 for w in reachable), default=0)},
    }


@dataclasses.dataclass(frozen=True)
class JobSummary:
    job: str  # the group
    state: str  # running | stopped
    workers: tuple[str, ...]
    partitions: int  # input partitions: assigned or with committed offsets


def list_jobs(client_config: dict[str, Any], timeout_s: float = 15.0) -> list[JobSummary]:
    """The cluster's eos jobs: groups whose members are eos workers (running), and
    groups without members whose committed offsets carry checkpoint metadata (stopped).
    A running job's partitions are those the group assigns and those with committed
    offsets: the group does not assign the partitions that travel with the source's
    (service/runtime/colocation.py)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    from connectors.group import member_identity

    admin = AdminClient(client_config)
    listed = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout_s)
    ids = sorted(g.group_id for g in listed.valid)
    if not ids:
        return []

    def committed(group: str) -> set[tuple[str, int]]:
        offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                    request_timeout=timeout_s)[group].result(timeout_s)
        return {(tp.topic, tp.partition) for tp in offsets.topic_partitions or ()
                if (tp.metadata or "").startswith("eos1:")}

    jobs = []
    described = admin.describe_consumer_groups(ids, request_timeout=timeout_s)
    for group in ids:
        description = described[group].result(timeout_s)
        workers, assigned = [], set()
        for member in description.members:
            identity = member_identity(group, member.group_instance_id, member.client_id)
            if identity is not None and identity[1] is not None:
                workers.append(identity[0])
                assigned.update((tp.topic, tp.partition) for tp in
                                (member.assignment.topic_partitions if member.assignment else ()))
        if workers:
            jobs.append(JobSummary(group, "running", tuple(sorted(workers)), len(assigned | committed(group))))
            continue
        if description.members:
            continue  # some other application's consumers
        ours = committed(group)
        if ours:
            jobs.append(JobSummary(group, "stopped", (), len(ours)))
    return jobs
