"""JSON documents sealed with their own SHA-256: checkpoint and savepoint manifests.

A manifest is the one file that says a snapshot exists and which bytes make it up, so
a damaged one must never be read as a smaller, valid-looking snapshot. The digest covers
the canonical (sorted-key) form of every other field, so any change to any byte that
matters is caught, while the stored text stays indented for people who read it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

DIGEST_FIELD = "digest"


def seal(body: dict[str, Any]) -> bytes:
    sealed = {**body, DIGEST_FIELD: _digest(body)}
    return orjson.dumps(sealed, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def parse_object(data: bytes, what: str, error: type[Exception]) -> dict[str, Any]:
    """The document as a dict, or `error` saying `what` (e.g. "manifest X") is damaged."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc}); it is damaged") from None
    if not isinstance(body, dict):
        raise error(f"{what} is not a JSON object; it is damaged")
    return body


def check_seal(body: dict[str, Any], what: str, error: type[Exception]) -> None:
    """Removes the digest from `body` and raises `error` unless it matches the rest."""
    recorded = body.pop(DIGEST_FIELD, None)
    if recorded != _digest(body):
        raise error(f"{what} fails its digest check; it is damaged")


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
