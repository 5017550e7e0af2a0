"""User sessions: session windows, final results only.

Input: JSON {"id": int, "user": str, "amount": int}; each order's event time is its
Kafka timestamp. A user's session lasts while orders come less than 30 s apart; it
closes 30 s after its last order plus a grace of 5 s (an order 5 s or more behind the
stream's time is late, dropped and counted). Output: one record per session once it
closes, key = user, value JSON {"start": ms, "end": ms, "value": {"orders": int,
"amount": int}} where start is the first order's event time and end the last one's +
30 s; Kafka timestamp = end - 1.

Run it with the topics `orders` and `sessions` in place and KAFKA_BOOTSTRAP_SERVERS set
(200 users, event times 250 ms apart):

    eos generate --topic orders --records 1000 --users 200 --event-time-step 250ms
    eos run examples/user_sessions.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders -p output=sessions
"""

from eos import JSON, STRING, Job, Params, Session

from orders_per_minute import add_order

GAP_MS = 30_000


def merge_totals(earlier: dict, later: dict) -> dict:
    return {"orders": earlier["orders"] + later["orders"], "amount": earlier["amount"] + later["amount"]}


def build(params: Params) -> Job:
    job = Job("user-sessions")
    (job.source(params["input"], value=JSON, uid="orders")
        .key_by(lambda order: order["user"], uid="by-user")
        .window(Session(GAP_MS), grace_ms=5_000)
        .aggregate(add_order, initial={"orders": 0, "amount": 0}, merge=merge_totals, emit="final",
                   uid="sessions")
        .sink(params["output"], key=STRING, value=JSON, uid="sessions-out"))
    return job
