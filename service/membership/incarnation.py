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
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


class Incarnations:
    def __init__(self, state_dir: Path, group: str, worker_id: str) -> None:
        self.path = Path(state_dir) / group / f"worker-{worker_id}.json"
        self.restarts = 0
        self.token = uuid.uuid4().hex  # this run of the slot, as recorded in the file
        self._recorded = False  # whether the file holds this run at all

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
        self._recorded = self._write(clean_exit=False)
        return self.restarts

    def end(self, clean: bool) -> None:
        if self.superseded():
            return  # a newer process of the slot owns the record now
        self._write(clean_exit=clean)

    def superseded(self) -> bool:
        """True when a newer process of this slot has begun in the same state directory:
        this one was frozen or cut off and replaced, and must not act for the slot."""
        if not self._recorded:
            return False  # the record could not be written: it cannot tell
        token = self._read().get("token")
        return token is not None and token != self.token

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}

    def _write(self, *, clean_exit: bool) -> bool:
        body = {"pid": os.getpid(), "token": self.token, "restarts": self.restarts, "clean_exit": clean_exit,
                "updated_at": time.time()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.path)
            return True
        except OSError as exc:
            log.warning("cannot record the worker's state in %s: %s", self.path, exc)
            return False
