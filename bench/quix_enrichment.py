"""Baseline: orders enriched with their user's profile in Quix Streams: `join_asof`, its
stream-table join (each order meets the latest profile at or before its timestamp),
exactly-once, RocksDB state. Input and profiles keyed by user.

    .venv-bench-quix/bin/python bench/quix_enrichment.py --bootstrap localhost:39192 \
        --input ORDERS --profiles PROFILES --output OUT --group g1 [--commit-interval 1.0]
"""

from __future__ import annotations

import logging
import sys

from quixstreams import Application

from quix_running_sum import parse_args, run_app


def with_country(order: dict, profile: dict | None) -> dict:
    return {**order, "country": None if profile is None else profile["country"]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = argv.index("--profiles")
    profiles_topic = argv[at + 1]
    del argv[at:at + 2]

    def build(app: Application, inp, out) -> None:
        profiles = app.dataframe(app.topic(profiles_topic, key_deserializer="bytes", value_deserializer="json"))
        app.dataframe(inp).join_asof(profiles, how="left", on_merge=with_country).to_topic(out)

    run_app(parse_args(argv), build)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
