"""The manifest of a savepoint: what makes a savepoint directory usable.

A savepoint is a directory (on a file system or under an S3 prefix) of canonical state
files and one manifest, `_savepoint.json`, written last and atomically once every file
it lists is durable. A directory without the manifest is a savepoint that was never
finished and is never offered for resuming. The manifest names the job, its group and
parameters, the stage layout (each stage's topic, partition count and key serde), the
position of every input partition, and per operator state the files with their
partition, key count, size and SHA-256; it carries a digest of itself.

The format is ours and documented (docs/architecture.md, "Savepoint format"); it does
not depend on RocksDB's files, so later versions of eos and changed jobs can read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from eos.errors import CorruptSavepointError, SavepointError
from statestore.sealed_json import check_seal, parse_object, seal

FORMAT = "eos-savepoint"
VERSION = 1
MANIFEST_NAME = "_savepoint.json"
STATE_DIR = "state"

VALUE_STATE = "value"
MAP_STATE = "map"


@dataclass(frozen=True)
class StageLayout:
    """One stage as it was when the savepoint was taken. `key_serde` is how a state
    key of this stage becomes the Kafka key bytes its partition is hashed from."""

    id: str
    topic: str
    partitions: int
    repartition: bool
    key_serde: str
    stateful_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartitionPosition:
    """Where one input partition stood: `offset` is the next record to read (None: the
    partition was never read, so it starts from the beginning), `end_offset` the last
    stable offset when the savepoint was written (equal to `offset` when drained);
    `watermark` its task's event-time watermark (None: the stage is not on event time)."""

    stage: str
    topic: str
    partition: int
    offset: int | None
    checkpoint_id: int
    end_offset: int | None
    worker: str
    watermark: int | None = None


@dataclass(frozen=True)
class StateFile:
    path: str  # relative to the savepoint directory
    partition: int  # the partition of the stage's topic the state came from
    keys: int
    size: int
    sha256: str


@dataclass(frozen=True)
class OperatorState:
    """One named state of one operator (`{uid}:{name}` in RocksDB), split by partition."""

    uid: str
    name: str
    kind: str  # value | map
    codec: str  # json | pickle | another codec's name (values kept as raw bytes)
    stage: str
    files: tuple[StateFile, ...] = ()

    @property
    def column_family(self) -> str:
        return f"{self.uid}:{self.name}"

    @property
    def keys(self) -> int:
        return sum(f.keys for f in self.files)


@dataclass(frozen=True)
class SavepointManifest:
    id: str
    job: str
    group: str
    kind: str  # stop | trigger
    created_at: float
    params: dict[str, str]
    stages: tuple[StageLayout, ...]
    positions: tuple[PartitionPosition, ...]
    states: tuple[OperatorState, ...]
    workers: tuple[str, ...]
    # Nothing was in flight in repartition topics: every repartition partition was read
    # to its end and committed before the state was written.
    drained: bool
    format: str = FORMAT
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def stage(self, stage_id: str) -> StageLayout | None:
        return next((s for s in self.stages if s.id == stage_id), None)

    def position(self, topic: str, partition: int) -> PartitionPosition | None:
        return next((p for p in self.positions if p.topic == topic and p.partition == partition), None)

    def files(self) -> list[StateFile]:
        return [f for state in self.states for f in state.files]

    @property
    def total_keys(self) -> int:
        return sum(s.keys for s in self.states)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files())

    def to_bytes(self) -> bytes:
        return seal(asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> SavepointManifest:
        body = parse_object(data, f"savepoint manifest {where}", CorruptSavepointError)
        if body.get("format") != FORMAT:
            raise SavepointError(f"{where} is not an eos savepoint manifest (no format {FORMAT!r} field)")
        if body.get("version") != VERSION:
            raise SavepointError(
                f"savepoint {where} has format version {body.get('version')!r}; this version of eos reads "
                f"version {VERSION}. Resume it with the eos version that wrote it, or take a new savepoint.")
        check_seal(body, f"savepoint manifest {where}", CorruptSavepointError)
        try:
            return cls(
                id=body["id"], job=body["job"], group=body["group"], kind=body["kind"],
                created_at=body["created_at"], params=dict(body["params"]),
                stages=tuple(StageLayout(**{**s, "stateful_uids": tuple(s["stateful_uids"])})
                             for s in body["stages"]),
                positions=tuple(PartitionPosition(**p) for p in body["positions"]),
                states=tuple(OperatorState(**{**s, "files": tuple(StateFile(**f) for f in s["files"])})
                             for s in body["states"]),
                workers=tuple(body["workers"]), drained=body["drained"], format=body["format"],
                version=body["version"], extra=dict(body.get("extra", {})))
        except (TypeError, KeyError) as exc:
            raise CorruptSavepointError(f"savepoint manifest {where} lacks or misnames a field ({exc})") from None


def state_file_path(uid: str, name: str, partition: int) -> str:
    """Where one partition's share of one state lives inside the savepoint directory.
    Uids and state names are percent-encoded, so any name makes a safe path."""
    return f"{STATE_DIR}/{quote(uid, safe='')}/{quote(name, safe='')}/part-{partition:05d}.jsonl"
