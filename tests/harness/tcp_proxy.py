"""A small TCP proxy in front of a server, to make it unreachable (or slow) on demand
without touching the server itself.

moto keeps its objects in memory, so stopping it to simulate an outage would also
lose every checkpoint. Instead clients talk to this proxy: `cut()` closes the listening
socket and every open connection (clients see connection refused / reset, as with a
store that went away), `restore()` listens again on the same port, and the server's
state is intact. `latency_s` delays the first chunk of every burst sent towards the
server, about one round trip per request: a local store made to behave like a remote one.
It may be changed while connections are open.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from tests.harness.ports import free_port

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
_BURST_GAP_S = 0.002  # a quieter gap than this starts a new request


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1",
                 port: int | None = None, latency_s: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.latency_s = latency_s
        self.port = port or free_port(host)  # restore() listens on it again
        self._listener = self._listen(self.port)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._accepting: threading.Thread | None = None
        self._start_accepting()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def reachable(self) -> bool:
        return self._listener is not None

    def cut(self) -> None:
        """Unreachable from now on: nothing listens, every connection is closed."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._accepting is not None:
            self._accepting.join(5)
        with self._lock:
            doomed, self._open = self._open, set()
        for sock in doomed:
            _close(sock)
        log.info("proxy %s cut off from %s:%d", self.endpoint, *self.target)

    def restore(self) -> None:
        """Reachable again, on the same port."""
        if self._listener is None:
            self._listener = self._listen(self.port)
            self._start_accepting()
            log.info("proxy %s reaches %s:%d again", self.endpoint, *self.target)

    def close(self) -> None:
        self.cut()

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(64)
        listener.settimeout(0.2)
        return listener

    def _start_accepting(self) -> None:
        listener = self._listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, delayed: bool) -> None:
        last = 0.0
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                delay = self.latency_s if delayed else 0.0
                if delay and time.monotonic() - last > _BURST_GAP_S:
                    time.sleep(delay)
                sink.sendall(data)
                last = time.monotonic()
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self._lock:
                    self._open.discard(sock)
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
