"""The records of transaction n+1 held while n's producer drains (connectors/held_output.py),
with a target at the seam the owner gives it (the ordering end to end is in
test_output_order.py)."""

from __future__ import annotations

import tracemalloc

import orjson

from connectors.held_output import HeldOutput


class Target:
    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes, bytes]] = []

    def fast(self, topic: str, value: bytes | None = None, key: bytes | None = None, *args, **kwargs) -> None:
        self.produced.append((topic, value, key))

    blocking = fast


def test_a_held_record_costs_about_its_size_and_is_released_unchanged():
    """Up to 100,000 records may wait here while a partition's leader is away; orjson's
    output keeps its 4 KiB working buffer, which would make that 400 MiB."""
    target = Target()
    held = HeldOutput(closing=[object()], target=target, max_message_bytes=1 << 20, wait_drained=lambda: None,
                      release_if_drained=lambda: False)
    records = 10_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(records):  # as an operator does: encoded, handed over, forgotten
            held.fast("out", orjson.dumps({"user": f"u{i}", "sum": i}), orjson.dumps(f"u{i}"))
        per_record = (tracemalloc.get_traced_memory()[0] - before) / records
    finally:
        tracemalloc.stop()
    assert per_record < 400, f"{per_record:.0f} bytes held per record of about 50 bytes"
    held.release()
    assert target.produced == [("out", orjson.dumps({"user": f"u{i}", "sum": i}), orjson.dumps(f"u{i}"))
                               for i in range(records)]
