"""Baseline: orders per user per 10 s tumbling window in Quix Streams, final results
closed by the partition's stream time, exactly-once, RocksDB state (with its changelog,
Quix's default). Event time is the Kafka timestamp (Quix's default); the input is keyed
by user.

    python bench/quix_window_count.py --bootstrap HOST:PORT --input IN --output OUT --group G
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile

from quixstreams import Application

from quix_running_sum import parse_args

WINDOW_MS = 10_000


def main(argv=None) -> int:
    args = parse_args(argv)
    own_state_dir = args.state_dir is None
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="bench-quix-window-")
    try:
        app = Application(
            broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
            commit_interval=args.commit_interval, processing_guarantee="exactly-once", state_dir=state_dir,
            loglevel=args.loglevel,
            consumer_extra_config={"queued.min.messages": 200_000, "fetch.queue.backoff.ms": 10},
        )
        inp = app.topic(args.input, key_deserializer="bytes", value_deserializer="json")
        out = app.topic(args.output, key_serializer="bytes", value_serializer="json")
        sdf = app.dataframe(inp)
        # Windows close on the partition's stream time, as eos closes them on the task's
        # watermark (Quix's default, "key", waits for the same key's next record).
        sdf = sdf.tumbling_window(duration_ms=WINDOW_MS, grace_ms=0).count().final(closing_strategy="partition")
        sdf.to_topic(out)
        app.run()
    finally:
        if own_state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
