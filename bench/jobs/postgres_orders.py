"""Benchmark job: every order appended to a PostgreSQL table, exactly once (or at least
once), with the sink's default batching. `-p input=TOPIC -p postgres=DSN -p table=NAME`."""

from eos import JSON, Job, Params, PostgresSink


def build(params: Params) -> Job:
    job = Job("bench-postgres-orders")
    job.source(params["input"], value=JSON, uid="orders").sink(PostgresSink(
        params["postgres"], params["table"], mode="insert",
        columns={"order_id": "bigint", "user_id": "text", "amount": "bigint"},
        value=lambda order: (order["id"], order["user"], order["amount"])), uid="orders-db")
    return job
