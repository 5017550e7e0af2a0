"""Remembers, per worker slot, whether its previous process stopped cleanly.

A process killed (SIGKILL, OOM, a node failure) or stopped by an error leaves its
marker saying "not stopped cleanly"; the next process of the same slot counts that as
a restart. The count lives next to the slot's task state, so it survives the restart
that it counts and `eos_restarts_total` keeps its meaning across processes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


class Incarnations:
    def __init__(self, state_dir: Path, group: str, worker_id: str) -> None:
        self.path = Path(state_dir) / group / f"worker-{worker_id}.json"
        self.restarts = 0

    def begin(self) -> int:
        """Records this process as running; returns the slot's restart count so far
        (including one for a predecessor that did not stop cleanly)."""
        previous = self._read()
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

    def end(self, clean: bool) -> None:
        self._write(clean_exit=clean)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}

    def _write(self, *, clean_exit: bool) -> None:
        body = {"pid": os.getpid(), "restarts": self.restarts, "clean_exit": clean_exit, "updated_at": time.time()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot record the worker's state in %s: %s", self.path, exc)
