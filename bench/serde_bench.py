"""Per-record cost of each serde's hot path, against JSON in the same run.

What a task calls per record: the bound serde's fast callable (deserialise a source's
value, serialise a sink's), one argument, as service/runtime/task.py and operators.py
call them. The schema-registry serdes run confluent-kafka's serializers against a real
registry (Apicurio Registry, started here as the tests start it); their schemas are
fetched once and cached, so the registry is not on the measured path. JSON is the
baseline: binding returns it unchanged, so its cost is what it was before binding.

    .venv/bin/python bench/serde_bench.py            # writes docs/bench/serdes.json
    .venv/bin/python bench/serde_bench.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from connectors.serdes import JSON, VALUE_FIELD  # noqa: E402
from eos import SchemaRegistry  # noqa: E402
from tests.harness.registry_clients import ORDER_V1, user_total_type  # noqa: E402
from tests.harness.schema_registry import running_registry  # noqa: E402

ORDER = {"id": 12345, "user": "user-17", "amount": 42}
TOTAL = {"user": "user-17", "sum": 1000, "count": 10, "last_id": 12345, "last_coupon": None}
ORDER_JSON_SCHEMA = {"type": "object", "properties": {"id": {"type": "integer"}, "user": {"type": "string"},
                                                      "amount": {"type": "integer"}}}


def _per_record_us(fn, arg, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return (time.perf_counter() - started) / n * 1e6


def measure(registry: SchemaRegistry, n: int, rounds: int) -> dict:
    assert JSON.bound("orders", VALUE_FIELD) is JSON, "binding must leave JSON as it is"
    serdes = {
        "json": (JSON, JSON, ORDER),
        "avro": (registry.avro(ORDER_V1).bound("bench-avro", VALUE_FIELD, writes=True),
                 registry.avro().bound("bench-avro", VALUE_FIELD), ORDER),
        "avro, reader schema": (registry.avro(ORDER_V1).bound("bench-avro", VALUE_FIELD, writes=True),
                                registry.avro(ORDER_V1).bound("bench-avro", VALUE_FIELD), ORDER),
        "protobuf (dicts)": (registry.protobuf(user_total_type()).bound("bench-pb", VALUE_FIELD, writes=True),
                             registry.protobuf(user_total_type()).bound("bench-pb", VALUE_FIELD), TOTAL),
        "json-schema": (registry.json_schema(ORDER_JSON_SCHEMA).bound("bench-js", VALUE_FIELD, writes=True),
                        registry.json_schema().bound("bench-js", VALUE_FIELD), ORDER),
    }
    results = {}
    for name, (writer, reader, value) in serdes.items():
        data = writer.fast_serialize(value)
        reads = [_per_record_us(reader.fast_deserialize, data, n) for _ in range(rounds)]
        writes = [_per_record_us(writer.fast_serialize, value, n) for _ in range(rounds)]
        results[name] = {"bytes": len(data), "read_us": statistics.median(reads),
                         "write_us": statistics.median(writes)}
    base = results["json"]
    for row in results.values():
        row["read_vs_json"] = row["read_us"] / base["read_us"]
        row["write_vs_json"] = row["write_us"] / base["write_us"]
    return results


def table(results: dict) -> str:
    lines = ["| serde | bytes | read µs/record | vs JSON | write µs/record | vs JSON |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['bytes']} | {r['read_us']:.2f} | {r['read_vs_json']:.0f}x | "
                     f"{r['write_us']:.2f} | {r['write_vs_json']:.0f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (5_000, 1) if args.quick else (50_000, 5)
    with running_registry() as server:
        results = measure(SchemaRegistry(server.url), n, rounds)
    print(table(results))
    if not args.quick:
        out = REPO / "docs" / "bench" / "serdes.json"
        out.write_text(json.dumps({"machine": {"python": platform.python_version(), "cpu": platform.processor()
                                               or platform.machine()},
                                   "records_per_round": n, "rounds": rounds, "results": results}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
