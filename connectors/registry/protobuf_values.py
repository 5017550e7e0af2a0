"""Protobuf messages as the plain values job functions see: dicts, lists, numbers.

protobuf's own `json_format` follows the JSON mapping (64-bit integers become strings,
bytes base64), which is right for JSON and wrong for a job that adds up counts. Here a
message becomes a dict of its fields with Python's own types: every field is present,
a field with presence that is unset (proto3 `optional`, a message, a oneof member) is
None, enums are their names, maps are dicts. A dict goes back through the message's
constructor, which takes nested dicts, lists, enum names and None alike.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_ENUM = FieldDescriptor.TYPE_ENUM


def to_dict(message: Message) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            result[field.name] = {k: _single(value_field, v) for k, v in value.items()}
        elif _repeated(field):
            result[field.name] = [_single(field, v) for v in value]
        elif field.has_presence and not message.HasField(field.name):
            result[field.name] = None
        else:
            result[field.name] = _single(field, value)
    return result


def from_value(message_type: type[Message], value: Any) -> Message:
    """A message of `message_type` from a dict of its fields (or the message itself)."""
    if isinstance(value, message_type):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"{message_type.DESCRIPTOR.full_name} needs a dict or a message, got {type(value).__name__}")
    return message_type(**value)


def _single(field: FieldDescriptor, value: Any) -> Any:
    if field.type == _MESSAGE:
        return to_dict(value)
    if field.type == _ENUM:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    return value


def _repeated(field: FieldDescriptor) -> bool:
    # `is_repeated` is the newer spelling; `label` is deprecated in protobuf 6 and later.
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == _MESSAGE and _repeated(field) and field.message_type.GetOptions().map_entry
