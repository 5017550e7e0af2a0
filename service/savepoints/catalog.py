"""Savepoints in a directory: which are usable, and disposing of one.

A savepoint is usable only with its manifest; a directory of state files without one is
a savepoint that was never finished (its client or a worker died while writing it) and
is listed as incomplete, never as something to resume from. So is a directory that holds
nothing but writes a killed worker left unfinished (temporary files, incomplete
multipart uploads): `dispose` removes those too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from eos.errors import EosError, SavepointError
from service.savepoints.control import savepoint_location
from service.savepoints.resume import open_savepoint
from statestore.savepoint_manifest import MANIFEST_NAME, STATE_DIR, SavepointManifest
from statestore.storage import FileStorage, S3Settings, open_storage
from statestore.storage.base import StorageError

log = logging.getLogger(__name__)

USABLE = "usable"
INCOMPLETE = "incomplete"
DAMAGED = "damaged"


@dataclass(frozen=True)
class SavepointEntry:
    name: str
    location: str
    status: str  # usable | incomplete | damaged
    manifest: SavepointManifest | None = None
    problem: str | None = None
    size: int = 0


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def list_savepoints(directory: str, s3: S3Settings | None = None) -> list[SavepointEntry]:
    if _is_local(directory) and not Path(directory.removeprefix("file://")).is_dir():
        raise SavepointError(f"savepoint directory {directory} does not exist")
    try:
        storage = open_storage(directory, s3)
        objects = storage.list_entries("")
        unfinished_writes = storage.list_unfinished("")
    except StorageError as exc:
        raise SavepointError(f"cannot list savepoints in {directory}: {exc}") from exc
    sizes: dict[str, int] = {}
    has_manifest: set[str] = set()
    unfinished: dict[str, int] = {}
    for obj in objects:
        name, sep, rest = obj.key.partition("/")
        if not sep:
            continue
        sizes[name] = sizes.get(name, 0) + obj.size
        if rest == MANIFEST_NAME:
            has_manifest.add(name)
    for obj in unfinished_writes:
        name, sep, _ = obj.key.partition("/")
        if sep:
            unfinished[name] = unfinished.get(name, 0) + 1
            sizes[name] = sizes.get(name, 0) + obj.size
    entries = []
    for name in sorted(sizes):
        location = savepoint_location(directory, name)
        if name not in has_manifest:
            problem = "no manifest: never finished"
            if unfinished.get(name):
                problem += f" ({unfinished[name]} unfinished writes left by a process that died while writing)"
            entries.append(SavepointEntry(name, location, INCOMPLETE, problem=problem, size=sizes[name]))
            continue
        try:
            manifest, _ = open_savepoint(location, s3)
            entries.append(SavepointEntry(name, location, USABLE, manifest, size=sizes[name]))
        except EosError as exc:
            entries.append(SavepointEntry(name, location, DAMAGED, problem=str(exc), size=sizes[name]))
    return entries


def dispose(location: str, s3: S3Settings | None = None) -> int:
    """Deletes a savepoint (complete or not); returns how many files went. The manifest
    goes first, so a half-disposed savepoint is never taken for a usable one."""
    if _is_local(location) and not Path(location.removeprefix("file://")).is_dir():
        raise SavepointError(f"savepoint {location} does not exist")
    try:
        storage = open_storage(location, s3)
        keys = storage.list("")
        unfinished = [entry.key for entry in storage.list_unfinished("")]
        if not any(_savepoint_key(k) for k in keys + unfinished):
            raise SavepointError(f"{location} does not look like a savepoint (no {MANIFEST_NAME}, no {STATE_DIR}/); "
                                 "nothing deleted")
        if MANIFEST_NAME in keys:
            storage.delete([MANIFEST_NAME])
        storage.delete([k for k in keys if k != MANIFEST_NAME])
        discarded = storage.discard_unfinished("")
    except StorageError as exc:
        raise SavepointError(f"cannot dispose of savepoint {location}: {exc}") from exc
    if isinstance(storage, FileStorage):
        try:
            storage.root.rmdir()
        except OSError as exc:
            log.warning("savepoint directory %s is not empty after disposal: %s", storage.root, exc)
    return len(keys) + discarded


def _savepoint_key(key: str) -> bool:
    return key == MANIFEST_NAME or key.startswith(STATE_DIR + "/")
