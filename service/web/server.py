"""A small threaded HTTP server in a daemon thread, answering through a `Router`.

Each request runs on its own short-lived thread; handlers read only published
snapshots and the metrics registry, so serving never blocks the worker's loop.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from eos.errors import ConfigurationError
from service.web.routing import Request, Response, Router

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    server_version = "eos"
    protocol_version = "HTTP/1.1"
    router: Router  # set on the per-server subclass

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self, send_body: bool = True) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._send(Response.text(413 if length > 0 else 400, "request body missing a valid length or too large"),
                       send_body)
            return
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        request = Request(self.command, url.path or "/", url.query, self.client_address[0],
                          {k.lower(): v for k, v in self.headers.items()}, body)
        try:
            response = self.router.handle(request)
        except Exception:  # noqa: BLE001 - a failing page must not take the server down
            log.exception("serving %s %s", self.command, self.path)
            response = Response.text(500, "internal error; see the worker's log")
        self._send(response, send_body)

    def _send(self, response: Response, send_body: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


class HttpServer:
    def __init__(self, host: str, port: int, router: Router) -> None:
        handler = type("RoutedHandler", (_Handler,), {"router": router})
        server_class = ThreadingHTTPServer
        if ":" in host:
            server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        try:
            self._server = server_class((host, port), handler)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve HTTP on {host}:{port} (--http-host/--http-port): "
                                     f"{exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return self._server.server_address[0]

    def url(self, path: str = "/") -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{path}"

    def start(self) -> "HttpServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="eos-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()
