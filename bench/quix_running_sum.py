"""Baseline: the running-sum-per-user job in Quix Streams (exactly-once, RocksDB state).

Runs in its own virtualenv (Quix pins confluent-kafka<2.13), see requirements-quix.txt;
bench/runner.py creates .venv-bench-quix on demand when run outside .venv-bench.

    .venv-bench-quix/bin/python bench/quix_running_sum.py --bootstrap localhost:39192 \
        --input IN --output OUT --group g1 [--commit-interval 1.0] [--state-dir DIR] [--expect N]

State is Quix's default RocksDB store (with its changelog topic, Quix's default), keyed by
the message key (the input is keyed by user).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile

from quixstreams import Application, State


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True, help="consumer group; use a unique one per run")
    ap.add_argument("--commit-interval", type=float, default=1.0)
    ap.add_argument("--state-dir", default=None, help="default: a fresh temp dir, removed on a clean exit")
    ap.add_argument("--expect", type=int, default=0, help="stop after this many outputs (Quix's run(count=N)); 0 = forever")
    ap.add_argument("--loglevel", default="WARNING")
    return ap.parse_args(argv)


def running_sum(value: dict, state: State) -> dict:
    # State is scoped to the current message key (the user), so one entry per user.
    agg = state.get("agg")
    if agg is None:
        agg = [0, 0]
    agg[0] += value["amount"]
    agg[1] += 1
    state.set("agg", agg)
    return {"user": value["user"], "sum": agg[0], "count": agg[1], "last_id": value["id"]}


def run_app(args: argparse.Namespace, build) -> None:
    """Runs a Quix application with the benchmark's settings; `build(app, input, output)`
    adds its dataframe."""
    own_state_dir = args.state_dir is None
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="bench-quix-state-")
    try:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            commit_interval=args.commit_interval,
            processing_guarantee="exactly-once",
            state_dir=state_dir,
            loglevel=args.loglevel,
            # Same consumer fetch-queue tuning as the plain loop (librdkafka's default 1000 ms
            # backoff on a full local queue); it does not change Quix's processing.
            consumer_extra_config={"queued.min.messages": 200_000, "fetch.queue.backoff.ms": 10},
        )
        inp = app.topic(args.input, key_deserializer="bytes", value_deserializer="json")
        out = app.topic(args.output, key_serializer="bytes", value_serializer="json")
        build(app, inp, out)
        if args.expect:
            app.run(count=args.expect, collect=False)
        else:
            app.run()
    finally:
        if own_state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)


def main(argv=None) -> int:
    def build(app: Application, inp, out) -> None:
        app.dataframe(inp).apply(running_sum, stateful=True).to_topic(out)  # keeps the message key (the user)

    run_app(parse_args(argv), build)
    return 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
