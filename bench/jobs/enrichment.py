"""The join benchmark's job: each order (keyed by user) joined with its user's profile
from a table (keyed by user); output: the order with "country" added."""

from eos import JSON, Job, Params


def build(params: Params) -> Job:
    job = Job("enrichment")
    profiles = job.table(params["profiles"], value=JSON, uid="profiles")
    (job.source(params["input"], value=JSON, uid="orders")
        .join(profiles, lambda order, profile: {**order, "country": None if profile is None else profile["country"]},
              how="left", uid="with-country")
        .sink(params["output"], value=JSON, uid="enriched"))
    return job
