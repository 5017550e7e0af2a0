"""Orders per user per window, on event time: the job the event-time tests check.

Input: JSON {"id": int, "user": str, "amount": int, "ts": ms}; event time is "ts" (not
the Kafka timestamp), with 1 s of allowed out-of-orderness. Windows of 10 s, tumbling
(`-p shape=tumbling`), hopping every 5 s (`-p shape=hopping`) or sliding
(`-p shape=sliding`), sessions with a gap of 1 s (`-p shape=session`), all with a grace
of 2 s, or count windows of the last 5 orders every 2 (`-p shape=count`); and
`-p emit=final|update`; optional `-p late=TOPIC` (late records go there),
`-p updates=TOPIC` (the same windows' every update also go there) and `-p idle_ms=N`
(the source's idle timeout). Output: key = user, value
{"start": ms, "end": ms, "value": {"orders": int, "amount": int}} (count windows:
positions in the user's orders instead of ms).
"""

from eos import JSON, STRING, Count, Hopping, Job, Params, Session, Sliding, Tumbling

SIZE_MS, ADVANCE_MS, GAP_MS, GRACE_MS, OUT_OF_ORDERNESS_MS = 10_000, 5_000, 1_000, 2_000, 1_000
COUNT_SIZE, COUNT_SLIDE = 5, 2
SHAPES = {"tumbling": Tumbling(SIZE_MS), "hopping": Hopping(SIZE_MS, ADVANCE_MS), "sliding": Sliding(SIZE_MS),
          "session": Session(GAP_MS), "count": Count(COUNT_SIZE, COUNT_SLIDE)}


def add_order(totals: dict, order: dict) -> dict:
    return {"orders": totals["orders"] + 1, "amount": totals["amount"] + order["amount"]}


def merge_totals(earlier: dict, later: dict) -> dict:
    return {"orders": earlier["orders"] + later["orders"], "amount": earlier["amount"] + later["amount"]}


def build(params: Params) -> Job:
    shape = SHAPES[params["shape"]]
    grace_ms = 0 if isinstance(shape, Count) else GRACE_MS
    job = Job("windowed-orders")
    idle_ms = int(params["idle_ms"]) if "idle_ms" in params else None
    windows = (job.source(params["input"], value=JSON, timestamp=lambda order: order["ts"],
                          max_out_of_orderness_ms=OUT_OF_ORDERNESS_MS, idle_timeout_ms=idle_ms, uid="orders")
               .key_by(lambda order: order["user"], uid="by-user")
               .window(shape, grace_ms=grace_ms, late_topic=params.get("late")))
    (windows.aggregate(add_order, initial={"orders": 0, "amount": 0}, merge=merge_totals, emit=params["emit"],
                       uid="per-window")
        .sink(params["output"], key=STRING, value=JSON, uid="per-window-out"))
    if "updates" in params:
        (windows.aggregate(add_order, initial={"orders": 0, "amount": 0}, merge=merge_totals, emit="update",
                           uid="window-updates")
            .sink(params["updates"], key=STRING, value=JSON, uid="window-updates-out"))
    return job
