"""State that time alone changes is checkpointed: a task that read nothing since its
last checkpoint is in the next one when its timers fired (or its windows or join
buffers expired), so their outputs commit and a restart does not repeat them."""

from __future__ import annotations

import json

import pytest

from tests.harness.kafka import produce
from tests.harness.worker_process import wait_for
from tests.harness.join_run import JoinRun

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_a_processing_time_timer_that_fires_while_the_input_is_quiet_is_committed_once(bootstrap, tmp_path):
    """The timers fire after the last record: the state they change (and their outputs)
    go into the next checkpoint although the task read nothing since, and a restart
    does not fire them again."""
    run = JoinRun(bootstrap, tmp_path, "reminders.py", ["input"])
    keys = [f"k{i}" for i in range(60)]
    produce(bootstrap, run.topics["input"], [(k.encode(), json.dumps({"id": i}).encode()) for i, k in enumerate(keys)])
    worker = run.start_worker()
    wait_for(lambda: len(run.outputs()) >= len(keys), 60, 0.5, "every reminder committed")
    worker.kill()
    run.finish(lambda outputs: True, "a restarted worker")
    assert sorted(json.loads(v)["key"] for _, v in run.outputs()) == sorted(keys)
