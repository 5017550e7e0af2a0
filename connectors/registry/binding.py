"""A schema-registry serde bound to its topic and field, and what its failures mean.

Confluent's serializers are called with a `SerializationContext` (topic and field) that
their subject name strategy reads. Binding makes that context once per topic and field,
so the bound serde is again plain one-argument callables: the fast path calls
Confluent's serializer directly, and the careful path, asked only when the fast one
raised, calls it again and says what went wrong.

A failure is the record's when its bytes are not registry-framed, name a schema the
registry does not have, or do not decode with it (and, when writing, when the value does
not fit the schema): a `SerdeError`, which the error policy handles with the record's
topic, partition and offset. It is the job's when the registry refuses its schema (not
compatible with the subject, invalid) or its credentials: a `ConfigurationError`. It is
nobody's when the registry cannot be reached or fails: `SchemaRegistryUnavailableError`
stops the worker, and a restart strategy tries again, since every record would fail
alike.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectors.serdes import KEY_FIELD, Field, Serde, SerdeError
from eos.errors import ConfigurationError, EosError, SchemaRegistryUnavailableError

# Status codes of Confluent's API: 404 with 40403 is an unknown schema id, 40401 an
# unknown subject; 409 an incompatible schema; 422 an invalid one.
_NOT_FOUND = 404
_REFUSED = (401, 403)
_SCHEMA_REFUSED = (409, 422)


@dataclass(frozen=True)
class Codec:
    """One format's Confluent serializer and deserializer for one topic and field, and
    how values cross between them and the job (protobuf messages become dicts)."""

    serializer: Callable[[Any, Any], bytes | None] | None
    deserializer: Callable[[bytes | None, Any], Any]
    to_job: Callable[[Any], Any] | None = None
    from_job: Callable[[Any], Any] | None = None


def registry_serde(name: str, make: Callable[[str, Field], Codec], needs_schema: str) -> Serde:
    """An unbound serde of format `name`: the planner binds it (`Serde.bound`) with
    `make(topic, field)`. `needs_schema` says what writing needs, for the error when a
    serde that cannot write is used by a sink."""

    def bind(topic: str, field: Field, writes: bool) -> Serde:
        codec = make(topic, field)
        if writes and codec.serializer is None:
            raise ConfigurationError(f"the {name} serde of topic {topic!r} ({field}) writes records but was given "
                                     f"no schema: {needs_schema}")
        fast_deserialize, deserialize = _reading(name, topic, field, codec)
        fast_serialize, serialize = _writing(name, topic, field, codec)
        return Serde(name, serialize, deserialize, fast_serialize, fast_deserialize, binder=bind)

    def unbound(_: Any) -> Any:
        raise ConfigurationError(f"the {name} serde was used without a topic: serdes of a schema registry are "
                                 "bound to their topic when the job is planned")

    return Serde(name, unbound, unbound, binder=bind)


def _context(topic: str, field: Field) -> Any:
    from confluent_kafka.serialization import MessageField, SerializationContext

    return SerializationContext(topic, MessageField.KEY if field == KEY_FIELD else MessageField.VALUE)


def _reading(name: str, topic: str, field: Field, codec: Codec) -> tuple[Callable, Callable]:
    ctx, deserializer, to_job = _context(topic, field), codec.deserializer, codec.to_job

    if to_job is None:
        def fast(data: bytes | None) -> Any:
            return deserializer(data, ctx)
    else:
        def fast(data: bytes | None) -> Any:
            value = deserializer(data, ctx)
            return None if value is None else to_job(value)

    def careful(data: bytes | None) -> Any:
        try:
            return fast(data)
        except Exception as exc:  # noqa: BLE001 - sorted into the record's, the job's or nobody's fault
            raise _failure(exc, name, topic, field, reading=True) from exc

    return fast, careful


def _writing(name: str, topic: str, field: Field, codec: Codec) -> tuple[Callable, Callable]:
    ctx, serializer, from_job = _context(topic, field), codec.serializer, codec.from_job
    if serializer is None:
        def cannot(_: Any) -> bytes | None:
            raise ConfigurationError(f"the {name} serde of topic {topic!r} ({field}) has no schema to write with")

        return cannot, cannot
    if from_job is None:
        def fast(value: Any) -> bytes | None:
            return serializer(value, ctx)
    else:
        def fast(value: Any) -> bytes | None:
            return None if value is None else serializer(from_job(value), ctx)

    def careful(value: Any) -> bytes | None:
        try:
            return fast(value)
        except Exception as exc:  # noqa: BLE001 - sorted into the record's, the job's or nobody's fault
            raise _failure(exc, name, topic, field, reading=False) from exc

    return fast, careful


def _failure(exc: Exception, name: str, topic: str, field: Field, reading: bool) -> Exception:
    """What a failure of Confluent's serializer means (see the module's docstring)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    where = f"the {name} serde of topic {topic!r} ({field})"
    if isinstance(exc, EosError):
        return exc
    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        if status in _REFUSED:
            return ConfigurationError(f"{where}: the schema registry refused the credentials: {exc}")
        if reading and status == _NOT_FOUND:
            return SerdeError(f"the record names a schema the registry does not have: {exc}")
        if not reading and (status in _SCHEMA_REFUSED or status == _NOT_FOUND):
            return ConfigurationError(f"{where}: the schema registry refused the job's schema: {exc}")
        return SchemaRegistryUnavailableError(f"{where}: the schema registry failed: {exc}")
    if isinstance(exc, _transport_errors()):
        return SchemaRegistryUnavailableError(f"{where}: the schema registry is out of reach: "
                                              f"{type(exc).__name__}: {exc}")
    if reading:
        return SerdeError(f"not a schema-registry {name} record ({type(exc).__name__}: {exc})")
    return SerdeError(f"cannot serialise the value as {name}: {type(exc).__name__}: {exc}")


@functools.cache
def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's errors for requests that got no answer (confluent-kafka uses
    httpx, published as httpx2 for newer Pythons)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)
