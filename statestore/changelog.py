"""The changelog record format: one checkpoint's state changes of one task, as bytes.

With a changelog (`--snapshot-interval`), a checkpoint that takes no snapshot writes
the task's changes since the last checkpoint into the changelog topic inside the
checkpoint's transaction, so the commit alone makes them durable. A checkpoint's
changes go out in parts of at most PART_BYTES; each part's key says which checkpoint
it belongs to, which part it is of how many, and the task's input offsets at that
checkpoint, so a replay knows when it has reached the committed checkpoint and can
check that the state it rebuilt belongs with the committed offsets.

Keys and values are RocksDB's own bytes (encoded keys, encoded values): a replay
writes them into the database without decoding anything.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# A part stays well under Kafka's default limit of 1 MB a record.
PART_BYTES = 512 * 1024

# (column family, [(key, value or None for a deletion)])
Changes = list[tuple[str, list[tuple[bytes, bytes | None]]]]

_LENGTHS = struct.Struct(">Ii")
_FAMILY = struct.Struct(">HI")
DELETED_LENGTH = -1


class ChangelogFormatError(ValueError):
    """A changelog record that this version cannot read."""


@dataclass(frozen=True)
class PartHeader:
    checkpoint_id: int
    part: int
    parts: int
    # The task's input offsets at the checkpoint: the lead's, then the others' (topic -> offset).
    offset: int | None
    others: tuple[tuple[str, int | None], ...] = ()

    def to_key(self) -> bytes:
        return json.dumps({"v": 1, "c": self.checkpoint_id, "i": self.part, "k": self.parts,
                           "o": self.offset, "x": [list(o) for o in self.others]},
                          separators=(",", ":")).encode()

    @classmethod
    def from_key(cls, key: bytes | None, where: str) -> PartHeader:
        try:
            body = json.loads(key or b"")
            if body.get("v") != 1:
                raise ChangelogFormatError(f"changelog record at {where} has format {body.get('v')!r}, not 1")
            return cls(int(body["c"]), int(body["i"]), int(body["k"]), body["o"],
                       tuple((str(t), o) for t, o in body["x"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ChangelogFormatError(f"changelog record at {where} has an unreadable key: {exc}") from None


def encode_parts(checkpoint_id: int, offset: int | None, others: tuple[tuple[str, int | None], ...],
                 changes: Changes) -> list[tuple[bytes, bytes]]:
    """(key, value) of each part of one checkpoint's changes; at least one part, so a
    replay finds every checkpoint it must reach even when nothing changed."""
    bodies: list[bytes] = []
    chunks: list[bytes] = []
    size = 0

    def cut() -> None:
        nonlocal chunks, size
        bodies.append(b"".join(chunks))
        chunks, size = [], 0

    pack_lengths, pack_family = _LENGTHS.pack, _FAMILY.pack
    for family, entries in changes:
        name = family.encode()
        start = 0
        while start < len(entries):
            section: list[bytes] = []
            end = start
            while end < len(entries) and (size < PART_BYTES or end == start):
                key, value = entries[end]
                if value is None:
                    section += (pack_lengths(len(key), DELETED_LENGTH), key)
                    size += 8 + len(key)
                else:
                    section += (pack_lengths(len(key), len(value)), key, value)
                    size += 8 + len(key) + len(value)
                end += 1
            chunks += (pack_family(len(name), end - start), name, *section)
            size += 6 + len(name)
            start = end
            if size >= PART_BYTES:
                cut()
    if chunks or not bodies:
        cut()
    return [(PartHeader(checkpoint_id, i, len(bodies), offset, others).to_key(), body)
            for i, body in enumerate(bodies)]


def decode_changes(value: bytes, where: str) -> Iterator[tuple[str, bytes, bytes | None]]:
    """Every (column family, key, value or None) of one part, in order."""
    view = memoryview(value)
    at, end = 0, len(view)
    unpack_lengths, unpack_family = _LENGTHS.unpack_from, _FAMILY.unpack_from
    try:
        while at < end:
            name_length, count = unpack_family(view, at)
            at += 6
            family = bytes(view[at:at + name_length]).decode()
            at += name_length
            for _ in range(count):
                key_length, value_length = unpack_lengths(view, at)
                at += 8
                key = bytes(view[at:at + key_length])
                at += key_length
                if value_length == DELETED_LENGTH:
                    yield family, key, None
                else:
                    yield family, key, bytes(view[at:at + value_length])
                    at += value_length
    except (struct.error, UnicodeDecodeError) as exc:
        raise ChangelogFormatError(f"changelog record at {where} is damaged: {exc}") from None
    if at != end:
        raise ChangelogFormatError(f"changelog record at {where} is damaged: {at - end} bytes past its end")
