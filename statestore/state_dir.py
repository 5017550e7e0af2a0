"""The local on-disk layout of task state, and the locks that keep processes apart.

    {state_dir}/{job}/{task}/db-{token}/        working RocksDB of one incarnation
    {state_dir}/{job}/{task}/db-{token}.lock    flock held while that incarnation lives
    {state_dir}/{job}/{task}/chk-{id}-{token}/  local copies of snapshots (hard links)

Each process incarnation gets its own working directory, so a replacement never waits
for (or fights) a frozen predecessor holding the same task: it builds its own database
from the last checkpoint. Directories whose lock nobody holds belong to dead processes
and are removed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from eos.errors import StateStoreError

log = logging.getLogger(__name__)

DIR_MODE = 0o700


class TaskDirectory:
    """One task's local directory, as used by one process incarnation (`token`)."""

    def __init__(self, root: Path, job: str, task: str, token: str) -> None:
        self.path = Path(root) / job / task
        self.token = token
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        except OSError as exc:
            raise StateStoreError(f"cannot create state directory {self.path}: {exc.strerror}") from exc
        self._lock_fd: int | None = None

    @property
    def working_dir(self) -> Path:
        return self.path / f"db-{self.token}"

    def acquire(self) -> Path:
        """Locks and returns a fresh, empty working directory; clears dead incarnations'."""
        try:
            return self._acquire()
        except OSError as exc:
            raise StateStoreError(f"state directory {self.path} is not usable: {exc.strerror}") from exc

    def _acquire(self) -> Path:
        lock_path = self.path / f"db-{self.token}.lock"
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        self._remove_dead_incarnations()
        if self.working_dir.exists():
            shutil.rmtree(self.working_dir)
        self.working_dir.mkdir(mode=DIR_MODE)
        return self.working_dir

    def reset_working_dir(self) -> Path:
        """Empties the working directory for a rebuild (rewind after an abort)."""
        shutil.rmtree(self.working_dir, ignore_errors=True)
        try:
            self.working_dir.mkdir(mode=DIR_MODE)
        except OSError as exc:
            raise StateStoreError(f"state directory {self.path} is not usable: {exc.strerror}") from exc
        return self.working_dir

    def snapshot_dir(self, snapshot: str) -> Path:
        return self.path / snapshot

    def local_snapshots(self) -> list[Path]:
        return sorted(p for p in self.path.glob("chk-*") if p.is_dir())

    def prune_snapshots(self, keep: set[str]) -> None:
        """Deletes local snapshot copies except `keep` (by name), and never those of
        another live incarnation: a frozen predecessor that wakes up may be writing one
        (`chk-...-{token}.tmp`) at this very moment."""
        others_alive = self._live_tokens() - {self.token}
        for snap in self.local_snapshots():
            if snap.name not in keep and _token_of(snap.name) not in others_alive:
                shutil.rmtree(snap, ignore_errors=True)

    def _live_tokens(self) -> set[str]:
        """Tokens whose working-directory lock some process holds."""
        live = set()
        for lock_path in self.path.glob("db-*.lock"):
            token = lock_path.name[3:-5]
            if token == self.token:
                live.add(token)
                continue
            try:
                fd = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                live.add(token)
            finally:
                os.close(fd)
        return live

    def release(self, remove_working_dir: bool = True) -> None:
        if remove_working_dir:
            shutil.rmtree(self.working_dir, ignore_errors=True)
        if self._lock_fd is not None:
            (self.path / f"db-{self.token}.lock").unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _remove_dead_incarnations(self) -> None:
        for lock_path in self.path.glob("db-*.lock"):
            token = lock_path.name[3:-5]
            if token == self.token:
                continue
            fd = os.open(lock_path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live (possibly frozen) process still holds it
            finally:
                os.close(fd)
            shutil.rmtree(self.path / f"db-{token}", ignore_errors=True)
            lock_path.unlink(missing_ok=True)
        for db_dir in self.path.glob("db-*"):
            if db_dir.is_dir() and not (self.path / f"{db_dir.name}.lock").exists() \
                    and db_dir != self.working_dir:
                shutil.rmtree(db_dir, ignore_errors=True)


def _token_of(snapshot_dir_name: str) -> str:
    """`chk-{id}-{token}` or its in-progress `chk-{id}-{token}.tmp` -> token."""
    return snapshot_dir_name.removesuffix(".tmp").rsplit("-", 1)[-1]
