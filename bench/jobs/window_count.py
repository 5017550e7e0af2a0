"""The window benchmark's job: orders per user per 10 s tumbling window, final results.

Input keyed by user (so partitioned by user, as Quix Streams needs), event time = the
Kafka timestamp, no grace; output {"start", "end", "value": count} under the user key.
"""

from eos import JSON, Job, Params, Tumbling

WINDOW_MS = 10_000


def build(params: Params) -> Job:
    job = Job("window-count")
    (job.source(params["input"], value=JSON, uid="orders")
        .key_by_record_key()
        .window(Tumbling(WINDOW_MS))
        .count(emit="final", uid="counts")
        .sink(params["output"], value=JSON, uid="counts-out"))
    return job
