"""Orders and their payments: two streams joined within 10 s of event time.

Input `-p orders=TOPIC`: key = order key, JSON {"order": int}; `-p payments=TOPIC`: key =
order key, JSON {"payment": int}; event time is the Kafka timestamp. Output `-p
output=TOPIC`: key = order key, {"order", "payment"} for every order and payment of one
key at most 10 s apart; with `-p how=left`, also each order that met no payment, with
payment None, once 10 s of event time have passed it. `-p idle_ms=N`: a partition of
either topic that brings nothing for N ms stops holding back the watermark.
"""

from eos import JSON, STRING, Job, Params

WITHIN_MS = 10_000


def build(params: Params) -> Job:
    job = Job("order-payments")
    idle_ms = int(params["idle_ms"]) if "idle_ms" in params else None
    payments = job.source(params["payments"], key=STRING, value=JSON, idle_timeout_ms=idle_ms, uid="payments")
    (job.source(params["orders"], key=STRING, value=JSON, idle_timeout_ms=idle_ms, uid="orders")
        .join(payments, lambda order, payment: {"order": order["order"], "payment": payment and payment["payment"]},
              within_ms=WITHIN_MS, how=params.get("how", "inner"), uid="paid")
        .sink(params["output"], key=STRING, value=JSON, uid="paid-out"))
    return job
