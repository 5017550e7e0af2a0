"""The running sum for input already keyed (and so partitioned) by user: state keyed by
the record key, no repartition topic. The same computation Quix and the plain loop do
on the benchmark's user-keyed input."""

from connectors.serdes import JSON, STRING
from service.api import Job, Params

from examples.running_sum import add_order  # noqa: E402  (same fold as the example)


def build(params: Params) -> Job:
    job = Job("running-sum-prekeyed")
    (job.source(params["input"], key=STRING, value=JSON, uid="orders")
        .key_by_record_key()
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
