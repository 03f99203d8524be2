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


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=40)),
       st.lists(st.tuples(st.sampled_from(["traceparent", "h", "trace-id"]) | st.text(max_size=6),
                          st.one_of(st.none(), st.binary(max_size=60),
                                    st.from_regex(r"\A[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
                                    .map(str.encode))), max_size=4),
       st.dictionaries(st.sampled_from(["trace_id", "traceId", "span_id", "spanId", "trace_flags", "message"]),
                       json_values | st.from_regex(r"\A[0-9a-f]{16,32}\Z"), max_size=5))
def test_any_key_headers_and_trace_fields_keep_every_value(key, headers, obj):
    value = b"\x00\x00\x00\x00\x07" + json.dumps(obj).encode()  # Schema Registry framing, too
    record = decode(value, key=key, headers=headers, kafka_timestamp_ms=1)
    client = record.to_client()
    json.dumps(client)
    SINK.encode([record]).SerializeToString()
    # Nothing is lost: every header is an attribute unless it became the trace context,
    # and every trace field of the JSON is an attribute unless it did.
    names = {name for name, _ in headers if name.lower() != "traceparent" or record.trace_id == b""}
    assert {f"messaging.kafka.message.header.{n}" for n in names} <= set(record.attributes)
    for field in ("trace_id", "traceId", "span_id", "spanId"):
        if field in obj and field not in record.attributes:
            assert bytes.fromhex(obj[field]) in (record.trace_id, record.span_id)
    assert (key is None) == ("messaging.kafka.message.key" not in record.attributes)
