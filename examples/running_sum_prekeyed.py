"""The running sum for input already keyed (so partitioned) by user: state keyed by the
record key with `key_by_record_key()`, one stage, no repartition topic. The same result
as running_sum.py when every order's record key is its user; the computation the
benchmark's baselines do.

Run it with the topics `orders-by-user` and `totals` in place and KAFKA_BOOTSTRAP_SERVERS set:

    eos generate --topic orders-by-user --records 1000 --key-by-user
    eos run examples/running_sum_prekeyed.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders-by-user -p output=totals
"""

from eos import JSON, STRING, Job, Params

from running_sum import add_order


def build(params: Params) -> Job:
    job = Job("running-sum-prekeyed")
    (job.source(params["input"], key=STRING, value=JSON, uid="orders")
        .key_by_record_key()
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
