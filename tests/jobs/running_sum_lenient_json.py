"""The running-sum job "fixed" to skip values that are not JSON: it parses itself.
Same uids for the stateful part, so it resumes the original job's checkpoints."""

import json

from eos import BYTES, JSON, STRING, Job, Params

from running_sum import add_order


def parse_or_skip(raw: bytes) -> list:
    try:
        return [json.loads(raw)]
    except ValueError:
        return []


def build(params: Params) -> Job:
    job = Job("running-sum")
    (job.source(params["input"], value=BYTES, uid="orders")
        .flat_map(parse_or_skip)
        .key_by(lambda order: order["user"], uid="by-user", value=JSON)
        .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals")
        .sink(params["output"], key=STRING, value=JSON, uid="totals-out"))
    return job
