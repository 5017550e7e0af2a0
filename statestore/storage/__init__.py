"""Checkpoint storage back-ends behind one interface, chosen by URL scheme."""

from __future__ import annotations

from urllib.parse import urlparse

from service.errors import ConfigurationError
from statestore.storage.base import CheckpointStorage, ObjectNotFound, StorageError
from statestore.storage.file import FileStorage


def open_storage(url: str) -> CheckpointStorage:
    """`file:///path` or a plain path; `s3://bucket/prefix` (endpoint and credentials
    from the usual AWS environment variables)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else url
        if parsed.netloc and parsed.scheme == "file":
            raise ConfigurationError(
                f"checkpoint storage URL {url!r} has a host part; use file:///absolute/path")
        return FileStorage(path)
    if parsed.scheme == "s3":
        from statestore.storage.s3 import S3Storage

        return S3Storage.from_url(url)
    raise ConfigurationError(
        f"unsupported checkpoint storage URL {url!r}: use file:///path or s3://bucket/prefix")


__all__ = ["CheckpointStorage", "FileStorage", "ObjectNotFound", "StorageError", "open_storage"]
