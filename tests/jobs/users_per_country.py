"""How many users are in each country right now: a table regrouped and counted, each
change retracting the user from their old country.

Input `-p users=TOPIC`: key = user, JSON {"country": str} or a tombstone.
Output `-p output=TOPIC`: key = country, the count (JSON int).
"""

from eos import JSON, STRING, Job, Params


def build(params: Params) -> Job:
    job = Job("users-per-country")
    users = job.table(params["users"], key=STRING, value=JSON, uid="users")
    (users.group_by(lambda user, row: (row["country"], user), uid="by-country")
        .count(uid="count")
        .sink(params["output"], key=STRING, value=JSON, uid="counts-out"))
    return job
