"""The running-sum job slowed to at most ~1000 records/s (`-p throttle_ms=1`), so a
backlog stays visible for a few seconds: monitoring tests watch its lag fall to 0."""

import time

from eos import JSON, STRING, Job, Params

from running_sum import add_order


def build(params: Params) -> Job:
    pause = float(params["throttle_ms"] if "throttle_ms" in params else "1") / 1000

    def throttle(order: dict) -> dict:
        time.sleep(pause)
        return order

    job = Job("running-sum-throttled")
    (job.source(params["input"], value=JSON, uid="orders")
        .map(throttle, uid="throttle")
        .key_by(lambda order: order["user"], uid="by-user")
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
