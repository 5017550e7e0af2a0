"""Two tables joined (outer): a change on either side updates the key's result, and a
result that disappears is written as a tombstone.

Input `-p left=TOPIC`, `-p right=TOPIC`: key = k, JSON {"v": int} or a tombstone.
Output `-p output=TOPIC`: key = k, {"left": v or None, "right": v or None}.
"""

from eos import JSON, STRING, Job, Params


def build(params: Params) -> Job:
    job = Job("table-join")
    left = job.table(params["left"], key=STRING, value=JSON, uid="left")
    right = job.table(params["right"], key=STRING, value=JSON, uid="right")
    (left.join(right, lambda a, b: {"left": None if a is None else a["v"], "right": None if b is None else b["v"]},
               how="outer", uid="joined")
        .sink(params["output"], key=STRING, value=JSON, uid="joined-out"))
    return job
