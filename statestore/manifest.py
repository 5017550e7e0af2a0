"""The manifest of one task snapshot: the only thing that makes a snapshot exist.

It is written last and atomically, after every file it lists is durable in checkpoint
storage. It names the source offset the state corresponds to, so recovery can check
that the committed Kafka offset and the restored state belong to the same checkpoint,
and it carries its own digest, so a damaged manifest is recognised rather than trusted.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"


class ManifestError(ValueError):
    """A manifest is unreadable, inconsistent or fails its own digest."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a RocksDB checkpoint as stored: `key` is relative to the task's
    storage prefix (shared SSTs live under `shared/`, the rest in the snapshot's dir)."""

    name: str
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    job: str
    task: str
    topic: str
    partition: int
    checkpoint_id: int
    snapshot: str
    worker: str
    created_at: float
    source_offset: int
    column_families: tuple[str, ...]
    files: tuple[FileEntry, ...]
    uploaded_bytes: int
    state_keys: dict[str, int] = field(default_factory=dict)
    # Snapshots of earlier completed checkpoints of this task, newest first: retention
    # keeps them, and recovery can fall back to them when asked.
    lineage: tuple[str, ...] = ()
    format: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body["digest"] = _digest(body)
        return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ManifestError(f"manifest {where} is not valid JSON ({exc}); it is damaged") from None
        if not isinstance(body, dict):
            raise ManifestError(f"manifest {where} is not a JSON object; it is damaged")
        if body.get("format") != FORMAT_VERSION:
            raise ManifestError(
                f"manifest {where} has format {body.get('format')!r}; this version reads {FORMAT_VERSION}")
        recorded = body.pop("digest", None)
        if recorded != _digest(body):
            raise ManifestError(f"manifest {where} fails its digest check; it is damaged")
        try:
            files = tuple(FileEntry(**f) for f in body.pop("files"))
            body["column_families"] = tuple(body["column_families"])
            body["lineage"] = tuple(body.get("lineage", ()))
            return cls(files=files, **body)
        except (TypeError, KeyError) as exc:
            raise ManifestError(f"manifest {where} lacks or misnames a field ({exc})") from None


def _digest(body: dict[str, Any]) -> str:
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
