"""Running sum per user over Avro orders, written as Protobuf, through a schema registry.

Input: Avro orders {"id": long, "user": string, "amount": long}, registry-framed (any
version of the subject `{input}-value`: version 2 adds an optional "coupon"). Output: one
record per order, key = user (string), value a Protobuf `UserTotal`
(examples/protos/user_total.proto) with the user's running totals including this order,
registered under `{output}-value`.

The registry comes from `-p schema.registry.url=URL` or SCHEMA_REGISTRY_URL (credentials:
`-p schema.registry.basic.auth.user.info=@env:VAR` or SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO).
With SCHEMA_REGISTRY_URL naming a Confluent-compatible registry, the topics `orders` and
`totals` in place and KAFKA_BOOTSTRAP_SERVERS set:

    eos generate --topic orders --records 1000 --format avro
    eos run examples/registry_totals.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders -p output=totals
"""

from eos import STRING, Job, Params, SchemaRegistry
from protos.user_total_pb2 import UserTotal

# The reader's schema: every order, whichever version wrote it, is read into this one.
# Orders of version 1 have no coupon and read as None (the field's default).
ORDER = {
    "type": "record", "name": "Order", "namespace": "eos.examples",
    "fields": [{"name": "id", "type": "long"}, {"name": "user", "type": "string"},
               {"name": "amount", "type": "long"},
               {"name": "coupon", "type": ["null", "string"], "default": None}],
}


def add_order(totals: dict, order: dict) -> dict:
    return {
        "user": order["user"],
        "sum": totals["sum"] + order["amount"],
        "count": totals["count"] + 1,
        "last_id": order["id"],
        "last_coupon": order["coupon"],
    }


def build(params: Params) -> Job:
    registry = SchemaRegistry.from_params(params)
    job = Job("registry-totals")
    (job.source(params["input"], value=registry.avro(ORDER), uid="orders")
        .key_by(lambda order: order["user"], uid="by-user")
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=registry.protobuf(UserTotal), uid="totals-out"))
    return job
