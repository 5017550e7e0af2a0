"""The job's consumer group as every member can see it.

Each worker's consumer carries its identity in its client id,
`{group}-{worker}#{stamp}@{url},{url}`: the worker id (its slot), the stamp of this
process incarnation (a start time in milliseconds with a random suffix) and the
addresses its HTTP port is advertised at. Any member that describes the group sees
every member's slot and incarnation, on whichever machine it runs, so a process can tell
whether another process of its slot is alive in the group (which of them is newer is
the slot register's answer, service/membership/register.py: the group keeps a static
entry's first client id); and any client that describes the group finds the job's live
workers and where to reach them, with no registry of its own that could hold departed
workers' addresses.
"""

from __future__ import annotations

import logging
import secrets
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

STAMP_SEPARATOR = "#"
ADDRESS_SEPARATOR = "@"


def new_stamp(now_s: float | None = None) -> str:
    """This incarnation's stamp: later starts sort after earlier ones, as text."""
    millis = int((time.time() if now_s is None else now_s) * 1000)
    return f"{millis:013d}-{secrets.token_hex(3)}"


def client_id(group: str, worker: str, stamp: str, advertised: tuple[str, ...] | list[str] = ()) -> str:
    urls = ",".join(u.rstrip("/") for u in advertised)
    return f"{group}-{worker}{STAMP_SEPARATOR}{stamp}" + (f"{ADDRESS_SEPARATOR}{urls}" if urls else "")


def advertised_urls(member_client_id: str | None) -> tuple[str, ...]:
    """The HTTP addresses a worker advertises in its client id, in its order of preference."""
    _, separator, stamped = (member_client_id or "").rpartition(STAMP_SEPARATOR)
    if not separator:
        return ()
    _, at, urls = stamped.partition(ADDRESS_SEPARATOR)
    return tuple(u for u in urls.split(",") if u) if at else ()


@dataclass(frozen=True)
class Member:
    worker: str
    stamp: str | None  # None: a member that carries no stamp (started by an older version)
    member_id: str
    client_id: str
    host: str
    advertised: tuple[str, ...] = ()
    # (topic, partition) of every partition the group assigned this member
    assignment: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        started = ""
        if self.stamp:
            millis = self.stamp.split("-", 1)[0]
            if millis.isdigit():
                started = time.strftime(", started %Y-%m-%d %H:%M:%S UTC", time.gmtime(int(millis) / 1000))
        return f"member {self.member_id} (client {self.client_id} on {self.host.lstrip('/')}{started})"


def member_identity(group: str, group_instance_id: str | None, member_client_id: str | None) -> tuple[str, str | None] | None:
    """(worker id, stamp) of a group member, read back from its client id (a static
    member's instance id is its worker id); None for a member that is not a worker."""
    text = member_client_id or ""
    name, separator, stamp = text.rpartition(STAMP_SEPARATOR)
    if not separator:
        name, stamp = text, ""
    stamp = stamp.partition(ADDRESS_SEPARATOR)[0]
    prefix = f"{group}-"
    worker = name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else None
    if group_instance_id:
        worker = group_instance_id
    if worker is None:
        return None
    return worker, stamp or None


class GroupView:
    """The group's current members, through an admin client of its own."""

    def __init__(self, group: str, admin_config: dict[str, Any], timeout_s: float) -> None:
        self.group = group
        self.timeout_s = timeout_s
        self._admin_config = admin_config
        self._admin = AdminClient(admin_config)

    def members(self) -> list[Member] | None:
        """The workers in the group, or None when the group could not be described.
        Members that are not workers of this job are left out."""
        try:
            future = self._admin.describe_consumer_groups([self.group], request_timeout=self.timeout_s)[self.group]
            description = future.result(timeout=self.timeout_s)
        except (KafkaException, FutureTimeout) as exc:
            log.warning("cannot list the members of group %s: %s", self.group,
                        exc or f"no answer within {self.timeout_s:.0f}s")
            # An admin client that asked while the cluster was away can stay without
            # answers after it is back (librdkafka 2.x): the next look uses a new one.
            self._admin = AdminClient(self._admin_config)
            return None
        members = []
        for member in description.members:
            identity = member_identity(self.group, member.group_instance_id, member.client_id)
            if identity is not None:
                assignment = getattr(member, "assignment", None)
                partitions = tuple((tp.topic, tp.partition) for tp in (assignment.topic_partitions if assignment else ()))
                members.append(Member(identity[0], identity[1], member.member_id, member.client_id or "",
                                      member.host or "?", advertised_urls(member.client_id), partitions))
        return members

    def workers(self) -> set[str] | None:
        """Worker ids of the group's members, or None when the group could not be described."""
        members = self.members()
        return None if members is None else {m.worker for m in members}

    def lists(self, worker: str) -> bool | None:
        workers = self.workers()
        return None if workers is None else worker in workers
