"""Clicks enriched with their user's profile: a stream joined with a table.

Input `-p clicks=TOPIC`: key = user, JSON {"id": int}; `-p users=TOPIC`: key = user, JSON
{"version": int} or a tombstone. Both keyed by user with Kafka's default partitioner, so
co-partitioned. Output `-p output=TOPIC`: key = user, {"id", "version"} where version is
the user's profile version at the click's time (None: no profile).
"""

from eos import JSON, STRING, Job, Params


def build(params: Params) -> Job:
    job = Job("enrich-clicks")
    users = job.table(params["users"], key=STRING, value=JSON, uid="users")
    (job.source(params["clicks"], key=STRING, value=JSON, uid="clicks")
        .join(users, lambda click, user: {"id": click["id"], "version": None if user is None else user["version"]},
              how="left", uid="enrich")
        .sink(params["output"], key=STRING, value=JSON, uid="enriched"))
    return job
