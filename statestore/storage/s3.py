"""Checkpoint storage on S3 or any S3-compatible object store: `s3://bucket/prefix`.

A single PUT (or a completed multipart upload) is atomic and durable on S3, so
`put_atomic` needs no temp-and-rename dance. Timeouts and retries are kept short on
purpose: a checkpoint against an unreachable store should fail in seconds and let the
job decide, not hang for the minutes botocore's defaults allow.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import boto3
import boto3.exceptions
import botocore.exceptions
from botocore.config import Config
from botocore.credentials import SharedCredentialProvider

from eos.errors import ConfigurationError
from statestore.storage.base import ObjectNotFound, StorageError, StoredObject

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
MAX_ATTEMPTS = 3
DELETE_BATCH = 1000  # the most keys one DeleteObjects request accepts
LIST_PAGE = 1000  # the most keys one ListObjectsV2 response returns
# GET answers a missing key with an S3 error body, so a bare 404 there means "not an S3
# endpoint" and must not pass for "no checkpoint". HEAD has no body: a 404 is all we get.
_GET_MISSING = frozenset({"NoSuchKey"})
_HEAD_MISSING = frozenset({"404", "NotFound", "NoSuchKey"})
_AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
               boto3.exceptions.Boto3Error)


def _error_code(exc: Exception) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _env(*names: str) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _read_credentials_file(path: Path, profile: str) -> tuple[str, str, str | None]:
    """Keys from a file in the AWS shared-credentials format, read with botocore's own
    parser. Named explicitly, it wins over AWS_* variables (botocore's chain would not)."""
    if not path.is_file():
        raise ConfigurationError(f"S3 credentials file {path} does not exist")
    try:
        credentials = SharedCredentialProvider(str(path), profile).load()
    except _AWS_ERRORS as exc:
        raise ConfigurationError(f"cannot read S3 credentials file {path}: {exc}") from None
    if credentials is None:
        raise ConfigurationError(
            f"S3 credentials file {path} has no [{profile}] section with aws_access_key_id "
            "and aws_secret_access_key")
    return credentials.access_key, credentials.secret_key, credentials.token


class S3Storage:
    """Objects live under `prefix/` in one bucket; keys are '/'-separated relative names."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, profile: str | None = None,
                 credentials_file: Path | str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        endpoint_url = endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        region = region or _env("AWS_REGION", "AWS_DEFAULT_REGION")
        if endpoint_url and not region:
            region = "us-east-1"  # most S3-compatible stores ignore it, but SigV4 needs one
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            # Virtual-host addressing needs DNS per bucket, which self-hosted stores lack.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        session_token = None
        if credentials_file is not None and access_key is None:
            access_key, secret_key, session_token = _read_credentials_file(
                Path(credentials_file), profile or "default")
            profile = None  # the profile named a section of that file, not of ~/.aws
        try:
            # A private session: the default one is shared and not thread-safe to create from.
            session = boto3.session.Session(aws_access_key_id=access_key,
                                            aws_secret_access_key=secret_key,
                                            aws_session_token=session_token,
                                            region_name=region, profile_name=profile)
            self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        except _AWS_ERRORS as exc:
            raise StorageError(f"cannot set up S3 client for {self.url}: {exc}") from exc
        log.debug("checkpoint storage %s (endpoint %s, region %s)", self.url,
                  endpoint_url or "AWS default", region or "AWS default")

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> S3Storage:
        """Builds from `s3://bucket/prefix`; kwargs (endpoint_url, region, access_key,
        secret_key, profile, credentials_file) override the AWS environment variables,
        e.g. from CLI flags."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigurationError(f"checkpoint storage URL {url!r} is not s3://bucket/prefix")
        return cls(parsed.netloc, parsed.path, **kwargs)

    def _key(self, key: str) -> str:
        # '..' would escape the prefix; '' and '.' segments are legal on S3 but would name
        # a different object than the file back-end's normalised path does.
        if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
            raise StorageError(
                f"key {key!r} is not a relative key inside checkpoint storage {self.url}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, action: str, key: str, exc: Exception,
              missing: frozenset[str] = frozenset()) -> StorageError:
        where = self.describe(key) if key else self.url
        code = _error_code(exc)
        if code in missing:
            return ObjectNotFound(f"{where} does not exist")
        if code == "NoSuchBucket":
            return StorageError(f"cannot {action} {where}: bucket {self.bucket!r} does not exist")
        return StorageError(f"cannot {action} {where}: {type(exc).__name__}: {exc}")

    def put_file(self, key: str, source: Path) -> None:
        # upload_file switches to multipart for large snapshot files; completion is atomic.
        full = self._key(key)
        try:
            self._client.upload_file(str(source), self.bucket, full)
        except (*_AWS_ERRORS, OSError) as exc:
            raise self._fail("write", key, exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_atomic(key, data)

    def put_atomic(self, key: str, data: bytes) -> None:
        full = self._key(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except _AWS_ERRORS as exc:
            raise self._fail("write", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read()
        except _AWS_ERRORS as exc:
            raise self._fail("read", key, exc, _GET_MISSING) from exc

    def get_file(self, key: str, target: Path) -> None:
        # download_file writes a temp file and renames it, so a failure leaves no partial target.
        full = self._key(key)
        try:
            self._client.download_file(self.bucket, full, str(target))
        except (*_AWS_ERRORS, OSError) as exc:
            raise self._fail("read", key, exc, _HEAD_MISSING) from exc

    def _head(self, key: str) -> dict:
        full = self._key(key)
        try:
            return self._client.head_object(Bucket=self.bucket, Key=full)
        except _AWS_ERRORS as exc:
            raise self._fail("inspect", key, exc, _HEAD_MISSING) from exc

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def list(self, prefix: str) -> list[str]:
        return [entry.key for entry in self.list_entries(prefix)]

    def list_entries(self, prefix: str) -> list[StoredObject]:
        # Directory semantics like the file back-end: "a" lists "a/x" but not "ab/x".
        rel = prefix.rstrip("/")
        root = f"{self.prefix}/" if self.prefix else ""
        base = f"{self._key(rel)}/" if rel else root
        entries: list[StoredObject] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, PaginationConfig={"PageSize": LIST_PAGE})
            for page in pages:
                entries.extend(
                    StoredObject(obj["Key"][len(root):], int(obj["Size"]),
                                 obj["LastModified"].timestamp())
                    for obj in page.get("Contents", []))
        except _AWS_ERRORS as exc:
            raise self._fail("list", rel, exc) from exc
        return sorted(entries, key=lambda e: e.key)

    def list_unfinished(self, prefix: str) -> list[StoredObject]:
        return [StoredObject(key, 0, initiated) for key, _, initiated in self._multipart_uploads(prefix)]

    def discard_unfinished(self, prefix: str) -> int:
        uploads = self._multipart_uploads(prefix)
        for key, upload_id, _ in uploads:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
            except _AWS_ERRORS as exc:
                raise self._fail("abort an unfinished upload to", key, exc) from exc
        return len(uploads)

    def _multipart_uploads(self, prefix: str) -> list[tuple[str, str, float]]:
        """(key, upload id, initiated) of every multipart upload under `prefix` that was
        begun and neither completed nor aborted: a process died while uploading."""
        rel = prefix.rstrip("/")
        root = f"{self.prefix}/" if self.prefix else ""
        base = f"{self._key(rel)}/" if rel else root
        found = []
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                found.extend((upload["Key"][len(root):], upload["UploadId"], upload["Initiated"].timestamp())
                             for upload in page.get("Uploads", []))
        except _AWS_ERRORS as exc:
            raise self._fail("list unfinished uploads in", rel, exc) from exc
        return found

    def delete(self, keys: list[str]) -> None:
        full = [self._key(key) for key in keys]
        for start in range(0, len(full), DELETE_BATCH):
            batch = full[start:start + DELETE_BATCH]
            try:
                response = self._client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in batch], "Quiet": True})
            except _AWS_ERRORS as exc:
                raise self._fail("delete from", "", exc) from exc
            # S3 reports absent keys as deleted; anything listed here really failed.
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {len(errors)} object(s) from {self.url}, e.g. "
                    f"s3://{self.bucket}/{first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}")
