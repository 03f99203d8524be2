"""Decoding survives anything a Kafka topic can hold (Hypothesis)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from logger.otlp import OtlpSink
from logger.records import TRUNCATION_MARK, decode
from logger.status import ComponentStatus

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
SINK = OtlpSink("http://127.0.0.1:9/v1/logs", ComponentStatus("collector"))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=300)), st.integers(min_value=0, max_value=64))
def test_any_bytes_become_a_record_that_encodes(value, max_bytes):
    record = decode(value, topic="t", partition=0, offset=1, kafka_timestamp_ms=1, max_bytes=max_bytes)
    assert isinstance(record.message, str)
    json.dumps(record.to_client())  # the client form always serialises
    SINK.encode([record]).SerializeToString()  # and so does the OTLP form


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["timestamp", "level", "service", "message", "ts", "severity", "app",
                                        "msg", "time", "x", "service.name"]) | st.text(max_size=6),
                       json_values, max_size=8))
def test_any_json_object_normalises_without_raising(obj):
    record = decode(json.dumps(obj).encode(), kafka_timestamp_ms=1)
    assert record.malformed is None
    json.dumps(record.to_client())
    SINK.encode([record]).SerializeToString()


def test_huge_values_are_truncated_with_a_marker():
    value = json.dumps({"message": "y" * 5000}).encode()
    record = decode(value, max_bytes=1024)
    assert record.malformed == "truncated"
    assert record.message.endswith(TRUNCATION_MARK) and len(record.message) < 1100
    assert record.size == len(value)
