"""Savepoint state files: JSON lines, one per key (value state) or per map entry.

    {"k": <key>, "v": <value>}                      value state, JSON codec
    {"k": <key>, "m": <map key>, "v": <value>}       map state, JSON codec
    {"kb": "<base64>", ...}                          a raw-bytes key (instead of "k")
    {"mb": "<base64>", ...}                          a raw-bytes map key (instead of "m")
    {..., "vb": "<base64>"}                          a value of any other codec (pickle...)

A value with a time to live (codec `json+ttl`) is the pair [written at, value].

Keys are stored in RocksDB in the stable key encoding (JSON text, or 0x00 + raw bytes,
see keys.py) and JSON-coded values as JSON text, so for the common case a line is
assembled from the stored bytes without decoding anything. Reading re-encodes each key
into the same stable bytes (orjson's output is canonical), so a key's RocksDB key and
its partition hash are the same before and after a savepoint.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from eos.errors import CorruptSavepointError, SavepointError
from statestore.codecs import CODECS, JSON_TEXT_CODECS, ValueCodec
from statestore.keys import composite_key, encode_key, split_composite
from statestore.savepoint_manifest import MAP_STATE, VALUE_STATE, StateFile
from statestore.ttl import TTL_SUFFIX

_BYTES_TAG = b"\x00"
_CHUNK_LINES = 20_000
_READ_CHUNK = 1 << 20
_b64 = base64.b64encode
_unb64 = base64.b64decode


@dataclass(frozen=True)
class WrittenFile:
    keys: int
    size: int
    sha256: str


def _key_field(name: bytes, raw: bytes) -> bytes:
    if raw[:1] == _BYTES_TAG:
        return b'"' + name + b'b":"' + _b64(raw[1:]) + b'"'
    return b'"' + name + b'":' + raw


def _value_field(raw: bytes, json_values: bool) -> bytes:
    return b'"v":' + raw if json_values else b'"vb":"' + _b64(raw) + b'"'


def state_lines(items: Iterable[tuple[bytes, bytes]], kind: str, codec: str) -> Iterator[bytes]:
    """Lines for RocksDB entries (stable key bytes, encoded value) of one state."""
    json_values = codec in JSON_TEXT_CODECS
    if kind == VALUE_STATE and json_values:
        for key, value in items:  # the hot case: no decoding, no base64
            if key[:1] == _BYTES_TAG:
                yield b'{"kb":"' + _b64(key[1:]) + b'","v":' + value + b"}\n"
            else:
                yield b'{"k":' + key + b',"v":' + value + b"}\n"
    elif kind == VALUE_STATE:
        for key, value in items:
            yield b"{" + _key_field(b"k", key) + b"," + _value_field(value, False) + b"}\n"
    elif kind == MAP_STATE:
        for raw_key, value in items:
            key, map_key = split_composite(raw_key)
            yield (b"{" + _key_field(b"k", key) + b"," + _key_field(b"m", map_key) + b","
                   + _value_field(value, json_values) + b"}\n")
    else:
        raise SavepointError(f"unknown state kind {kind!r}")


def write_state_file(items: Iterable[tuple[bytes, bytes]], kind: str, codec: str, target: Path) -> WrittenFile:
    """Writes one state file locally (fsynced), hashing as it goes."""
    digest = hashlib.sha256()
    keys = size = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        lines: list[bytes] = []
        for line in state_lines(items, kind, codec):
            lines.append(line)
            if len(lines) >= _CHUNK_LINES:
                keys, size = keys + len(lines), size + _flush(lines, out, digest)
        keys, size = keys + len(lines), size + _flush(lines, out, digest)
        out.flush()
        os.fsync(out.fileno())
    return WrittenFile(keys, size, digest.hexdigest())


def _flush(lines: list[bytes], out: Any, digest: Any) -> int:
    data = b"".join(lines)
    lines.clear()
    digest.update(data)
    out.write(data)
    return len(data)


def file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def check_file(path: Path, expected: StateFile, where: str) -> None:
    """Size and SHA-256 against the manifest; a mismatch names the file."""
    try:
        size, sha = file_digest(path)
    except FileNotFoundError:
        raise CorruptSavepointError(f"savepoint file {where} is missing; the savepoint is damaged") from None
    if size != expected.size:
        raise CorruptSavepointError(
            f"savepoint file {where} is corrupt: {size} bytes, the manifest records {expected.size}")
    if sha != expected.sha256:
        raise CorruptSavepointError(
            f"savepoint file {where} is corrupt: its SHA-256 is {sha}, the manifest records {expected.sha256}")


Entry = tuple[bytes, bytes | None, dict]


def read_lines(path: Path, expected: StateFile, where: str) -> Iterator[bytes]:
    """The file's lines (without their newline). The file is checked against the
    manifest while it is read; a mismatch is raised after the last line, so callers
    apply what they read only once the iteration completes."""
    digest = hashlib.sha256()
    size = keys = 0
    with open(path, "rb") as fh:
        rest = b""
        while chunk := fh.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            keys += len(lines)
            yield from lines
        if rest:
            raise CorruptSavepointError(f"savepoint file {where} ends in the middle of a line; it is truncated")
    if size != expected.size or digest.hexdigest() != expected.sha256 or keys != expected.keys:
        raise CorruptSavepointError(
            f"savepoint file {where} is corrupt: {size} bytes, {keys} entries, SHA-256 {digest.hexdigest()}; "
            f"the manifest records {expected.size} bytes, {expected.keys} entries, SHA-256 {expected.sha256}")


def parse_line(line: bytes, kind: str, where: str) -> Entry:
    """(stable key bytes, stable map-key bytes or None, the parsed line)."""
    try:
        obj = orjson.loads(line)
        return _key_bytes(obj, "k"), (_key_bytes(obj, "m") if kind == MAP_STATE else None), obj
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptSavepointError(f"savepoint file {where} holds a line that is not a state entry ({exc}): "
                                    f"{line[:80]!r}") from None


def read_state_file(path: Path, expected: StateFile, where: str, kind: str) -> Iterator[Entry]:
    """Every entry of one state file, checked as `read_lines` checks."""
    for line in read_lines(path, expected, where):
        yield parse_line(line, kind, where)


class LineWriter:
    """Appends lines to a local file, counting and hashing them (for split files)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._out = open(path, "wb")
        self._digest = hashlib.sha256()
        self._lines: list[bytes] = []
        self.keys = self.size = 0

    def add(self, line: bytes) -> None:
        self._lines.append(line)
        self._lines.append(b"\n")
        if len(self._lines) >= 2 * _CHUNK_LINES:
            self._flush()

    def _flush(self) -> None:
        self.keys += len(self._lines) // 2
        self.size += _flush(self._lines, self._out, self._digest)

    def close(self, partition: int) -> StateFile:
        self._flush()
        self._out.close()
        return StateFile(self.path.name, partition, self.keys, self.size, self._digest.hexdigest())


def _key_bytes(obj: dict, name: str) -> bytes:
    if name in obj:
        return encode_key(obj[name])
    return _BYTES_TAG + _unb64(obj[name + "b"], validate=True)


def rocksdb_key(key: bytes, map_key: bytes | None) -> bytes:
    return key if map_key is None else composite_key(key, map_key)


def value_encoder(saved_codec: str, target: ValueCodec | None, what: str) -> Callable[[dict], bytes]:
    """Turns a parsed line's value into the bytes the resumed job's codec expects.
    `target` None keeps the savepoint's codec (state not declared by the job's code)."""
    target_name = target.name if target is not None else saved_codec
    if saved_codec.endswith(TTL_SUFFIX) != target_name.endswith(TTL_SUFFIX):
        raise SavepointError(
            f"{what} was saved {'with' if saved_codec.endswith(TTL_SUFFIX) else 'without'} a time to live and the "
            f"job now declares it {'without' if saved_codec.endswith(TTL_SUFFIX) else 'with'} one; eos cannot "
            "convert its values. Keep its ttl_ms, or give the state (or its operator's uid) a new name.")
    if saved_codec == "json+ttl" and target_name == "json+ttl":
        return lambda obj: orjson.dumps(obj["v"], option=orjson.OPT_NON_STR_KEYS)
    if saved_codec == "json":
        if target_name == "json":
            return lambda obj: orjson.dumps(obj["v"], option=orjson.OPT_NON_STR_KEYS)
        if target is None:
            raise SavepointError(f"{what}: no codec to encode its values with")
        if target_name == "pickle":
            return lambda obj: pickle.dumps(obj["v"], protocol=5)
        return lambda obj: target.encode(obj["v"])
    if target_name == saved_codec:
        return lambda obj: _unb64(obj["vb"])
    source = CODECS.get(saved_codec)
    if source is None or target is None:
        raise SavepointError(
            f"{what} was saved with the {saved_codec!r} codec and the job now uses {target_name!r}; "
            "eos cannot convert between them. Keep the codec of this state, or give it a new name.")
    return lambda obj: target.encode(source.decode(_unb64(obj["vb"])))
