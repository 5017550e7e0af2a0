"""Orders per user per minute: a tumbling event-time window, final results only.

Input: JSON {"id": int, "user": str, "amount": int}; each order's event time is its
Kafka timestamp. Output: one record per user and minute once that minute is over (the
watermark passed its end plus a grace of 5 s), key = user, value JSON
{"start": ms, "end": ms, "value": {"orders": int, "amount": int}}, Kafka timestamp =
end - 1. Orders that arrive for a minute already closed are counted in
eos_late_records_dropped_total and dropped.

Run it with the topics `orders` and `orders-per-minute` in place and
KAFKA_BOOTSTRAP_SERVERS set (the generator spaces the orders' event times 250 ms apart,
so 1000 orders span a little over four minutes):

    eos generate --topic orders --records 1000 --event-time-step 250ms
    eos run examples/orders_per_minute.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders -p output=orders-per-minute
"""

from eos import JSON, STRING, Job, Params, Tumbling

MINUTE_MS = 60_000


def add_order(totals: dict, order: dict) -> dict:
    return {"orders": totals["orders"] + 1, "amount": totals["amount"] + order["amount"]}


def build(params: Params) -> Job:
    job = Job("orders-per-minute")
    (job.source(params["input"], value=JSON, uid="orders")
        .key_by(lambda order: order["user"], uid="by-user")
        .window(Tumbling(MINUTE_MS), grace_ms=5_000)
        .aggregate(add_order, initial={"orders": 0, "amount": 0}, emit="final", uid="per-minute")
        .sink(params["output"], key=STRING, value=JSON, uid="per-minute-out"))
    return job
