"""Baseline: orders per user per 10 s tumbling window in Quix Streams, final results
closed by the partition's stream time, exactly-once, RocksDB state (with its changelog,
Quix's default). Event time is the Kafka timestamp (Quix's default); the input is keyed
by user.

    python bench/quix_window_count.py --bootstrap HOST:PORT --input IN --output OUT --group G
"""

from __future__ import annotations

import logging
import sys

from quixstreams import Application

from quix_running_sum import parse_args, run_app

WINDOW_MS = 10_000


def main(argv=None) -> int:
    def build(app: Application, inp, out) -> None:
        # Windows close on the partition's stream time, as eos closes them on the task's
        # watermark (Quix's default, "key", waits for the same key's next record).
        (app.dataframe(inp).tumbling_window(duration_ms=WINDOW_MS, grace_ms=0).count()
            .final(closing_strategy="partition").to_topic(out))

    run_app(parse_args(argv), build)
    return 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
