"""Running sum per user: the example job and the contract our exactly-once tests check.

Input: JSON {"id": int, "user": str, "amount": int}; the record key may be anything.
Output: one record per input, key = user, value JSON
{"user": str, "sum": int, "count": int, "last_id": int} with the user's running totals
including this record.

Run it with the topics `orders` and `totals` in place and KAFKA_BOOTSTRAP_SERVERS set:

    eos generate --topic orders --records 1000
    eos run examples/running_sum.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders -p output=totals
"""

from eos import JSON, STRING, Job, Params


def add_order(totals: dict, order: dict) -> dict:
    return {
        "user": order["user"],
        "sum": totals["sum"] + order["amount"],
        "count": totals["count"] + 1,
        "last_id": order["id"],
    }


def build(params: Params) -> Job:
    job = Job("running-sum")
    (job.source(params["input"], value=JSON, uid="orders")
        .key_by(lambda order: order["user"], uid="by-user")
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
