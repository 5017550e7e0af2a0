"""Moving sums: each user's orders and amount over every 60 s span, on sliding windows.

Input: JSON {"id": int, "user": str, "amount": int}; each order's event time is its
Kafka timestamp. A sliding window holds a user's orders whose event times are at most
60 s apart: one window ends at each order ([t - 60 s, t], that order and the 60 s
before it) and one starts just after it when a later order follows within 60 s. Output:
one record per window once it is over (the watermark passed its end plus a grace of
5 s), key = user, value JSON {"start": ms, "end": ms, "value": {"orders": int,
"amount": int}} with both ends inclusive; Kafka timestamp = end.

Run it with the topics `orders` and `moving-sums` in place and KAFKA_BOOTSTRAP_SERVERS
set (200 users, event times 250 ms apart):

    eos generate --topic orders --records 1000 --users 200 --event-time-step-ms 250
    eos run examples/moving_sum.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders -p output=moving-sums
"""

from eos import JSON, STRING, Job, Params, Sliding

from orders_per_minute import add_order


def build(params: Params) -> Job:
    job = Job("moving-sum")
    (job.source(params["input"], value=JSON, uid="orders")
        .key_by(lambda order: order["user"], uid="by-user")
        .window(Sliding(60_000), grace_ms=5_000)
        .aggregate(add_order, initial={"orders": 0, "amount": 0}, emit="final", uid="moving-sums")
        .sink(params["output"], key=STRING, value=JSON, uid="moving-sums-out"))
    return job
