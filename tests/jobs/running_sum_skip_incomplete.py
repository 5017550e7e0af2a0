"""The running-sum job "fixed" to skip orders without a user: same uids, so it resumes
the original job's checkpoints."""

from eos import JSON, STRING, Job, Params

from running_sum import add_order


def build(params: Params) -> Job:
    job = Job("running-sum")
    (job.source(params["input"], value=JSON, uid="orders")
        .filter(lambda order: isinstance(order, dict) and "user" in order)
        .key_by(lambda order: order["user"], uid="by-user")
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
