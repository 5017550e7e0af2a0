"""Checkpoint storage back-ends behind one interface, chosen by URL scheme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from eos.errors import ConfigurationError
from statestore.storage.base import CheckpointStorage, ObjectNotFound, StorageError
from statestore.storage.file import FileStorage


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible store, from flags; anything left None falls back
    to the usual AWS environment variables and files. Holds no secret itself: keys
    come from the environment or from `credentials_file`, so a config can be logged."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    credentials_file: Path | None = None


def open_storage(url: str, s3: S3Settings | None = None) -> CheckpointStorage:
    """`file:///path` or a plain path; `s3://bucket/prefix` (endpoint, region and
    credentials from `s3`, else from the usual AWS environment variables)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else url
        if parsed.netloc and parsed.scheme == "file":
            raise ConfigurationError(
                f"checkpoint storage URL {url!r} has a host part; use file:///absolute/path")
        return FileStorage(path)
    if parsed.scheme == "s3":
        S3Storage = _s3_backend(url)
        s3 = s3 or S3Settings()
        return S3Storage.from_url(url, endpoint_url=s3.endpoint_url, region=s3.region,
                                  profile=s3.profile, credentials_file=s3.credentials_file)
    raise ConfigurationError(
        f"unsupported checkpoint storage URL {url!r}: use file:///path or s3://bucket/prefix")


def _s3_backend(url: str) -> type:
    """The S3 back-end, imported only for s3:// URLs: boto3 is an optional extra, so
    users of file:// storage never install it."""
    try:
        from statestore.storage.s3 import S3Storage
    except ImportError as exc:
        raise ConfigurationError(
            f"checkpoint storage {url!r} needs S3 support, which is not installed ({exc.name} is missing): "
            "pip install 'eos[s3]'") from None
    return S3Storage


__all__ = ["CheckpointStorage", "FileStorage", "ObjectNotFound", "S3Settings", "StorageError",
           "open_storage"]
