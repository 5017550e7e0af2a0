"""How state values become bytes in RocksDB.

Values live as Python objects in the write-back cache and are encoded only when the
cache is flushed, so the codec's cost is paid once per dirty key per checkpoint, not
once per record. JSON is the default because savepoints must stay readable by later
versions of a job; pickle is there for values JSON cannot express.
"""

from __future__ import annotations

import pickle
from typing import Any, Protocol

import orjson


class ValueCodec(Protocol):
    name: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class JsonCodec:
    name = "json"

    def encode(self, value: Any) -> bytes:
        # orjson returns its working buffer, at least 4 KiB, with only the length
        # trimmed. A checkpoint's capture holds every changed value's encoding until it
        # is written, so each is copied to its own size (0.1 us).
        return bytes(memoryview(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)))

    def decode(self, data: bytes) -> Any:
        return orjson.loads(data)


class PickleCodec:
    name = "pickle"

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=5)

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301 - only our own snapshots are read


JSON_CODEC = JsonCodec()
PICKLE_CODEC = PickleCodec()
CODECS: dict[str, ValueCodec] = {c.name: c for c in (JSON_CODEC, PICKLE_CODEC)}
# Codecs whose bytes are JSON text (a savepoint embeds them as they are): JSON, and JSON
# values with their time to live (statestore/ttl.py).
JSON_TEXT_CODECS = ("json", "json+ttl")
