"""Running totals per user, kept as a table and joined with the users' profiles: a stream
aggregate turned into a table, repartitioned to meet a table read from a topic.

Input `-p orders=TOPIC`: JSON {"id", "user", "amount"} (any key); `-p users=TOPIC`: key =
user, JSON {"version": int} or a tombstone. Output `-p output=TOPIC`: key = user,
{"sum": int, "version": int or None} whenever either side changes (left join).
"""

from eos import JSON, STRING, Job, Params


def build(params: Params) -> Job:
    job = Job("totals-with-profile")
    users = job.table(params["users"], key=STRING, value=JSON, uid="users")
    totals = (job.source(params["orders"], value=JSON, uid="orders")
              .key_by(lambda order: order["user"], uid="by-user")
              .aggregate(lambda total, order: total + order["amount"], initial=0, uid="sum")
              .to_table(uid="totals"))
    (totals.join(users, lambda total, user: {"sum": total, "version": user and user["version"]}, how="left",
                 uid="with-profile")
        .sink(params["output"], key=STRING, value=JSON, uid="out"))
    return job
