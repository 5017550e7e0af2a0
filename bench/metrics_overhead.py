"""Plugin for bench/runner.py: the cost of monitoring.

`eos-exactly-once` and `eos-exactly-once-prekeyed` run without `--http-port` (no HTTP
server, no librdkafka statistics); the `-monitored` twins run with it and are scraped
(/metrics and the status page) every second for the whole run.

    .venv/bin/python bench/runner.py --plugin bench/metrics_overhead.py \\
        --only eos-exactly-once,eos-exactly-once-monitored --records 300000 --users 10000 --reps 5
"""

import socket


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The runner's own registry (this file runs with the runner's `register` in its globals).
_REGISTRY = register.__globals__["REGISTRY"]  # noqa: F821


def _monitored(base: str):
    plain = _REGISTRY[base].build

    def build(ctx):
        port = _free_port()
        return [MAIN_PY, str(BENCH_DIR / "scraped.py"), "--port", str(port), "--every", "1", "--",  # noqa: F821
                *plain(ctx), "--http-port", str(port)]

    return build


for _base in ("eos-exactly-once", "eos-exactly-once-prekeyed"):
    register(f"{_base}-monitored", _monitored(_base),  # noqa: F821 - the runner provides register
             description=f"{_base} with --http-port, /metrics and / scraped every second")
