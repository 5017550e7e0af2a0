"""How many users live in each country right now: a table regrouped and counted.

The users topic is read as a table; each profile change travels to its country's task
as a retraction from the old country and an addition to the new one, so every count is
exact at all times, and exactly once across crashes. Input: profiles JSON {"user": str,
"country": str} keyed by user (a tombstone deletes a user). Output: key = country, the
number of users there (JSON), a new record whenever it changes.

Run it with the topics `users` and `users-per-country` in place and
KAFKA_BOOTSTRAP_SERVERS set (200 users, then 400 changes of their countries):

    eos generate --topic users --profiles --users 200 --records 600
    eos run examples/users_per_country.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=users -p output=users-per-country
"""

from eos import JSON, STRING, Job, Params


def build(params: Params) -> Job:
    job = Job("users-per-country")
    users = job.table(params["input"], key=STRING, value=JSON, uid="users")
    (users.group_by(lambda user, profile: (profile["country"], user), uid="by-country")
        .count(uid="users-in-country")
        .sink(params["output"], key=STRING, value=JSON, uid="counts"))
    return job
