"""Decoding survives anything a Kafka topic can hold (Hypothesis)."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from logger.otlp import OtlpSink
from logger.records import TRUNCATION_MARK, decode
from logger.status import ComponentStatus

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
SINK = OtlpSink("http://127.0.0.1:9/v1/logs", ComponentStatus("collector"))


TEXT_REASONS = {"not_json", "invalid_utf8", "empty", "not_object"}


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=300)), st.integers(min_value=0, max_value=64))
def test_any_bytes_become_a_record_that_encodes(value, max_bytes):
    record = decode(value, topic="t", partition=3, offset=41, kafka_timestamp_ms=7, max_bytes=max_bytes)
    assert (record.topic, record.partition, record.offset) == ("t", 3, 41)
    assert record.size == (0 if value is None else len(value))
    if value is None:
        assert (record.malformed, record.message) == ("tombstone", "")
    elif max_bytes and len(value) > max_bytes:
        assert record.malformed == "truncated"
        assert record.message == value[:max_bytes].decode("utf-8", "ignore") + TRUNCATION_MARK
    elif value[:1] == b"\x00" and len(value) > 5:  # Confluent Schema Registry framing
        assert record.attributes["kafka.schema_id"] == int.from_bytes(value[1:5], "big")
        if record.malformed is None:
            assert isinstance(json.loads(value[5:]), dict)
        else:
            assert record.malformed == "schema_registry_binary"
            assert base64.b64decode(record.message) == value[5:], "the payload, in base64"
    elif record.malformed is None:  # a JSON object: its own fields decide
        assert isinstance(json.loads(value), dict)
    else:
        assert record.malformed in TEXT_REASONS
        assert record.message == value.decode("utf-8", "replace"), "the raw text is the message"
        assert (record.malformed == "invalid_utf8") == (not _is_utf8(value))
    if record.malformed:
        assert (record.level, record.severity_number, record.service) == ("unknown", 0, "unknown_service")
        assert record.time_unix_nano == 7_000_000, "the Kafka timestamp"
        framed = {} if value is None else {"kafka.schema_id": int.from_bytes(value[1:5], "big")}
        assert record.attributes in ({}, framed)
    client = json.loads(json.dumps(record.to_client()))  # the client form always serialises
    assert client["message"] == record.message and client.get("malformed") == record.malformed
    exported = ExportLogsServiceRequest.FromString(SINK.encode([record]).SerializeToString())
    proto = exported.resource_logs[0].scope_logs[0].log_records[0]
    assert proto.body.string_value == record.message and proto.time_unix_nano == record.time_unix_nano


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
