"""Orders per user per window, on event time: the job the event-time tests check.

Input: JSON {"id": int, "user": str, "amount": int, "ts": ms}; event time is "ts" (not
the Kafka timestamp), with 1 s of allowed out-of-orderness. Windows of 10 s, tumbling
(`-p shape=tumbling`) or hopping every 5 s (`-p shape=hopping`), or sessions with a gap
of 1 s (`-p shape=session`), a grace of 2 s, and
`-p emit=final|update`; optional `-p late=TOPIC` (late records go there) and
`-p idle_ms=N` (the source's idle timeout). Output: key = user, value
{"start": ms, "end": ms, "value": {"orders": int, "amount": int}}.
"""

from eos import JSON, STRING, Hopping, Job, Params, Session, Tumbling

SIZE_MS, ADVANCE_MS, GAP_MS, GRACE_MS, OUT_OF_ORDERNESS_MS = 10_000, 5_000, 1_000, 2_000, 1_000
SHAPES = {"tumbling": Tumbling(SIZE_MS), "hopping": Hopping(SIZE_MS, ADVANCE_MS), "session": Session(GAP_MS)}


def add_order(totals: dict, order: dict) -> dict:
    return {"orders": totals["orders"] + 1, "amount": totals["amount"] + order["amount"]}


def merge_totals(earlier: dict, later: dict) -> dict:
    return {"orders": earlier["orders"] + later["orders"], "amount": earlier["amount"] + later["amount"]}


def build(params: Params) -> Job:
    shape = SHAPES[params["shape"]]
    job = Job("windowed-orders")
    idle_ms = int(params["idle_ms"]) if "idle_ms" in params else None
    (job.source(params["input"], value=JSON, timestamp=lambda order: order["ts"],
                max_out_of_orderness_ms=OUT_OF_ORDERNESS_MS, idle_timeout_ms=idle_ms, uid="orders")
        .key_by(lambda order: order["user"], uid="by-user")
        .window(shape, grace_ms=GRACE_MS, late_topic=params.get("late"))
        .aggregate(add_order, initial={"orders": 0, "amount": 0}, merge=merge_totals, emit=params["emit"],
                   uid="per-window")
        .sink(params["output"], key=STRING, value=JSON, uid="per-window-out"))
    return job
