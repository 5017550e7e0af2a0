"""How record keys and values become bytes on Kafka, and back.

A serde is plain callables so the hot path can bind them once and call them without
attribute lookups. Each direction has a fast callable (the C function itself, e.g.
`orjson.loads`) and a careful one: the hot path calls the fast one and only when it
raises asks the careful one, which either copes (a null key) or raises a `SerdeError`
that says why. The runtime adds the record's topic, partition and offset. A serde that
fails for a reason no record is at fault for (its schema registry is out of reach)
raises an `EosError` instead, which stops the worker.

Some serdes need to know where their bytes live: a schema registry's serializers name
a subject after the topic and the field (key or value). The planner binds every serde
to its topic and field once, when it plans the job (`Serde.bound`); serdes that do not
care return themselves, so binding costs them nothing, and the hot path calls bound
callables with one argument as before.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from statestore.keys import decode_key, encode_key


class SerdeError(ValueError):
    """Bytes could not be turned into a value (or a value into bytes) by a serde."""


Field = Literal["key", "value"]
KEY_FIELD: Field = "key"
VALUE_FIELD: Field = "value"


@dataclass(frozen=True)
class Serde:
    name: str
    serialize: Callable[[Any], bytes | None]
    deserialize: Callable[[bytes | None], Any]
    fast_serialize: Callable[[Any], bytes | None] | None = None
    fast_deserialize: Callable[[bytes | None], Any] | None = None
    # (topic, field, writes) -> this serde bound there; None: the serde is the same
    # wherever it is used. A bound serde keeps its binder, so binding it again binds the
    # original anew (a job planned twice).
    binder: Callable[[str, Field, bool], Serde] | None = None

    def __post_init__(self) -> None:
        if self.fast_serialize is None:
            object.__setattr__(self, "fast_serialize", self.serialize)
        if self.fast_deserialize is None:
            object.__setattr__(self, "fast_deserialize", self.deserialize)

    def bound(self, topic: str, field: Field, writes: bool = False) -> Serde:
        """This serde as used for `field` of `topic`'s records; `writes`: the job
        writes them, so the bound serde must be able to serialise (an error at plan
        time, not at the first record, if it cannot)."""
        return self if self.binder is None else self.binder(topic, field, writes)


def _json_loads(data: bytes | None) -> Any:
    if data is None:
        raise SerdeError("value is null (a tombstone) but the JSON serde needs a document")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerdeError(f"not valid JSON ({exc.msg} at byte {exc.pos})") from None


def _json_dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise SerdeError(f"cannot serialise {type(value).__name__} as JSON: {exc}") from None


def _utf8_decode(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerdeError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _utf8_encode(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode("utf-8")


def _bytes_identity(value: Any) -> Any:
    return value


def _bytes_serialize(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise SerdeError(f"the BYTES serde needs bytes, got {type(value).__name__}")


def _key_decode(data: bytes | None) -> Any:
    if data is None:
        raise SerdeError("repartition record has no key")
    try:
        return decode_key(data)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerdeError(f"not a key written by this job ({exc})") from None


def _pickle_loads(data: bytes | None) -> Any:
    if data is None:
        raise SerdeError("value is null but the internal pickle serde needs data")
    try:
        return pickle.loads(data)  # noqa: S301 - written by this job into its own topic
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is bad input
        raise SerdeError(f"not a value written by this job ({type(exc).__name__}: {exc})") from None


def _pickle_dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def _fixed_width(name: str, fmt: str, kind: type) -> Serde:
    """Kafka's big-endian number serdes (the Java client's Integer, Long and Double
    serializers), so jobs read and write what Java producers and consumers do. A null
    stays null: a tombstone, or a record without a key."""
    packer = struct.Struct(fmt)
    size = packer.size

    def serialize(value: Any) -> bytes | None:
        if value is None:
            return None
        try:
            return packer.pack(kind(value))
        except (struct.error, TypeError, ValueError, OverflowError) as exc:
            raise SerdeError(f"cannot serialise {value!r} as {name}: {exc}") from None

    def deserialize(data: bytes | None) -> Any:
        if data is None:
            return None
        if len(data) != size:
            raise SerdeError(f"{name} needs exactly {size} bytes, got {len(data)}")
        return packer.unpack(data)[0]

    return Serde(name, serialize, deserialize)


JSON = Serde("json", _json_dumps, _json_loads, orjson.dumps, orjson.loads)
STRING = Serde("string", _utf8_encode, _utf8_decode, str.encode, bytes.decode)
BYTES = Serde("bytes", _bytes_serialize, _bytes_identity)
# Internal: the stable key encoding used by repartition topics and state.
KEY = Serde("key", encode_key, _key_decode)
# Internal: values re-keyed by `key_by` after the value changed (any Python object).
PICKLE = Serde("pickle", _pickle_dumps, _pickle_loads)

INT32 = _fixed_width("int32", ">i", int)
INT64 = _fixed_width("int64", ">q", int)
FLOAT64 = _fixed_width("float64", ">d", float)

BY_NAME: dict[str, Serde] = {s.name: s for s in (JSON, STRING, BYTES, KEY, PICKLE, INT32, INT64, FLOAT64)}
