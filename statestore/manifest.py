"""The manifest of one task snapshot: the only thing that makes a snapshot exist.

It is written last and atomically, after every file it lists is durable in checkpoint
storage. It names the source offset the state corresponds to, so recovery can check
that the committed Kafka offset and the restored state belong to the same checkpoint,
and it carries its own digest, so a damaged manifest is recognised rather than trusted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from statestore.sealed_json import check_seal, parse_object, seal

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
    # Partitions of the task's input topic when the snapshot was taken (None: not
    # recorded). Keyed state belongs to one partition of a fixed count.
    topic_partitions: int | None = None
    # A task with several inputs: the offsets of its other input topics, topic -> offset.
    input_offsets: dict[str, int] = field(default_factory=dict)
    # With a changelog: the offset of the task's changelog partition from which later
    # checkpoints' changes continue this snapshot (None: written without a changelog).
    changelog_offset: int | None = None
    format: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_bytes(self) -> bytes:
        return seal(asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        body = parse_object(data, f"manifest {where}", ManifestError)
        if body.get("format") != FORMAT_VERSION:
            raise ManifestError(
                f"manifest {where} has format {body.get('format')!r}; this version reads {FORMAT_VERSION}")
        check_seal(body, f"manifest {where}", ManifestError)
        try:
            files = tuple(FileEntry(**f) for f in body.pop("files"))
            body["column_families"] = tuple(body["column_families"])
            body["lineage"] = tuple(body.get("lineage", ()))
            return cls(files=files, **body)
        except (TypeError, KeyError) as exc:
            raise ManifestError(f"manifest {where} lacks or misnames a field ({exc})") from None

