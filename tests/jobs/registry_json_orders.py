"""Avro orders read as each one's writer wrote them (no reader schema), written as JSON
Schema documents {"id", "user", "fields"}: which fields the order had. The registry is
named by `-p schema.registry.url=URL`."""

from eos import Job, Params, SchemaRegistry

ORDER_FIELDS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "OrderFields",
    "type": "object",
    "properties": {"id": {"type": "integer"}, "user": {"type": "string"},
                   "fields": {"type": "array", "items": {"type": "string"}}},
    "required": ["id", "user", "fields"],
}


def build(params: Params) -> Job:
    registry = SchemaRegistry.from_params(params)
    job = Job("registry-json-orders")
    (job.source(params["input"], value=registry.avro(), uid="orders")
        .map(lambda order: {"id": order["id"], "user": order["user"], "fields": sorted(order)}, uid="fields")
        .sink(params["output"], value=registry.json_schema(ORDER_FIELDS), uid="out"))
    return job
