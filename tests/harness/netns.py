"""Hosts of their own on this one machine: network namespaces joined to the test's by
veth pairs, so what crosses between a worker and the broker, or checkpoint storage, is
real traffic that the test can cut, thin out and heal.

    test's namespace (broker, S3 server, oracle)          worker's namespace (eos run)
    10.77.255.1 on lo  <-- routed -->  10.77.N.1 ==veth== 10.77.N.2   default via 10.77.N.1

Servers listen on SERVICE_IP, a root-namespace address every host routes to. Faults are
applied inside a host's namespace, to traffic towards one service port:

- partition: iptables DROP, both ways (the peer's packets vanish, as on a cut link);
- loss: iptables drops a random share of packets (`statistic` match);
- squeeze: a token-bucket filter on the host's link (bandwidth, and the queueing delay
  it causes). This kernel has no `netem`, so fixed delays and jitter are out of reach.

Needs root and `ip`/`iptables`; `require()` skips a test with the reason otherwise.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

SERVICE_IP = "10.77.255.1"
# Hosts are named for the test process that made them, so a later run can tell hosts
# left behind by a process that died (their veth and subnet would shadow a new host's).
HOST_PREFIX = "eos-h"
_SUBNET_LOCK = "/run/lock/eos-test-hosts.lock"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


def require() -> None:
    """Skips the calling test, saying why, where namespaces cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"network namespaces need the {tool!r} command (Debian: iproute2, iptables)")
    probe = f"eos-probe-{uuid.uuid4().hex[:6]}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    _run("ip", "netns", "del", probe, check=False)


def ensure_service_ip() -> None:
    """SERVICE_IP on the test's loopback device, where every host's default route leads."""
    shown = _run("ip", "-4", "addr", "show", "dev", "lo").stdout
    if f"{SERVICE_IP}/32" not in shown:
        _run("ip", "addr", "add", f"{SERVICE_IP}/32", "dev", "lo")


@contextmanager
def _subnet_lock() -> Iterator[None]:
    """Serialises choosing a subnet and claiming it, across test processes."""
    os.makedirs(os.path.dirname(_SUBNET_LOCK), exist_ok=True)
    with open(_SUBNET_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _subnets_in_use() -> set[int]:
    shown = _run("ip", "-4", "-o", "addr", "show").stdout
    return {int(n) for n in re.findall(r"inet 10\.77\.(\d+)\.", shown)}


def remove_stale_hosts() -> None:
    """Deletes hosts whose test process is gone: a run killed before its teardown leaves
    a namespace and a veth holding a subnet that a new host would then share."""
    for line in _run("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = re.fullmatch(rf"{HOST_PREFIX}(\d+)-\w+", name)
        if found and not os.path.exists(f"/proc/{found.group(1)}"):
            _run("ip", "netns", "del", name, check=False)
    for line in _run("ip", "-o", "link", "show").stdout.splitlines():
        found = re.search(r"^\d+: (veo(\d+)-\w+)@", line)
        if found and not os.path.exists(f"/proc/{found.group(2)}"):
            _run("ip", "link", "del", found.group(1), check=False)


@dataclass
class Host:
    """One network namespace with a veth link to the test's namespace, on a /24 that no
    other interface holds (10.77.N.0/24, N chosen when it is created)."""

    index: int = 0
    name: str = ""
    faults: list[list[str]] = field(default_factory=list)

    def create(self) -> Host:
        tag = uuid.uuid4().hex[:4]
        self.name = f"{HOST_PREFIX}{os.getpid()}-{tag}"
        self.outer = f"veo{os.getpid()}-{tag}"[:15]
        self.inner = f"vei{tag}"
        with _subnet_lock():
            used = _subnets_in_use()
            self.index = next(n for n in range(1, 255) if n not in used)
            self.outer_ip = f"10.77.{self.index}.1"
            self.ip = f"10.77.{self.index}.2"
            _run("ip", "netns", "add", self.name)
            _run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            _run("ip", "link", "set", self.inner, "netns", self.name)
            _run("ip", "addr", "add", f"{self.outer_ip}/24", "dev", self.outer)
        _run("ip", "link", "set", self.outer, "up")
        self.exec("ip", "addr", "add", f"{self.ip}/24", "dev", self.inner)
        self.exec("ip", "link", "set", self.inner, "up")
        self.exec("ip", "link", "set", "lo", "up")
        self.exec("ip", "route", "add", "default", "via", self.outer_ip)
        return self

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run("ip", "netns", "exec", self.name, *argv, check=check)

    def wrap(self) -> list[str]:
        """The command prefix that runs a process on this host."""
        return ["ip", "netns", "exec", self.name]

    # -- faults -----------------------------------------------------------------------

    def partition(self, port: int) -> None:
        """Every packet between this host and SERVICE_IP:`port` is dropped, both ways."""
        self._rule("OUTPUT", "-d", SERVICE_IP, "-p", "tcp", "--dport", str(port), "-j", "DROP")
        self._rule("INPUT", "-s", SERVICE_IP, "-p", "tcp", "--sport", str(port), "-j", "DROP")

    def lose(self, port: int, share: float) -> None:
        """A random `share` of the packets towards SERVICE_IP:`port` is dropped."""
        self._rule("OUTPUT", "-d", SERVICE_IP, "-p", "tcp", "--dport", str(port), "-m", "statistic",
                   "--mode", "random", "--probability", f"{share:.3f}", "-j", "DROP")

    def squeeze(self, rate: str = "256kbit") -> None:
        """This host's link is held to `rate`; what exceeds it queues (delay) or drops."""
        self.exec("tc", "qdisc", "replace", "dev", self.inner, "root", "tbf", "rate", rate, "burst", "16kbit",
                  "latency", "400ms")

    def heal(self) -> None:
        for rule in reversed(self.faults):
            self.exec("iptables", "-D", *rule, check=False)
        self.faults.clear()
        self.exec("tc", "qdisc", "del", "dev", self.inner, "root", check=False)

    def _rule(self, *rule: str) -> None:
        self.exec("iptables", "-A", *rule)
        self.faults.append(list(rule))

    def destroy(self) -> None:
        _run("ip", "link", "del", self.outer, check=False)  # takes its peer along, at once
        _run("ip", "netns", "del", self.name, check=False)
