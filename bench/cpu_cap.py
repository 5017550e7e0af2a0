"""A fixed CPU share per benchmark process, through the kernel's cgroup cpu controller.

Why: on a small machine the broker, the output reader and the workers compete for the
same cores, so adding a worker measures how much CPU was idle rather than how the design
scales. A process capped at a quota (say 0.2 core) gets at most that much whatever else
runs, and as long as the machine has the quota to spare, about that much: N capped
workers should then do N times the work of one.

Both cgroup versions are supported, found in /proc/mounts: v2 (`cpu.max`) on a cgroup2
mount whose `cgroup.controllers` lists cpu, else v1 (`cpu.cfs_quota_us`) on a mount of
the cpu controller. Neither writable is an error (CpuCapUnavailable), never a silent
run without caps. A process enters its cgroup before its first instruction: `wrap()`
starts it through `sh`, which writes its own pid into the cgroup and then `exec`s the
command (children follow their parent). `subprocess`'s `preexec_fn` could do the same but
is unsafe in a process that runs threads, as the benchmark's output watcher does.
"""

from __future__ import annotations

import errno
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PERIOD_US = 100_000
PROBE_PREFIX = "eos-bench-probe-"


class CpuCapError(RuntimeError):
    """A cgroup could not be set up or removed; the message names the directory."""


class CpuCapUnavailable(CpuCapError):
    """No cgroup cpu controller on this machine that this process may write to."""


@dataclass(frozen=True)
class CgroupRoot:
    """The top of a hierarchy with the cpu controller, where the caps' directories go."""

    path: Path
    version: int  # 1 or 2

    def limit(self, cores: float) -> dict[str, str]:
        """The files to write (in order) to cap a cgroup at `cores` cores."""
        quota = max(1000, round(cores * PERIOD_US))  # the kernel refuses quotas under 1 ms
        if self.version == 2:
            return {"cpu.max": f"{quota} {PERIOD_US}"}
        return {"cpu.cfs_period_us": str(PERIOD_US), "cpu.cfs_quota_us": str(quota)}


@dataclass(frozen=True)
class Throttling:
    """From the cgroup's cpu.stat: how often the quota ran out (it bound the process)."""

    periods: int  # enforcement periods in which the cgroup ran
    throttled_periods: int  # ... that ended with the quota used up
    throttled_s: float  # time its threads waited for the next period

    @property
    def throttled_fraction(self) -> float | None:
        return self.throttled_periods / self.periods if self.periods else None


@dataclass(frozen=True)
class CpuCap:
    """One cgroup capped at `cores` cores."""

    root: CgroupRoot
    path: Path
    cores: float

    @classmethod
    def create(cls, root: CgroupRoot, name: str, cores: float) -> CpuCap:
        path = root.path / name
        try:
            path.mkdir()
        except OSError as exc:
            raise CpuCapError(f"cannot make the cgroup {path}: {exc}") from exc
        try:
            for file, value in root.limit(cores).items():
                (path / file).write_text(value)
        except OSError as exc:
            _remove_dir(path)
            raise CpuCapError(f"cannot set a cap of {cores} cores in {path}: {exc}") from exc
        return cls(root, path, cores)

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` started inside this cgroup: `sh` moves itself in, then becomes the command."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def throttling(self) -> Throttling:
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        # v1 counts the waiting in nanoseconds, v2 in microseconds
        waited = int(stat["throttled_usec"]) / 1e6 if "throttled_usec" in stat else int(stat["throttled_time"]) / 1e9
        return Throttling(int(stat["nr_periods"]), int(stat["nr_throttled"]), waited)

    def remove(self, wait_s: float = 5.0) -> bool:
        """Remove the cgroup once its processes are gone; any still there after `wait_s`
        move to the root first. False if the directory could not be removed."""
        procs = self.path / "cgroup.procs"
        deadline = time.monotonic() + wait_s
        while _pids(procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in _pids(procs):
            _move(pid, self.root.path / "cgroup.procs")
        return _remove_dir(self.path, deadline=time.monotonic() + wait_s)


def find_root(mounts: str | None = None) -> CgroupRoot:
    """The first hierarchy with the cpu controller where a capped cgroup can be made, v2
    before v1; raises CpuCapUnavailable saying what was tried."""
    tried: list[str] = []
    for root in _candidates(mounts if mounts is not None else Path("/proc/mounts").read_text(), tried):
        reason = _probe(root)
        if reason is None:
            return root
        tried.append(f"{root.path} (cgroup v{root.version}): {reason}")
    raise CpuCapUnavailable(
        "cannot cap the workers' CPU: no cgroup cpu controller this process may write to "
        f"({'; '.join(tried) or 'no cgroup mounts in /proc/mounts'}). Run as root on a machine with "
        "cgroup v1's cpu controller mounted, or cgroup v2 with cpu in cgroup.controllers.")


@contextmanager
def cpu_caps(root: CgroupRoot, names: list[str], cores: float) -> Iterator[dict[str, CpuCap]]:
    """A cgroup per name, each capped at `cores`; all removed on leaving, errors included."""
    prefix = f"eos-bench-{uuid.uuid4().hex[:8]}-"
    caps: dict[str, CpuCap] = {}
    try:
        for name in names:
            caps[name] = CpuCap.create(root, prefix + name, cores)
        yield caps
    finally:
        left = [str(cap.path) for cap in caps.values() if not cap.remove()]
        if left:
            raise CpuCapError(f"could not remove the cgroups {left}: processes still in them?")


def _candidates(mounts: str, tried: list[str]) -> Iterator[CgroupRoot]:
    v1 = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        path, fstype, options = Path(fields[1]), fields[2], fields[3].split(",")
        if fstype == "cgroup2":
            controllers = _read(path / "cgroup.controllers").split()
            if "cpu" in controllers:
                yield CgroupRoot(path, 2)
            else:
                tried.append(f"{path} (cgroup v2): no cpu in cgroup.controllers ({' '.join(controllers) or 'empty'})")
        elif fstype == "cgroup" and "cpu" in options:
            v1.append(CgroupRoot(path, 1))
    yield from v1


def _probe(root: CgroupRoot) -> str | None:
    """Why no cap can be made under `root`, or None when one can."""
    if root.version == 2:
        reason = _enable_cpu_for_children(root.path)
        if reason:
            return reason
    try:
        cap = CpuCap.create(root, f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}", 0.5)
    except CpuCapError as exc:
        return str(exc)
    return None if cap.remove() else f"cannot remove {cap.path}"


def _enable_cpu_for_children(path: Path) -> str | None:
    """cgroup v2 gives a child cpu.max only when its parent enables cpu for its subtree."""
    control = path / "cgroup.subtree_control"
    if "cpu" in _read(control).split():
        return None
    try:
        control.write_text("+cpu")
    except OSError as exc:
        return f"cannot enable cpu in {control}: {exc}"
    return None


def _pids(procs: Path) -> list[int]:
    return [int(pid) for pid in _read(procs).split()]


def _move(pid: int, procs: Path) -> None:
    try:
        procs.write_text(str(pid))
    except ProcessLookupError:
        pass  # ended meanwhile


def _remove_dir(path: Path, deadline: float = 0.0) -> bool:
    """rmdir, retried while the kernel still counts a process that is ending (EBUSY)."""
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
        time.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
