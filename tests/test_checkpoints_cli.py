"""`eos checkpoints list|show|verify` over real checkpoint histories, on the file
back-end and on a real S3-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from eos.errors import EosError
from service.cli import cli
from statestore.storage import FileStorage, S3Settings, open_storage
from tests.harness.checkpoint_history import TaskHistory, write_history
from tests.harness.s3_server import S3Server
from tests.harness.worker_process import EOS, OUTSIDE_REPO


@pytest.fixture(params=["file", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'checkpoints'}"
    server: S3Server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{server.bucket}/cli-{uuid.uuid4().hex[:8]}"


def _eos(*args: str) -> tuple[int, str]:
    """Runs the command in-process; product errors end as `eos` itself ends them."""
    result = CliRunner().invoke(cli, list(args))
    if isinstance(result.exception, EosError):
        return 1, result.output + f"error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _history(url: str, tmp_path: Path, **kwargs: object) -> TaskHistory:
    return write_history(open_storage(url), tmp_path / "state", **kwargs)


def _stored_path(url: str, history: TaskHistory, key: str) -> str:
    return open_storage(url).describe(f"{history.prefix}/{key}")


def test_list_shows_ids_offsets_keys_and_full_versus_uploaded_sizes(storage_url, tmp_path):
    history = _history(storage_url, tmp_path, checkpoints=4, keys=2000, changed=20, retain=3)
    code, out = _eos("checkpoints", "list", storage_url, "--job", "job", "--json")
    assert code == 0, out
    [task] = json.loads(out)
    assert task["task"] == "orders-0"
    listed = task["snapshots"]
    assert [s["checkpoint_id"] for s in listed] == [2, 3, 4], "retention keeps the newest 3"
    for entry, manifest in zip(listed, history.manifests[1:]):
        assert entry["status"] == "complete" and entry["retained"]
        assert entry["source_offset"] == manifest.source_offset
        assert entry["total_bytes"] == manifest.total_bytes
        assert entry["uploaded_bytes"] == manifest.uploaded_bytes
        assert entry["state_keys"] == manifest.state_keys and manifest.state_keys["totals:acc"] >= 2000
    assert listed[0]["uploaded_bytes"] < listed[0]["total_bytes"] / 2, "incremental: the big SST is shared"
    assert listed[-1]["lineage"] == [history.manifests[2].snapshot, history.manifests[1].snapshot]

    code, table = _eos("checkpoints", "list", storage_url)
    assert code == 0, table
    assert "job job  task orders-0" in table
    assert history.manifests[-1].snapshot in table and "complete (retained)" in table


def test_list_marks_partial_and_damaged_snapshots(storage_url, tmp_path):
    history = _history(storage_url, tmp_path, checkpoints=2)
    storage = open_storage(storage_url)
    storage.put_bytes(f"{history.prefix}/chk-0000000003-bbbb0002/MANIFEST-000009", b"half an attempt")
    damaged = f"{history.prefix}/{history.manifests[0].snapshot}/_manifest.json"
    storage.put_atomic(damaged, storage.get_bytes(damaged)[:-40])

    code, out = _eos("checkpoints", "list", storage_url, "--json")
    assert code == 0, out
    by_name = {s["snapshot"]: s for s in json.loads(out)[0]["snapshots"]}
    assert by_name["chk-0000000003-bbbb0002"]["status"] == "partial"
    assert by_name[history.manifests[0].snapshot]["status"] == "damaged"
    assert "damaged" in by_name[history.manifests[0].snapshot]["problem"]
    assert by_name[history.manifests[1].snapshot]["status"] == "complete"


def test_show_prints_the_manifest_and_flags_missing_files(storage_url, tmp_path):
    history = _history(storage_url, tmp_path, checkpoints=3)
    latest = history.manifests[-1]
    victim = next(f for f in latest.files if f.name.startswith("MANIFEST"))
    open_storage(storage_url).delete([f"{history.prefix}/{victim.key}"])

    code, out = _eos("checkpoints", "show", storage_url, "--job", "job", "--checkpoint", "3")
    assert code == 0, out
    assert f"snapshot {latest.snapshot}" in out
    assert f"source offset {latest.source_offset}" in out
    assert f"lineage: {history.manifests[1].snapshot}, {history.manifests[0].snapshot}" in out
    victim_line = next(line for line in out.splitlines() if victim.key in line)
    assert victim_line.rstrip().endswith("MISSING"), victim_line
    assert sum(line.rstrip().endswith("stored") for line in out.splitlines()) == len(latest.files) - 1

    code, out = _eos("checkpoints", "show", storage_url, "--checkpoint", "99")
    assert code == 1 and "no checkpoint 99" in out


def test_verify_passes_on_intact_checkpoints(storage_url, tmp_path):
    history = _history(storage_url, tmp_path, checkpoints=3)
    code, out = _eos("checkpoints", "verify", storage_url)
    assert code == 0, out
    distinct = {f.key for m in history.manifests for f in m.files}
    assert f"checked 3 snapshots, {len(distinct)} files" in out and "all intact" in out


def test_verify_names_corrupt_and_missing_files_and_exits_nonzero(storage_url, tmp_path):
    history = _history(storage_url, tmp_path, checkpoints=3)
    storage = open_storage(storage_url)
    latest, first = history.manifests[-1], history.manifests[0]
    shared = next(f for f in first.files if f.name.endswith(".sst") and f in latest.files)
    data = bytearray(storage.get_bytes(f"{history.prefix}/{shared.key}"))
    data[len(data) // 2] ^= 0xFF
    storage.put_bytes(f"{history.prefix}/{shared.key}", bytes(data))
    earlier = {f.key for m in history.manifests[:-1] for f in m.files}
    own = next(f for f in latest.files if f.key not in earlier)
    storage.delete([f"{history.prefix}/{own.key}"])

    code, out = _eos("checkpoints", "verify", storage_url, "--job", "job")
    assert code == 1, out
    corrupt_line = next(line for line in out.splitlines() if _stored_path(storage_url, history, shared.key) in line)
    assert corrupt_line.startswith("BAD FILE") and "sha256" in corrupt_line
    assert all(m.snapshot in corrupt_line for m in history.manifests), "every user of the shared file is named"
    missing_line = next(line for line in out.splitlines() if _stored_path(storage_url, history, own.key) in line)
    assert "missing" in missing_line
    assert "2 bad files" in out

    code, out = _eos("checkpoints", "verify", storage_url, "--checkpoint", str(first.checkpoint_id))
    assert code == 1 and own.key not in out, "only the chosen checkpoint's files are checked"


def test_verify_reports_a_damaged_manifest(tmp_path):
    url = f"file://{tmp_path / 'checkpoints'}"
    history = _history(url, tmp_path, checkpoints=2)
    storage = FileStorage(tmp_path / "checkpoints")
    key = f"{history.prefix}/{history.manifests[-1].snapshot}/_manifest.json"
    storage.put_atomic(key, storage.get_bytes(key).replace(b'"source_offset"', b'"source_0ffset"'))
    code, out = _eos("checkpoints", "verify", url)
    assert code == 1
    assert f"DAMAGED MANIFEST {storage.describe(key)}" in out and "digest" in out


def test_empty_storage_is_a_clear_error(tmp_path):
    code, out = _eos("checkpoints", "list", f"file://{tmp_path}", "--job", "nothing-here")
    assert code == 1 and "no checkpoints found" in out and "nothing-here" in out


def test_credentials_file_wins_over_the_environment_and_never_reaches_the_logs(s3_server, tmp_path):
    secret = f"secret-{uuid.uuid4().hex}"
    key_id = f"AKIDFILE{uuid.uuid4().hex[:8].upper()}"
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[ci]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    prefix = f"cred-{uuid.uuid4().hex[:8]}"
    storage = open_storage(f"s3://{s3_server.bucket}/{prefix}",
                           S3Settings(endpoint_url=s3_server.endpoint, region="us-east-1",
                                      profile="ci", credentials_file=credentials))
    signed_with: list[str] = []
    storage._client.meta.events.register(
        "before-send.s3.*", lambda request, **_: signed_with.append(request.headers["Authorization"].decode()))
    write_history(storage, tmp_path / "state", checkpoints=1, keys=10)
    assert signed_with and all(f"Credential={key_id}/" in auth for auth in signed_with)

    env = {**os.environ, **s3_server.env(), "AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "envsecret"}
    result = subprocess.run(
        [*EOS, "--log-level", "DEBUG", "checkpoints", "list",
         f"s3://{s3_server.bucket}/{prefix}", "--s3-credentials-file", str(credentials),
         "--s3-profile", "ci"], cwd=OUTSIDE_REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "orders-0" in result.stdout
    for text in (result.stdout, result.stderr):
        assert secret not in text and key_id not in text


def test_missing_profile_in_credentials_file_is_a_configuration_error(s3_server, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text("[other]\naws_access_key_id = a\naws_secret_access_key = b\n")
    code, out = _eos("checkpoints", "list", f"s3://{s3_server.bucket}/x", "--s3-credentials-file",
                     str(credentials), "--s3-profile", "ci", "--s3-endpoint-url", s3_server.endpoint)
    assert code == 1 and "has no [ci] section" in out
