"""The interface every checkpoint storage back-end implements.

Checkpoint storage is a flat namespace of immutable objects addressed by relative,
'/'-separated keys (like S3). Two guarantees matter to exactly-once and every back-end
must give them:

- `put_atomic` makes an object appear whole or not at all (temp + rename on a file
  system, a single PUT on S3). Manifests are written with it, last, so a snapshot
  without its manifest simply does not exist.
- After `put_file`/`put_bytes`/`put_atomic` return, the object is durable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: float  # seconds since the epoch


class StorageError(OSError):
    """Checkpoint storage could not be read or written (unreachable, permission, I/O)."""


class ObjectNotFound(StorageError):
    """The object named by a key does not exist in checkpoint storage."""


@runtime_checkable
class CheckpointStorage(Protocol):
    """A durable object store holding snapshot files and manifests."""

    url: str

    def put_file(self, key: str, source: Path) -> None:
        """Uploads a local file to `key` (overwriting)."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Writes `data` to `key` (overwriting)."""

    def put_atomic(self, key: str, data: bytes) -> None:
        """Writes `data` so that readers see either the whole object or none."""

    def get_bytes(self, key: str) -> bytes:
        """Reads a whole object. Raises ObjectNotFound when absent."""

    def get_file(self, key: str, target: Path) -> None:
        """Downloads `key` into the local path `target`. Raises ObjectNotFound when absent."""

    def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (recursive), sorted."""

    def list_entries(self, prefix: str) -> list[StoredObject]:
        """Like `list`, with sizes and modification times (for retention's grace period)."""

    def size(self, key: str) -> int:
        """Size in bytes of the object at `key`. Raises ObjectNotFound when absent."""

    def delete(self, keys: list[str]) -> None:
        """Deletes objects; absent keys are ignored."""

    def list_unfinished(self, prefix: str) -> list[StoredObject]:
        """Writes under `prefix` that began and never finished (a process died while
        writing): a file system's temporary files, an object store's incomplete multipart
        uploads. `list` never shows them; `discard_unfinished` removes them."""

    def discard_unfinished(self, prefix: str) -> int:
        """Removes what `list_unfinished` shows; returns how many."""

    def describe(self, key: str) -> str:
        """A human-readable location of `key` (a path or URL) for error messages."""
