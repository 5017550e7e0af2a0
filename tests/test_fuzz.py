"""Malformed bytes get clear errors from our readers, never a crash of another kind."""

from __future__ import annotations

import time

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.serdes import JSON, KEY, STRING, SerdeError
from statestore.manifest import FileEntry, Manifest, ManifestError

_VALID = Manifest(job="j", task="t-0", topic="t", partition=0, checkpoint_id=7, snapshot="chk-0000000007-abcd",
                  worker="w", created_at=time.time(), source_offset=42, column_families=("op:acc",),
                  files=(FileEntry("000009.sst", "shared/ab.sst", 10, "ab" * 32),), uploaded_bytes=10,
                  lineage=("chk-0000000006-abcd",)).to_bytes()


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.none()))
def test_value_serdes_raise_only_serde_errors(data):
    for serde in (JSON, STRING, KEY):
        try:
            serde.deserialize(data)
        except SerdeError as exc:
            assert str(exc)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_manifest_reader_rejects_arbitrary_bytes_clearly(data):
    try:
        Manifest.from_bytes(data, "fuzz")
    except ManifestError as exc:
        assert "fuzz" in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(_VALID) - 1), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_to_a_manifest_is_detected(position, byte):
    mutated = bytearray(_VALID)
    if mutated[position] == byte:
        return
    mutated[position] = byte
    try:
        Manifest.from_bytes(bytes(mutated), "fuzz")
    except ManifestError:
        return
    # A change that leaves the JSON meaning intact (e.g. whitespace) is harmless.
    assert orjson.loads(bytes(mutated)) == orjson.loads(_VALID)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children,
                                                                                      max_size=4),
                    max_leaves=20))
def test_json_values_round_trip(value):
    assert JSON.deserialize(JSON.serialize(value)) == value


def test_integers_beyond_64_bits_are_a_clear_serde_error():
    try:
        JSON.serialize(2**64)
    except SerdeError as exc:
        assert "64-bit" in str(exc)
    else:
        raise AssertionError("a 65-bit integer was accepted")
