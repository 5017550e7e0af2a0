"""Request routing and the access rule for control endpoints.

Reading endpoints (status page, metrics, health) answer anyone who can reach the
port. Control endpoints (those that change what the worker does, such as triggering a
savepoint or stopping) answer local callers only, unless the operator configured both
the networks remote callers may come from and a token they must present:

    --control-allow 10.0.0.0/8 --control-token "$SECRET"
    curl -X POST -H "Authorization: Bearer $SECRET" http://worker:8080/...

A handler is registered once with `Router.add(method, path, handler, control=...)`;
the router answers unknown paths (404), wrong methods (405) and refused callers (403)
itself, so a handler only ever sees requests it may serve.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from eos.errors import ConfigurationError


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    client_ip: str
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def text(status: int, text: str) -> "Response":
        return Response(status, (text.rstrip("\n") + "\n").encode())

    @staticmethod
    def json(status: int, value: object) -> "Response":
        return Response(status, json.dumps(value, indent=2).encode() + b"\n", "application/json")


Handler = Callable[[Request], Response]


def is_local(client_ip: str) -> bool:
    """Loopback callers, including IPv4 loopback seen through an IPv6 socket."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class ControlAccess:
    """Who may call control endpoints: local callers always; remote callers only from
    `allowed_networks` and with the bearer `token`, and only when both are configured."""

    def __init__(self, token: str | None = None, allowed_networks: Iterable[str] = ()) -> None:
        networks = list(allowed_networks)
        if bool(token) != bool(networks):
            raise ConfigurationError(
                "remote control needs both --control-allow (the callers' networks) and --control-token; "
                f"got {'a token without networks' if token else 'networks without a token'}")
        try:
            self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        except ValueError as exc:
            raise ConfigurationError(f"--control-allow: {exc}") from None
        self._token = token.encode() if token else None

    @property
    def remote_enabled(self) -> bool:
        return self._token is not None

    def refusal(self, client_ip: str, authorization: str | None) -> str | None:
        """None when the caller may proceed, else why not (safe to show the caller)."""
        if is_local(client_ip):
            return None
        if self._token is None:
            return (f"control endpoints answer local callers only ({client_ip} is not local); "
                    "configure --control-allow and --control-token for remote control")
        try:
            address = ipaddress.ip_address(client_ip.split("%", 1)[0])
        except ValueError:
            return f"unrecognised caller address {client_ip!r}"
        address = getattr(address, "ipv4_mapped", None) or address
        if not any(address in network for network in self.networks):
            return f"{client_ip} is not in the networks allowed to control this worker"
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
            return "missing or wrong bearer token"
        return None


@dataclass(frozen=True)
class _Route:
    handler: Handler
    control: bool


class Router:
    def __init__(self, access: ControlAccess | None = None) -> None:
        self.access = access or ControlAccess()
        self._routes: dict[str, dict[str, _Route]] = {}
        self._prefixes: list[tuple[str, dict[str, _Route]]] = []

    def add(self, method: str, path: str, handler: Handler, *, control: bool = False) -> None:
        methods = self._routes.setdefault(path, {})
        if method.upper() in methods:
            raise ValueError(f"{method.upper()} {path} is already routed")
        methods[method.upper()] = _Route(handler, control)

    def add_prefix(self, method: str, prefix: str, handler: Handler, *, control: bool = False) -> None:
        """Routes every path under `prefix` (e.g. `/state/`) to `handler`."""
        methods = next((m for p, m in self._prefixes if p == prefix), None)
        if methods is None:
            methods = {}
            self._prefixes.append((prefix, methods))
        if method.upper() in methods:
            raise ValueError(f"{method.upper()} {prefix}* is already routed")
        methods[method.upper()] = _Route(handler, control)

    def handle(self, request: Request) -> Response:
        methods = self._routes.get(request.path)
        if methods is None:
            methods = next((m for p, m in self._prefixes if request.path.startswith(p)), None)
        if methods is None:
            return Response.text(404, f"no such page: {request.path}")
        method = "GET" if request.method == "HEAD" else request.method
        route = methods.get(method)
        if route is None:
            allowed = ", ".join(sorted(methods))
            return Response(405, f"{request.method} is not allowed on {request.path}; use {allowed}\n".encode(),
                            headers={"Allow": allowed})
        if route.control:
            refusal = self.access.refusal(request.client_ip, request.headers.get("authorization"))
            if refusal is not None:
                return Response.text(403, refusal)
        return route.handler(request)
