"""The worker's storage scrub: one task's latest snapshot checked against checkpoint
storage every interval, tasks in turn, on a thread of its own (statestore/scrub.py says
what a round checks and mends). Findings are logged at WARNING and counted.

The scrub only reads what the loop publishes by replacing whole objects (the task table,
a task's completed checkpoint), so it takes no lock on the record path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from service.monitoring.metrics import WorkerMetrics
from statestore.storage.base import StorageError

log = logging.getLogger(__name__)


class StorageScrubber:
    def __init__(self, tasks: Callable[[], list[Any]], interval_s: float, metrics: WorkerMetrics) -> None:
        self.tasks = tasks
        self.interval_s = interval_s
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._turn = 0

    def start(self) -> None:
        if self.interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="eos-storage-scrub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.scrub_next()
            except (StorageError, OSError) as exc:  # storage out of reach, or a task closed meanwhile
                log.info("storage scrub round skipped: %s", exc)

    def scrub_next(self) -> None:
        """One round for the next task that has a completed snapshot."""
        tasks = sorted((t for t in self._snapshot_of_tasks()
                        if t.state is not None and t.completed.manifest is not None), key=lambda t: t.id)
        if not tasks:
            return
        task = tasks[self._turn % len(tasks)]
        self._turn += 1
        manifest = task.completed.manifest
        directory = task.state.directory
        own = directory.snapshot_dir(manifest.snapshot)
        local_dirs = [own] + [d for d in reversed(directory.local_snapshots()) if d != own]
        result = task.state.scrub.round(manifest, local_dirs)
        m = self.metrics
        m.labels(m.scrub_checked).inc(result.checked)
        m.labels(m.scrub_damaged).inc(len(result.damaged))
        m.labels(m.scrub_mended).inc(len(result.mended))

    def _snapshot_of_tasks(self) -> list[Any]:
        for _ in range(5):
            try:
                return list(self.tasks())
            except RuntimeError:  # the loop changed the task table meanwhile
                continue
        return []
