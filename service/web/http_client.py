"""Calls to a worker's HTTP API from another worker or from the `eos` client: JSON in,
JSON out, a bearer token when there is one, and one error type for "could not reach it"."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any

import orjson


class PeerUnreachable(OSError):
    """No answer from a worker's HTTP port (refused, timed out, name unknown, cut off)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_DIRECT = urllib.request.build_opener(_NoRedirects)


def call_json(url: str, method: str = "GET", body: dict[str, Any] | None = None, *, token: str | None = None,
              timeout_s: float = 10.0, follow_redirects: bool = True) -> tuple[int, dict[str, Any]]:
    """(status, JSON object) of one request; HTTP errors (and, unless followed,
    redirects) are answers, not exceptions."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        opener = urllib.request.urlopen if follow_redirects else _DIRECT.open
        with opener(request, timeout=timeout_s) as response:
            return response.status, json_object(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json_object(exc.read())
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # HTTPException: the worker closed the connection mid-answer (it is stopping)
        raise PeerUnreachable(f"{url}: {getattr(exc, 'reason', exc)}") from None


def json_object(data: bytes) -> dict[str, Any]:
    """A JSON object from a body; anything else is wrapped so callers can always .get()."""
    try:
        value = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return {"text": data.decode(errors="replace").strip()}
    return value if isinstance(value, dict) else {"value": value}
