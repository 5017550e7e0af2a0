"""A Confluent-compatible schema registry, and the serdes that use it.

Job files make one from their parameters, or the environment when a parameter is not
given, and ask it for serdes::

    registry = SchemaRegistry.from_params(params)
    job.source(params["input"], value=registry.avro(), ...)

Parameters `schema.registry.NAME=VALUE` are the settings of Confluent's
`SchemaRegistryClient` (`url`, `basic.auth.user.info`, `ssl.ca.location`, `timeout`,
...); `SCHEMA_REGISTRY_URL` and `SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO` stand in for the
first two. Credentials are references only (`@env:VAR`, `@file:PATH`): job parameters
show in `ps` and are recorded in savepoints. The client is made when the planner first
binds a serde, in the worker, so loading a job file touches no network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from connectors.registry import formats
from connectors.registry.binding import Codec, registry_serde
from connectors.serdes import Field, Serde
from eos import secrets
from eos.errors import ConfigurationError

PARAM_PREFIX = "schema.registry."
URL_ENV = "SCHEMA_REGISTRY_URL"
USER_INFO_ENV = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"
_SECRET_WORDS = ("user.info", "password", "secret", "token")
_NUMBERS = ("timeout", "max.retries", "retries.wait.ms", "retries.max.wait.ms", "cache.capacity",
            "cache.latest.ttl.sec")
INSTALL_HINT = "pip install 'eos[schema-registry]'"


class SchemaRegistry:
    """Where the serdes it makes find their schemas. `settings` are Confluent's
    `SchemaRegistryClient` settings; values may be `@env:VAR` or `@file:PATH`."""

    def __init__(self, url: str | None = None, *, basic_auth: str | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        merged = dict(settings or {})
        if url is not None:
            merged["url"] = url
        if basic_auth is not None:
            merged["basic.auth.user.info"] = basic_auth
        if not merged.get("url"):
            raise ConfigurationError(f"no schema registry URL: pass -p {PARAM_PREFIX}url=URL or set {URL_ENV}")
        self.settings = merged
        self._client: Any = None

    @classmethod
    def from_params(cls, params: Mapping[str, str] | None = None,
                    environ: Mapping[str, str] | None = None) -> SchemaRegistry:
        """Settings from the job's `-p schema.registry.NAME=VALUE`, falling back to the
        environment for the URL and the credentials."""
        environ = os.environ if environ is None else environ
        settings: dict[str, Any] = {}
        if environ.get(URL_ENV):
            settings["url"] = environ[URL_ENV]
        if environ.get(USER_INFO_ENV):
            settings["basic.auth.user.info"] = f"@env:{USER_INFO_ENV}"
        for name, value in (params or {}).items():
            if name.startswith(PARAM_PREFIX):
                setting = name[len(PARAM_PREFIX):]
                _refuse_literal_secret(setting, value)
                settings[setting] = value
        return cls(settings=settings)

    @property
    def url(self) -> str:
        return str(self.settings["url"])

    def client(self) -> Any:
        """Confluent's client, made on first use and shared by every serde of this registry."""
        if self._client is None:
            client_class = _import("confluent_kafka.schema_registry", "SchemaRegistryClient")
            config = {name: _typed(name, secrets.resolve(value, f"{PARAM_PREFIX}{name}") if isinstance(value, str)
                                   else value) for name, value in self.settings.items()}
            try:
                self._client = client_class(config)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(f"schema registry settings: {exc}") from None
        return self._client

    def avro(self, schema: str | dict | None = None, *, subject_name_strategy: str = "topic",
             auto_register: bool = True, use_latest_version: bool = False, normalize: bool = False) -> Serde:
        """Avro. `schema` (JSON text or a dict) is the writer's schema for sinks and the
        reader's schema for sources (records are resolved into it); without one, a
        source gives each record as its writer's schema has it."""
        options = formats.WriteOptions(subject_name_strategy, auto_register, use_latest_version, normalize)
        text = formats.schema_text(schema)
        return self._serde("avro", lambda topic, field: formats.avro(self.client(), text, options, topic, field),
                           "give avro(schema=...) the schema to write")

    def json_schema(self, schema: str | dict | None = None, *, subject_name_strategy: str = "topic",
                    auto_register: bool = True, use_latest_version: bool = False,
                    normalize: bool = False) -> Serde:
        """JSON Schema: values are JSON documents validated against `schema` (required
        for sinks) or, when reading without one, against their writer's schema."""
        options = formats.WriteOptions(subject_name_strategy, auto_register, use_latest_version, normalize)
        text = formats.schema_text(schema)
        return self._serde("json-schema",
                           lambda topic, field: formats.json_schema(self.client(), text, options, topic, field),
                           "give json_schema(schema=...) the schema to write")

    def protobuf(self, message_type: type, *, messages: bool = False, subject_name_strategy: str = "topic",
                 auto_register: bool = True, use_latest_version: bool = False, normalize: bool = False) -> Serde:
        """Protobuf messages of `message_type` (a generated class). Job functions get
        dicts of the message's fields (None for an unset optional field), or the
        messages themselves with `messages=True`; sinks take either."""
        options = formats.WriteOptions(subject_name_strategy, auto_register, use_latest_version, normalize)
        return self._serde(
            "protobuf",
            lambda topic, field: formats.protobuf(self.client(), message_type, messages, options, topic, field),
            "")

    def _serde(self, name: str, make: Callable[[str, Field], Codec], needs_schema: str) -> Serde:
        _import("confluent_kafka.schema_registry", "SchemaRegistryClient")  # the extra is there, or say so now
        return registry_serde(name, make, needs_schema)

    def __repr__(self) -> str:
        return f"SchemaRegistry({self.url!r})"


def _refuse_literal_secret(setting: str, value: str) -> None:
    if any(word in setting for word in _SECRET_WORDS) and not secrets.is_reference(value):
        raise ConfigurationError(
            f"-p {PARAM_PREFIX}{setting}: give a reference, @env:VAR or @file:PATH, not the secret itself "
            f"(job parameters show in ps and are recorded in savepoints), or set {USER_INFO_ENV}")
    if setting == "url" and not secrets.is_reference(value) and "@" in value.split("//", 1)[-1].split("/", 1)[0]:
        raise ConfigurationError(f"-p {PARAM_PREFIX}url: credentials in the URL would show in ps and savepoints; "
                                 f"use {PARAM_PREFIX}basic.auth.user.info=@env:VAR or {USER_INFO_ENV}")


def _typed(name: str, value: Any) -> Any:
    """Parameters are text; Confluent's client wants numbers for its numeric settings."""
    if name in _NUMBERS and isinstance(value, str):
        try:
            return float(value) if "." in value else int(value)
        except ValueError:
            raise ConfigurationError(f"{PARAM_PREFIX}{name}: {value!r} is not a number") from None
    return value


def _import(module: str, name: str) -> Any:
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except ImportError as exc:
        raise ConfigurationError(f"schema-registry serdes need packages that are not installed ({exc.name}): "
                                 f"{INSTALL_HINT}") from None
