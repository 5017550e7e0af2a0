"""The running sum in one stage: the input is keyed (so partitioned) by user, and the
state is keyed by the record key without a repartition topic."""

from connectors.serdes import JSON, STRING
from examples.running_sum import add_order
from service.api import Job, Params


def build(params: Params) -> Job:
    job = Job("running-sum-prekeyed")
    (job.source(params["input"], key=STRING, value=JSON, uid="orders")
        .key_by_record_key()
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
