"""Kafka's binary serdes read and write what the Java client's Integer, Long and Double
serializers do: big-endian two's complement and IEEE 754, with null kept null."""

from __future__ import annotations

import struct

import pytest

from connectors.serdes import BY_NAME, FLOAT64, INT32, INT64, SerdeError


@pytest.mark.parametrize(("serde", "value", "data"), [
    (INT32, 1, b"\x00\x00\x00\x01"),
    (INT32, -1, b"\xff\xff\xff\xff"),
    (INT32, 2**31 - 1, b"\x7f\xff\xff\xff"),
    (INT64, 1, b"\x00\x00\x00\x00\x00\x00\x00\x01"),
    (INT64, -2**63, b"\x80\x00\x00\x00\x00\x00\x00\x00"),
    (FLOAT64, 1.5, struct.pack(">d", 1.5)),
    (FLOAT64, -0.0, b"\x80\x00\x00\x00\x00\x00\x00\x00"),
])
def test_numbers_are_big_endian_as_the_java_client_writes_them(serde, value, data):
    assert serde.serialize(value) == data
    assert serde.deserialize(data) == value


@pytest.mark.parametrize("serde", [INT32, INT64, FLOAT64])
def test_null_stays_null(serde):
    assert serde.serialize(None) is None and serde.deserialize(None) is None


def test_bytes_of_the_wrong_width_are_refused_saying_why():
    with pytest.raises(SerdeError, match="int64 needs exactly 8 bytes, got 4"):
        INT64.deserialize(b"\x00\x00\x00\x01")


def test_a_number_out_of_range_is_refused_saying_why():
    with pytest.raises(SerdeError, match="cannot serialise 2147483648 as int32"):
        INT32.serialize(2**31)


def test_the_serdes_are_known_by_name():
    assert [BY_NAME[name] for name in ("int32", "int64", "float64")] == [INT32, INT64, FLOAT64]
