"""Checkpoint storage on a (shared) file system: `file:///path`.

Durability is explicit: files are fsynced and so is their directory, because a rename
that the kernel has not yet written out could vanish with a power loss and leave a
committed offset pointing at nothing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from statestore.storage.base import ObjectNotFound, StorageError, StoredObject

DIR_MODE = 0o700
FILE_MODE = 0o600


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStorage:
    """Objects are files under a root directory; keys are relative paths."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"
        self._root = str(self.root)
        # Directories this process made or found, so that a write does not ask again.
        # Every file system call hands the interpreter lock back, and getting it back
        # while the processing loop runs costs up to a switch interval (5 ms): a
        # checkpoint's uploads are paid in such calls, not in bytes.
        self._directories: set[Path] = set()
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        except OSError as exc:
            raise StorageError(f"cannot create checkpoint storage directory {self.root}: {exc}") from exc

    def _path(self, key: str) -> Path:
        """The key's file, found lexically (no file system calls): keys are made by this
        product, and one that climbs out of the root (`..`, an absolute path) is refused."""
        path = os.path.normpath(os.path.join(self._root, key))
        if path != self._root and not path.startswith(self._root + os.sep):
            raise StorageError(f"key {key!r} escapes checkpoint storage {self.root}")
        return Path(path)

    def describe(self, key: str) -> str:
        return str(self._path(key))

    def _prepare(self, key: str) -> tuple[Path, Path]:
        path = self._path(key)
        self._make_directory(path.parent)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        return path, tmp

    def _make_directory(self, directory: Path) -> None:
        if directory not in self._directories:
            directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            self._directories.add(directory)

    def _commit(self, tmp: Path, path: Path) -> None:
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def put_file(self, key: str, source: Path) -> None:
        def copy(dst: BinaryIO) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)

        self._write(key, copy)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_atomic(key, data)

    def put_atomic(self, key: str, data: bytes) -> None:
        self._write(key, lambda dst: dst.write(data))

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        """Readers see the whole object or none of it: written to a private temporary
        file, synced, renamed over the key and the directory synced."""
        path, tmp = self._prepare(key)
        try:
            try:
                dst = open(tmp, "wb", opener=_private_opener)
            except FileNotFoundError:  # its directory was removed (empty) since it was made
                self._directories.discard(path.parent)
                self._make_directory(path.parent)
                dst = open(tmp, "wb", opener=_private_opener)
            with dst:
                fill(dst)
                dst.flush()
                os.fsync(dst.fileno())
            self._commit(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {path}: {exc}") from exc

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"{path} does not exist") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc

    def get_file(self, key: str, target: Path) -> None:
        path = self._path(key)
        try:
            shutil.copyfile(path, target)
        except FileNotFoundError:
            raise ObjectNotFound(f"{path} does not exist") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"{self._path(key)} does not exist") from None

    def list(self, prefix: str) -> list[str]:
        return [entry.key for entry in self.list_entries(prefix)]

    def list_entries(self, prefix: str) -> list[StoredObject]:
        return self._walk(prefix, unfinished=False)

    def list_unfinished(self, prefix: str) -> list[StoredObject]:
        return self._walk(prefix, unfinished=True)

    def discard_unfinished(self, prefix: str) -> int:
        unfinished = self.list_unfinished(prefix)
        self.delete([entry.key for entry in unfinished])
        return len(unfinished)

    def _walk(self, prefix: str, unfinished: bool) -> list[StoredObject]:
        """Objects under `prefix`, or the temporary files of writes that never finished."""
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        entries = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if _is_temporary(name) != unfinished:
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                entries.append(StoredObject(str(path.relative_to(self.root)), st.st_size, st.st_mtime))
        return sorted(entries, key=lambda e: e.key)

    def delete(self, keys: list[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while parent != self.root:
                try:
                    parent.rmdir()
                except OSError:
                    break
                self._directories.discard(parent)
                parent = parent.parent


def _is_temporary(name: str) -> bool:
    """The name `_prepare` gives a file being written: `.{name}.{8 hex}.tmp`."""
    return name.startswith(".") and name.endswith(".tmp")


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, FILE_MODE)
