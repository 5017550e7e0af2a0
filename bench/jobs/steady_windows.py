"""The steady-state benchmark's job: windows and a running total per user, on an
unbounded stream whose users come and go, with state that must stay bounded.

Input: JSON {"id", "user", "amount"} keyed by user; event time = the Kafka timestamp.
Two outputs, key = user: orders per user per 10 s tumbling window, final results
(`-p windows=TOPIC`), and each order's user totals over the user's current activity,
forgotten 60 s of event time after the user's last order (`-p totals=TOPIC`, an aggregate
with ttl_ms; `-p ttl_ms=N` changes it).
"""

from eos import JSON, STRING, Job, Params, Tumbling

WINDOW_MS, GRACE_MS, TTL_MS = 10_000, 2_000, 60_000


def add_order(totals: dict, order: dict) -> dict:
    return {"orders": totals["orders"] + 1, "amount": totals["amount"] + order["amount"]}


def build(params: Params) -> Job:
    job = Job("steady-windows")
    orders = job.source(params["input"], key=STRING, value=JSON, uid="orders").key_by_record_key()
    (orders.window(Tumbling(WINDOW_MS), grace_ms=GRACE_MS).count(emit="final", uid="per-10s")
        .sink(params["windows"], key=STRING, value=JSON, uid="windows-out"))
    (orders.aggregate(add_order, initial={"orders": 0, "amount": 0}, ttl_ms=int(params.get("ttl_ms", TTL_MS)),
                      uid="recent-totals")
        .sink(params["totals"], key=STRING, value=JSON, uid="totals-out"))
    return job
