"""examples/running_sum_postgres.py with the sinks' timeouts from parameters, for fault
tests that must see a lock or an outage time out quickly: `-p lock_timeout_s=2`,
`-p recovery_timeout_s=30`, `-p batch_rows=100`."""

import sys
from pathlib import Path

from eos import Job, Params

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import running_sum_postgres  # noqa: E402

OPTIONS = {"lock_timeout_s": float, "recovery_timeout_s": float, "commit_timeout_s": float, "batch_rows": int}


def build(params: Params) -> Job:
    options = {name: kind(params[name]) for name, kind in OPTIONS.items() if name in params}
    return running_sum_postgres.build(params, **options)
