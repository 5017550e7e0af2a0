"""Orders from two shops merged into one stream: written as they are to one topic (JSON),
their amounts to another (Kafka's int64 serde, as Java consumers read it), and totals per
user kept across both shops.

Input `-p web=TOPIC`, `-p shop=TOPIC`: JSON {"id": int, "user": str, "amount": int}.
Outputs `-p all=TOPIC` (the orders, JSON), `-p amounts=TOPIC` (key = user, UTF-8; value =
amount, int64), `-p output=TOPIC` (key = user, {"user", "sum", "count", "last_id"}).
"""

from eos import INT64, JSON, STRING, Job, Params


def add(total: dict, order: dict) -> dict:
    return {"user": order["user"], "sum": total["sum"] + order["amount"], "count": total["count"] + 1,
            "last_id": order["id"]}


def build(params: Params) -> Job:
    job = Job("merged-orders")
    shop = job.source(params["shop"], value=JSON, uid="shop")
    orders = job.source(params["web"], value=JSON, uid="web").merge(shop, uid="all-orders")
    orders.sink(params["all"], value=JSON, uid="all-out")
    (orders.map(lambda order: order, uid="as-is")
        .key_by(lambda order: order["user"], uid="by-user-for-amounts")
        .map(lambda order: order["amount"], uid="amount")
        .sink(params["amounts"], key=STRING, value=INT64, uid="amounts-out"))
    (orders.key_by(lambda order: order["user"], uid="by-user")
        .aggregate(add, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
