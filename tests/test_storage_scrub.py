"""A file damaged in checkpoint storage while the worker's local copy is intact.

The worker restores from its local copies, so without a check its next incremental
checkpoints would go on referencing the damaged file, and only another machine restoring
the task would notice. The scrub finds it, writes it again from the intact local copy and
counts it; `eos checkpoints verify` then passes, and a worker on a fresh machine restores
the task from storage alone and the oracle passes.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from statestore.digests import sha256_file
from statestore.storage import FileStorage
from tests.harness.checkpoint_history import TaskHistory
from tests.harness.ports import free_port
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import EOS, OUTSIDE_REPO, wait_for

pytestmark = [pytest.mark.kafka]


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _has_manifest_with_sst(checkpoints: Path) -> bool:
    """A manifest (written last) lists an SST file: the checkpoint exists whole."""
    return checkpoints.exists() and any(
        f["name"].endswith(".sst") for m in checkpoints.rglob("_manifest.json")
        for f in json.loads(m.read_text()).get("files", ()))


def _latest_manifest(checkpoints: Path) -> dict:
    manifests = sorted(checkpoints.rglob("_manifest.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(manifests[-1].read_text())


def _verify(storage: str, group: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EOS, "checkpoints", "verify", storage, "--job", group], cwd=OUTSIDE_REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_file_damaged_in_storage_is_written_again_from_the_intact_local_copy(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    checkpoints = tmp_path / "checkpoints"
    port = free_port()
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=["--storage-scrub-interval", "300ms", "--http-port", str(port)])
    wait_for(lambda: _has_manifest_with_sst(checkpoints) or not worker.alive(), 90, 0.5,
             "a checkpoint with an SST file")
    manifest = _latest_manifest(checkpoints)
    sst = next(f for f in manifest["files"] if f["name"].endswith(".sst"))
    damaged = checkpoints / scenario.group / "tasks" / manifest["task"] / sst["key"]
    damaged.write_bytes(bytes(b ^ 0xFF for b in damaged.read_bytes()))  # same size, every byte wrong

    wait_for(lambda: _metric(port, "eos_storage_scrub_files_mended_total") >= 1 or not worker.alive(), 120, 0.5,
             "the scrub to mend the damaged file")
    assert f"{damaged} of snapshot" in worker.log_text() and "written again from the intact local copy" in \
        worker.log_text(), worker.log_text()
    assert _metric(port, "eos_storage_scrub_files_damaged_total") >= 1
    scenario.wait_fed()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    verified = _verify(f"file://{checkpoints}", scenario.group)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    elsewhere = scenario.start_worker(state_dir=tmp_path / "another-machine")
    extra = {i + 100_000: o for i, o in list(scenario.orders.items())[:200]}
    for i, order in extra.items():
        order.id = i
    scenario.feed_all_now(extra)
    scenario.wait_complete(elsewhere, expected=set(scenario.orders) | set(extra))
    assert elsewhere.terminate() == 0, elsewhere.log_tail()
    assert "downloaded" in elsewhere.log_text()
    report = scenario.check({**scenario.orders, **extra})
    assert report.ok, report.summary()


def _stored_intact(storage: FileStorage, prefix: str, manifest) -> bool:
    return all(sha256_file(storage.root / f"{prefix}/{f.key}") == f.sha256 for f in manifest.files)


@pytest.mark.parametrize("local_copy", ["own snapshot", "another snapshot", None])
def test_the_next_checkpoint_never_references_a_file_the_scrub_found_damaged(tmp_path, local_copy):
    """With a local copy at hand the scrub mends the file at once: the snapshot's own, or
    another local snapshot's (a newer checkpoint may have replaced the one checked);
    without one, the file is marked and the next checkpoint uploads it again instead of
    reusing it."""
    storage = FileStorage(tmp_path / "storage")
    history = TaskHistory(storage, tmp_path / "state")
    history.checkpoint({f"user-{i}": {"sum": i} for i in range(2_000)})
    manifest = history.checkpoint({f"user-{i}": {"sum": -i} for i in range(20)})
    reused = [f for f in manifest.files if f.name.endswith(".sst")]
    for entry in reused:
        stored = storage.root / f"{history.prefix}/{entry.key}"
        stored.write_bytes(b"\0" * stored.stat().st_size)
    own = history.state.directory.snapshot_dir(manifest.snapshot)
    local = {"own snapshot": [own], None: []}.get(local_copy)
    if local_copy == "another snapshot":  # the checked snapshot's own copy pruned, a newer one holds the files
        local = [own, own.rename(own.with_name(own.name.replace("chk-", "chk-9", 1)))]
    result = history.state.scrub.round(manifest, local)
    assert len(result.damaged) == len(reused)
    if local_copy:
        assert len(result.mended) == len(reused) and _stored_intact(storage, history.prefix, manifest)
    else:
        assert result.mended == [] and history.state.persister.damaged == {f.key for f in reused}
    following = history.checkpoint({"user-1": {"sum": 1}})
    assert _stored_intact(storage, history.prefix, following)
    assert history.state.persister.damaged == set()
    history.close()
