"""Avro, Protobuf and JSON Schema: Confluent's serializers for one topic and field.

Each function makes the `Codec` a bound serde calls (connectors/registry/binding.py).
Writing needs a schema (Avro, JSON Schema) or a message type (Protobuf); reading needs
none but the registry's: every record names its writer's schema by id. A schema given
for reading is the reader's schema: Avro resolves each record into it (fields the
writer lacked take their defaults, fields the reader lacks are dropped), JSON Schema
validates against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from connectors.registry.binding import Codec
from connectors.serdes import Field
from eos.errors import ConfigurationError

SUBJECT_NAME_STRATEGIES = ("topic", "record", "topic_record")


@dataclass(frozen=True)
class WriteOptions:
    """How a serializer finds its subject and schema id (Confluent's serializer settings)."""

    subject_name_strategy: str = "topic"
    auto_register: bool = True
    use_latest_version: bool = False
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.subject_name_strategy not in SUBJECT_NAME_STRATEGIES:
            raise ConfigurationError(f"subject_name_strategy={self.subject_name_strategy!r} is not one of "
                                     f"{', '.join(SUBJECT_NAME_STRATEGIES)}")

    def serializer_config(self) -> dict[str, Any]:
        from confluent_kafka import schema_registry

        strategy = getattr(schema_registry, f"{self.subject_name_strategy}_subject_name_strategy")
        return {"auto.register.schemas": self.auto_register, "use.latest.version": self.use_latest_version,
                "normalize.schemas": self.normalize, "subject.name.strategy": strategy}


def schema_text(schema: str | dict | None) -> str | None:
    return json.dumps(schema) if isinstance(schema, dict) else schema


def avro(client: Any, schema: str | None, options: WriteOptions, topic: str, field: Field) -> Codec:
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

    writes = schema is not None or options.use_latest_version
    serializer = AvroSerializer(client, schema_str=schema, conf=options.serializer_config()) if writes else None
    return Codec(serializer, AvroDeserializer(client, schema_str=schema))


def json_schema(client: Any, schema: str | None, options: WriteOptions, topic: str, field: Field) -> Codec:
    from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer

    writes = schema is not None or options.use_latest_version
    serializer = JSONSerializer(schema, client, conf=options.serializer_config()) if writes else None
    return Codec(serializer, JSONDeserializer(schema, schema_registry_client=client))


def protobuf(client: Any, message_type: type, messages: bool, options: WriteOptions, topic: str,
             field: Field) -> Codec:
    """Protobuf's wire format needs the message type on both sides. Values are dicts
    (protobuf_values.py) unless `messages`; the serializer takes either."""
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer

    from connectors.registry import protobuf_values

    deprecated = {"use.deprecated.format": False}
    serializer = ProtobufSerializer(message_type, client, {**options.serializer_config(), **deprecated})
    deserializer = ProtobufDeserializer(message_type, deprecated, schema_registry_client=client)
    return Codec(serializer, deserializer, to_job=None if messages else protobuf_values.to_dict,
                 from_job=lambda value: protobuf_values.from_value(message_type, value))
