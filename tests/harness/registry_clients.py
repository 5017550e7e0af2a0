"""The schema registry's side of the tests, written with confluent-kafka alone.

What a producer of Avro orders and a consumer of the job's outputs would run, knowing
nothing of eos: Confluent's own serializers and deserializers against the real
registry. Order schemas are the tests' own (version 2 adds an optional coupon, a
BACKWARD compatible change); the Protobuf output type is the example's generated class,
which any consumer of that topic would compile from examples/protos/user_total.proto.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import struct
import sys
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.harness.oracle import Order
from tests.harness.worker_process import REPO

ORDER_V1 = {"type": "record", "name": "Order", "namespace": "eos.examples",
            "fields": [{"name": "id", "type": "long"}, {"name": "user", "type": "string"},
                       {"name": "amount", "type": "long"}]}
ORDER_V2 = {**ORDER_V1, "fields": [*ORDER_V1["fields"],
                                   {"name": "coupon", "type": ["null", "string"], "default": None}]}
# Bytes no registry serializer wrote, and bytes framed like one but naming a schema id
# the registry never gave out.
NOT_FRAMED = b'{"id": -1, "user": "user-1", "amount": 1}'
UNKNOWN_SCHEMA_ID = b"\x00" + struct.pack(">I", 987_654) + b"\x02\x0cuser-1\x02"


def coupon_of(order_id: int) -> str | None:
    """Version-2 orders: every other one carries a coupon."""
    return f"coupon-{order_id}" if order_id % 2 == 0 else None


class AvroOrderProducer:
    """Produces running-sum orders as registry-framed Avro of version 1 or 2, keyed by
    order id, partitioned as Kafka's Java client would."""

    def __init__(self, bootstrap: str, registry_url: str, topic: str) -> None:
        self.topic = topic
        self._client = SchemaRegistryClient({"url": registry_url})
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True,
                                   "partitioner": "murmur2_random"})
        self._serializers = {1: AvroSerializer(self._client, json.dumps(ORDER_V1)),
                             2: AvroSerializer(self._client, json.dumps(ORDER_V2))}
        self._ctx = SerializationContext(topic, MessageField.VALUE)

    def produce(self, orders: Iterable[Order], version: int, extra: Iterable[bytes] = ()) -> None:
        """`orders` in `version`, then the raw `extra` values (bad records)."""
        serialize = self._serializers[version]
        for order in orders:
            value = {"id": order.id, "user": order.user, "amount": order.amount}
            if version == 2:
                value["coupon"] = coupon_of(order.id)
            self._produce(f"order-{order.id}".encode(), serialize(value, self._ctx))
        for i, raw in enumerate(extra):
            self._produce(b"bad-%d" % i, raw)
        assert self._producer.flush(30) == 0, f"records to {self.topic} were not delivered"

    def _produce(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value, key)
                return
            except BufferError:
                self._producer.poll(0.1)


@functools.cache
def user_total_type() -> type:
    """examples/protos/user_total_pb2.UserTotal, loaded once per process (a generated
    module registers its file in protobuf's default pool, which refuses it twice)."""
    path = REPO / "examples" / "protos" / "user_total_pb2.py"
    spec = importlib.util.spec_from_file_location("user_total_pb2", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("user_total_pb2", module)
    spec.loader.exec_module(module)
    return module.UserTotal


def protobuf_totals(registry_url: str, topic: str) -> Any:
    """A decoder of the job's Protobuf values: Confluent's deserializer, then the fields
    the running-sum oracle reads (and the coupon)."""
    deserializer = ProtobufDeserializer(user_total_type(), {"use.deprecated.format": False},
                                        schema_registry_client=SchemaRegistryClient({"url": registry_url}))
    ctx = SerializationContext(topic, MessageField.VALUE)

    def decode(raw: bytes) -> dict:
        total = deserializer(raw, ctx)
        return {"user": total.user, "sum": total.sum, "count": total.count, "last_id": total.last_id,
                "last_coupon": total.last_coupon if total.HasField("last_coupon") else None}

    return decode


def register_json_schema(registry_url: str, subject: str, schema: dict) -> int:
    """Registers a JSON Schema under `subject`, as another producer of the topic would."""
    from confluent_kafka.schema_registry import Schema

    return SchemaRegistryClient({"url": registry_url}).register_schema(subject, Schema(json.dumps(schema), "JSON"))


def json_schema_values(registry_url: str, topic: str) -> Any:
    """A decoder of JSON Schema values: Confluent's deserializer, validating each
    against the schema its writer registered."""
    deserializer = JSONDeserializer(None, schema_registry_client=SchemaRegistryClient({"url": registry_url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return lambda raw: deserializer(raw, ctx)
