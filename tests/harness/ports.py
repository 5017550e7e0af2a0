"""Ports for the servers tests start: brokers, S3 servers, Prometheus, workers' HTTP.

A port asked of the kernel (bind to 0) comes from its ephemeral range, where the next
process asking, or any outgoing connection, may be handed it as soon as it is free again;
a test that stops a server and starts it on the same port would then find it taken by
another test process of a parallel run. So each test process hands out ports from a block
of its own below the ephemeral range, and only ports nothing is bound to.
`EOS_TEST_PORT_BLOCKS_FROM` moves a whole run to later blocks, so that two runs on one
machine (say, two checkouts tested at once) never hand out the same ports.
"""

from __future__ import annotations

import itertools
import os
import socket

_FIRST = 20_000
_BLOCK = 1_000
_BLOCKS = 12  # 20000-31999, below Linux's default ephemeral range (32768-60999)
_handed_out = itertools.count()


def _block_start() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # set by pytest-xdist: gw0, gw1, ...
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    index += int(os.environ.get("EOS_TEST_PORT_BLOCKS_FROM", "0"))
    return _FIRST + (index % _BLOCKS) * _BLOCK


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port of this test process's block that nothing is bound to on `host`."""
    start = _block_start()
    for _ in range(_BLOCK):
        port = start + next(_handed_out) % _BLOCK
        if _bindable(host, port):
            return port
    raise RuntimeError(f"every port of {start}-{start + _BLOCK - 1} is in use on {host}")
