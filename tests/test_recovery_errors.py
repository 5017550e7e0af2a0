"""A snapshot that the committed offsets reference but that cannot be restored is a
loud error, never a silent start with empty state."""

from __future__ import annotations

import shutil

import pytest

from tests.harness.scenario import RunningSum

pytestmark = pytest.mark.kafka


def _run_to_completion(scenario: RunningSum) -> None:
    scenario.feed_all_now()
    worker = scenario.start_worker()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()


def _latest_manifests(scenario: RunningSum) -> list:
    root = scenario.workdir / "checkpoints"
    manifests = sorted(root.rglob("_manifest.json"))
    assert manifests, "no checkpoint was written"
    by_task: dict = {}
    for manifest in manifests:
        by_task[manifest.parent.parent] = manifest  # sorted: the newest id wins
    return list(by_task.values())


def test_missing_manifest_refuses_to_start(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=2_000)
    _run_to_completion(scenario)
    victim = _latest_manifests(scenario)[0]
    victim.unlink()

    worker = scenario.start_worker()
    assert worker.wait(60) == 1, worker.log_tail()
    log = worker.log_tail(5)
    assert str(victim) in log and "does not exist" in log and "empty state" in log, log


def test_corrupt_snapshot_file_refuses_to_start_on_a_new_machine(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=2_000)
    _run_to_completion(scenario)
    manifest_path = _latest_manifests(scenario)[0]
    import json

    manifest = json.loads(manifest_path.read_text())
    sst = next(f for f in manifest["files"] if f["name"].endswith(".sst"))
    stored = manifest_path.parent.parent / sst["key"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    shutil.rmtree(scenario.workdir / "state")  # a new machine: no intact local copy

    worker = scenario.start_worker()
    assert worker.wait(60) == 1, worker.log_tail()
    log = worker.log_tail(5)
    assert str(stored) in log and "is corrupt" in log, log


def test_intact_local_copy_is_reused_instead_of_downloading(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=2_000)
    _run_to_completion(scenario)
    worker = scenario.start_worker()
    from tests.harness.worker_process import wait_for

    wait_for(lambda: "from checkpoint" in worker.log_tail(100) or not worker.alive(), 60, what="restore")
    assert worker.terminate() == 0
    restored = [line for line in worker.log_tail(200).splitlines() if "from checkpoint" in line]
    assert restored and all("0 downloaded" in line for line in restored), restored
