"""The running-sum job with UTF-8 record keys and an operator that can make an output
too large to send: orders carrying `"pad": N` grow by N bytes before the repartition
topic. Each way for a record to be bad then has a place in one job."""

from eos import JSON, STRING, Job, Params

from running_sum import add_order


def inflate(order: dict) -> dict:
    if "pad" in order:
        return {**order, "blob": "x" * order["pad"]}
    return order


def build(params: Params) -> Job:
    job = Job("running-sum")
    (job.source(params["input"], key=STRING, value=JSON, uid="orders")
        .map(inflate, uid="inflate")
        .key_by(lambda order: order["user"], uid="by-user")
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
