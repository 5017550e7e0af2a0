"""Serdes through a Confluent-compatible schema registry: Avro, Protobuf, JSON Schema."""

from connectors.registry.registry import SchemaRegistry

__all__ = ["SchemaRegistry"]
