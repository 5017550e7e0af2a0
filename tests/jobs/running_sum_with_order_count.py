"""The running sum with one more stateful operator: orders counted per user.

The same job (same name and uids) as examples/running_sum.py plus the operator
`order-count`, whose counts go to `-p counts=TOPIC` as JSON {"user": str, "orders": int}.
Savepoint tests resume one version from the other's savepoint: an added operator
starts empty, a removed one is refused unless --allow-non-restored-state.
"""

from eos import JSON, STRING, Job, Params

from running_sum import add_order


def count_order(counted: dict, order: dict) -> dict:
    return {"user": order["user"], "orders": counted["orders"] + 1}


def build(params: Params) -> Job:
    job = Job("running-sum")
    by_user = (job.source(params["input"], value=JSON, uid="orders")
               .key_by(lambda order: order["user"], uid="by-user"))
    (by_user.aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    (by_user.aggregate(count_order, initial={"orders": 0}, uid="order-count")
        .sink(params["counts"], key=STRING, value=JSON, uid="counts-out"))
    return job
