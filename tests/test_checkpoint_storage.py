"""The CheckpointStorage contract, run against the file back-end and against S3 (a real
moto server process reached over HTTP), plus S3 outage behaviour."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from statestore.storage import CheckpointStorage, FileStorage, ObjectNotFound, StorageError, open_storage
from statestore.storage import s3 as s3_module
from statestore.storage.s3 import S3Storage
from tests.harness.s3_server import S3Server, running_s3_server

OUTAGE_BOUND_S = 15.0


def _s3_storage(server: S3Server, prefix: str | None = None) -> S3Storage:
    prefix = prefix or f"run-{uuid.uuid4().hex[:10]}"
    return S3Storage(server.bucket, prefix, endpoint_url=server.endpoint, region="us-east-1",
                     access_key="testing", secret_key="testing")


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStorage:
    if request.param == "file":
        return FileStorage(tmp_path / "checkpoints")
    return _s3_storage(request.getfixturevalue("s3_server"))


def test_implements_protocol(storage: CheckpointStorage) -> None:
    assert isinstance(storage, CheckpointStorage)


def test_put_get_round_trip_and_overwrite(storage: CheckpointStorage) -> None:
    storage.put_bytes("snap/1/state.bin", b"\x00first")
    assert storage.get_bytes("snap/1/state.bin") == b"\x00first"
    assert storage.exists("snap/1/state.bin")
    storage.put_bytes("snap/1/state.bin", b"second")
    assert storage.get_bytes("snap/1/state.bin") == b"second"
    assert storage.size("snap/1/state.bin") == 6


def test_put_atomic(storage: CheckpointStorage) -> None:
    storage.put_atomic("manifests/00000001.json", b'{"id": 1}')
    assert storage.get_bytes("manifests/00000001.json") == b'{"id": 1}'
    storage.put_atomic("manifests/00000001.json", b"{}")
    assert storage.get_bytes("manifests/00000001.json") == b"{}"


def test_empty_object(storage: CheckpointStorage) -> None:
    storage.put_bytes("empty", b"")
    assert storage.get_bytes("empty") == b""
    assert storage.size("empty") == 0


def test_put_file_get_file(storage: CheckpointStorage, tmp_path: Path) -> None:
    source = tmp_path / "source.sst"
    payload = bytes(range(256)) * 4096  # 1 MiB
    source.write_bytes(payload)
    storage.put_file("snap/2/000001.sst", source)
    target = tmp_path / "restored.sst"
    storage.get_file("snap/2/000001.sst", target)
    assert target.read_bytes() == payload
    assert storage.size("snap/2/000001.sst") == len(payload)


def test_list_is_recursive_sorted_and_scoped(storage: CheckpointStorage) -> None:
    for key in ["b/2", "a/z/deep", "a/1", "ab/x", "top"]:
        storage.put_bytes(key, key.encode())
    assert storage.list("") == ["a/1", "a/z/deep", "ab/x", "b/2", "top"]
    assert storage.list("a") == ["a/1", "a/z/deep"]
    assert storage.list("a/") == ["a/1", "a/z/deep"]
    assert storage.list("a/z") == ["a/z/deep"]
    assert storage.list("missing") == []


def test_list_does_not_see_sibling_prefixes(s3_server: S3Server) -> None:
    base = f"run-{uuid.uuid4().hex[:10]}"
    inner, sibling = _s3_storage(s3_server, base), _s3_storage(s3_server, base + "-other")
    inner.put_bytes("k", b"1")
    sibling.put_bytes("k", b"2")
    assert inner.list("") == ["k"]
    assert inner.get_bytes("k") == b"1"


def test_list_paginates_and_delete_batches(s3_server: S3Server,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Small pages and batches so several round trips hit the real server quickly.
    monkeypatch.setattr(s3_module, "LIST_PAGE", 7)
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 7)
    storage = _s3_storage(s3_server)
    keys = [f"many/{i:03d}" for i in range(30)]
    for key in keys:
        storage.put_bytes(key, b"")
    calls: list[str] = []
    storage._client.meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.append(model.name))
    assert storage.list("many") == keys
    storage.delete(keys + ["many/absent"])
    assert calls.count("ListObjectsV2") == 5 and calls.count("DeleteObjects") == 5
    assert storage.list("") == []


def test_missing_object(storage: CheckpointStorage, tmp_path: Path) -> None:
    assert not storage.exists("nope/missing")
    where = storage.describe("nope/missing")
    for call in (lambda: storage.get_bytes("nope/missing"),
                 lambda: storage.get_file("nope/missing", tmp_path / "out"),
                 lambda: storage.size("nope/missing")):
        with pytest.raises(ObjectNotFound) as info:
            call()
        assert where in str(info.value)
    assert not (tmp_path / "out").exists()


def test_describe_names_location(storage: CheckpointStorage) -> None:
    where = storage.describe("snap/1/x")
    assert where.endswith("snap/1/x")
    if isinstance(storage, S3Storage):
        assert where == f"s3://{storage.bucket}/{storage.prefix}/snap/1/x"


def test_delete_present_and_absent(storage: CheckpointStorage) -> None:
    storage.put_bytes("d/1", b"1")
    storage.put_bytes("d/2", b"2")
    storage.put_bytes("keep", b"k")
    storage.delete(["d/1", "d/2", "d/never-existed"])
    storage.delete([])
    assert storage.list("") == ["keep"]
    assert not storage.exists("d/1")


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd"])
def test_keys_escaping_root_are_refused(storage: CheckpointStorage, key: str) -> None:
    with pytest.raises(StorageError):
        storage.put_bytes(key, b"x")
    with pytest.raises(StorageError):
        storage.get_bytes(key)
    with pytest.raises(StorageError):
        storage.delete([key])


def test_a_writer_finds_its_directory_again_after_another_process_removed_it(tmp_path: Path) -> None:
    """A file storage remembers the directories it made; another worker's retention
    removes a directory once it is empty, and the next write there still lands."""
    writer, other = FileStorage(tmp_path / "checkpoints"), FileStorage(tmp_path / "checkpoints")
    writer.put_bytes("job/tasks/t-0/shared/a.sst", b"a")
    other.delete(["job/tasks/t-0/shared/a.sst"])
    assert not (tmp_path / "checkpoints" / "job").exists()
    writer.put_bytes("job/tasks/t-0/shared/b.sst", b"b")
    assert other.get_bytes("job/tasks/t-0/shared/b.sst") == b"b"


def test_open_storage_reads_aws_environment(s3_server: S3Server,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"env-{uuid.uuid4().hex[:8]}"
    storage = open_storage(f"s3://{s3_server.bucket}/{prefix}/")
    assert isinstance(storage, S3Storage)
    assert storage.url == f"s3://{s3_server.bucket}/{prefix}"
    storage.put_atomic("m", b"ok")
    assert _s3_storage(s3_server, prefix).get_bytes("m") == b"ok"


def test_missing_bucket_is_storage_error_not_not_found(s3_server: S3Server) -> None:
    storage = S3Storage("no-such-bucket-eos", "p", endpoint_url=s3_server.endpoint,
                        region="us-east-1", access_key="testing", secret_key="testing")
    with pytest.raises(StorageError) as info:
        storage.get_bytes("k")
    assert not isinstance(info.value, ObjectNotFound)
    assert "no-such-bucket-eos" in str(info.value)


class _Bare404(BaseHTTPRequestHandler):
    """What a wrong endpoint (a web server, a proxy) says: 404 without an S3 error body."""

    def _answer(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_bare_404_from_a_non_s3_endpoint_is_not_a_missing_object() -> None:
    # Taking it for "no such checkpoint" would make a job silently start from scratch.
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Bare404)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        storage = S3Storage("b", "p", endpoint_url=f"http://127.0.0.1:{httpd.server_port}",
                            access_key="testing", secret_key="testing")
        for call in (lambda: storage.get_bytes("k"), lambda: storage.list("")):
            with pytest.raises(StorageError) as info:
                call()
            assert not isinstance(info.value, ObjectNotFound)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def private_s3_server() -> Iterator[S3Server]:
    """Its own process, so stopping it does not disturb the session server."""
    with running_s3_server() as server:
        yield server


def test_outage_fails_fast_and_recovers(private_s3_server: S3Server) -> None:
    storage = _s3_storage(private_s3_server)
    storage.put_atomic("before", b"1")

    private_s3_server.stop()
    for call in (lambda: storage.get_bytes("before"), lambda: storage.put_atomic("x", b"2"),
                 lambda: storage.list(""), lambda: storage.exists("before")):
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < OUTAGE_BOUND_S, f"took {elapsed:.1f}s to report the outage"
        assert not isinstance(info.value, ObjectNotFound)
        assert storage.url in str(info.value)

    private_s3_server.start()  # same port; moto lost its objects, the bucket is re-created
    storage.put_atomic("after", b"2")
    assert storage.get_bytes("after") == b"2"
    assert storage.list("") == ["after"]
