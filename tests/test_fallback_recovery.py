"""An SST file of the latest checkpoint deleted or corrupted in storage, on a machine
without local state: recovery refuses, or with --fallback-to-older-checkpoint restores
an older retained checkpoint, replays up to the committed offset without outputs, and
the oracle still passes over the whole input."""

from __future__ import annotations

import shutil

import pytest

from statestore.catalog import scan
from statestore.storage import FileStorage
from tests.harness.scenario import RunningSum

pytestmark = pytest.mark.kafka


def _damage_newest_sst_of_each_task(scenario: RunningSum, how: str) -> list[str]:
    """Damages, per stateful task, an SST only its newest snapshot lists (so the older
    ones stay intact). Returns the damaged files' paths."""
    storage = FileStorage(scenario.workdir / "checkpoints")
    damaged = []
    for catalog in scan(storage, scenario.group):
        newest = catalog.newest_complete
        if newest is None or not newest.manifest.lineage:
            continue
        older = {f.key for s in catalog.snapshots if s.manifest and s is not newest for f in s.manifest.files}
        unique = [f for f in newest.manifest.files if f.name.endswith(".sst") and f.key not in older]
        if not unique:
            continue
        key = f"{catalog.prefix}/{unique[0].key}"
        path = storage.root / key
        if how == "delete":
            path.unlink()
        else:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        damaged.append(str(path))
    return damaged


@pytest.mark.parametrize("how", ["delete", "corrupt"])
def test_damaged_latest_checkpoint_refuses_or_falls_back_and_the_oracle_passes(bootstrap, tmp_path, how):
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, users=100, chunk=300, chunk_pause_s=0.3)
    first = dict(list(scenario.orders.items())[:3_000])
    second = dict(list(scenario.orders.items())[3_000:])
    scenario.start_feeding(first)
    worker = scenario.start_worker()
    scenario.wait_fed()
    scenario.wait_complete(worker, expected=set(first))
    assert worker.terminate() == 0, worker.log_tail()

    damaged = _damage_newest_sst_of_each_task(scenario, how)
    assert len(damaged) >= 2, "the run left too few tasks with an older checkpoint to fall back to"
    shutil.rmtree(scenario.workdir / "state")  # a new machine: no intact local copies

    refused = scenario.start_worker()
    assert refused.wait(60) == 1, refused.log_tail()
    log = refused.log_tail(10)
    assert any(path in log for path in damaged), log
    assert ("is missing" if how == "delete" else "is corrupt") in log, log

    recovering = scenario.start_worker(extra_args=["--fallback-to-older-checkpoint"])
    scenario.feed_all_now(second)
    scenario.wait_complete(recovering)
    assert recovering.terminate() == 0, recovering.log_tail()
    log = recovering.log_path.read_text()
    assert log.count("falling back to an older checkpoint") >= len(damaged), log[-3000:]
    assert "without emitting outputs" in log and "caught up at offset" in log, log[-3000:]
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == len(scenario.orders)


def test_fallback_refuses_when_no_older_checkpoint_is_intact(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=1_000, users=50)
    scenario.feed_all_now()
    worker = scenario.start_worker(extra_args=["--checkpoints-retained", "1"])
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    storage = FileStorage(scenario.workdir / "checkpoints")
    catalog = next(c for c in scan(storage, scenario.group) if c.newest_complete is not None)
    newest = catalog.newest_complete
    assert not newest.manifest.lineage, "with one retained checkpoint there is nothing older"
    sst = next(f for f in newest.manifest.files if f.name.endswith(".sst"))
    (storage.root / catalog.prefix / sst.key).unlink()
    shutil.rmtree(scenario.workdir / "state")

    worker = scenario.start_worker(extra_args=["--fallback-to-older-checkpoint"])
    assert worker.wait(60) == 1, worker.log_tail()
    log = worker.log_tail(5)
    assert "no older checkpoint to fall back to" in log and catalog.task in log, log
