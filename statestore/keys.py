"""Stable byte encoding of state keys.

The same key must map to the same bytes in every process and every version, because
the bytes are both the RocksDB key and the repartition record's Kafka key (hence its
partition). JSON is stable, typed enough (str vs int), readable in any Kafka tool and
portable to other languages; raw bytes keys get a 0x00 tag, which no JSON text starts with.
"""

from __future__ import annotations

from typing import Any

import orjson

_BYTES_TAG = b"\x00"


class KeyEncodingError(ValueError):
    """A key cannot be encoded stably (e.g. an arbitrary object or a float NaN)."""


def encode_key(key: Any) -> bytes:
    if isinstance(key, str):
        return orjson.dumps(key)
    if isinstance(key, (bytes, bytearray, memoryview)):
        return _BYTES_TAG + bytes(key)
    try:
        return orjson.dumps(key, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise KeyEncodingError(
            f"state key {key!r} of type {type(key).__name__} has no stable encoding; "
            "use str, int, bool, None, bytes or tuples/lists of those") from exc


def decode_key(data: bytes) -> Any:
    if data[:1] == _BYTES_TAG:
        return data[1:]
    value = orjson.loads(data)
    return _freeze(value) if isinstance(value, list) else value


def _freeze(value: Any) -> Any:
    """JSON arrays come back as tuples so decoded keys stay hashable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def composite_key(key_bytes: bytes, sub_key_bytes: bytes) -> bytes:
    """Prefix-free concatenation for MapState entries: all entries of one key share the
    prefix returned by `composite_prefix`, and no other key's entries do."""
    return len(key_bytes).to_bytes(4, "big") + key_bytes + sub_key_bytes


def composite_prefix(key_bytes: bytes) -> bytes:
    return len(key_bytes).to_bytes(4, "big") + key_bytes


def split_composite(data: bytes) -> tuple[bytes, bytes]:
    size = int.from_bytes(data[:4], "big")
    return data[4 : 4 + size], data[4 + size :]
