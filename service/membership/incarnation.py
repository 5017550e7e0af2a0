"""This process's life in its worker slot, as recorded beside the slot's state.

`{state-dir}/{group}/worker-{id}.json` says whether the slot's previous process stopped
cleanly: one killed (SIGKILL, OOM, a node failure) or stopped by an error leaves it
saying not, and the next process counts a restart, so `eos_restarts_total` keeps its
meaning across the restarts it counts.

`worker-{id}.lock` is held (flock) for the life of the process. A new process that gets
it knows every earlier process of the slot in this state directory has ended, so the
group member its record names is a dead predecessor whose session has yet to expire,
not a live duplicate: it need not wait for that member to leave.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


class Incarnation:
    def __init__(self, state_dir: Path, group: str, worker_id: str, stamp: str) -> None:
        self.path = Path(state_dir) / group / f"worker-{worker_id}.json"
        self.lock_path = self.path.with_suffix(".lock")
        self.stamp = stamp
        self.restarts = 0
        self._dead_predecessor: str | None = None
        self._lock_fd: int | None = None
        # The previous process of this slot here stopped because a newer one held it.
        self.predecessor_replaced = False

    def begin(self) -> int:
        """Records this process as running; returns the slot's restart count so far
        (including one for a predecessor that did not stop cleanly)."""
        previous = self._read()
        if self._take_lock():
            self._dead_predecessor = previous.get("stamp")
        self.predecessor_replaced = bool(previous.get("replaced_by"))
        self.restarts = int(previous.get("restarts", 0))
        if previous and not previous.get("clean_exit", False):
            self.restarts += 1
            if previous.get("pid") == os.getpid():  # an in-process restart (--restart-strategy)
                log.warning("the previous run in this process failed; restart %d of this slot", self.restarts)
            else:
                log.warning("the previous process of this worker slot (pid %s) did not stop cleanly; "
                            "restart %d of this slot", previous.get("pid"), self.restarts)
        self._write(clean_exit=False)
        return self.restarts

    def known_dead(self, stamp: str | None) -> bool:
        """Whether `stamp` is a process of this slot that this machine knows has ended."""
        return stamp is not None and stamp == self._dead_predecessor

    def end(self, clean: bool, replaced_by: str | None = None) -> None:
        """Records how this process stopped: cleanly, or not; and, when a newer process
        of the slot held it, which one."""
        if self._read().get("stamp") == self.stamp:  # else a newer process owns the record now
            self._write(clean_exit=clean, replaced_by=replaced_by)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _take_lock(self) -> bool:
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot open %s: %s", self.lock_path, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: another process of this slot lives (or is frozen) here
            return False
        self._lock_fd = fd
        return True

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}

    def _write(self, *, clean_exit: bool, replaced_by: str | None = None) -> None:
        body = {"pid": os.getpid(), "stamp": self.stamp, "restarts": self.restarts, "clean_exit": clean_exit,
                "replaced_by": replaced_by, "updated_at": time.time()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot record the worker's state in %s: %s", self.path, exc)
