"""Decoding and normalising Kafka values into LogRecords."""

from __future__ import annotations

import time

import pytest

from logger.records import decode, format_time, parse_level, parse_time

T0 = 1_790_000_000  # seconds, 2026-09-21


@pytest.mark.parametrize("value, expected_ns", [
    ("2026-11-27T11:36:57Z", 1795779417 * 10**9),
    ("2026-11-27T11:36:57.123456789Z", 1795779417 * 10**9 + 123456789),
    ("2026-11-27T12:36:57.5+01:00", 1795779417 * 10**9 + 500_000_000),
    ("2026-11-27 11:36:57", 1795779417 * 10**9),
    (T0, T0 * 10**9),
    (T0 + 0.25, T0 * 10**9 + 250_000_000),
    (T0 * 1000, T0 * 10**9),
    (T0 * 10**6, T0 * 10**9),
    (T0 * 10**9, T0 * 10**9),
    (str(T0 * 1000), T0 * 10**9),
])
def test_timestamp_forms(value, expected_ns):
    assert parse_time(value) == expected_ns


@pytest.mark.parametrize("value", ["yesterday", "", None, True, -5, [], {}])
def test_unparseable_timestamps(value):
    assert parse_time(value) is None


@pytest.mark.parametrize("value, number, name", [
    ("warn", 13, "warn"), ("WARNING", 13, "warn"), ("err", 17, "error"), ("Error", 17, "error"),
    ("fatal", 21, "fatal"), ("critical", 21, "fatal"), ("debug", 5, "debug"), ("TRACE", 1, "trace"),
    ("info", 9, "info"), ("notice", 10, "info"), (3, 17, "error"), ("4", 13, "warn"), (0, 23, "fatal"),
    (7, 5, "debug"),
])
def test_level_spellings(value, number, name):
    assert parse_level(value) == (number, name)


def test_json_object_is_normalised_and_keeps_other_fields():
    record = decode(b'{"timestamp": "2026-11-27T11:36:57Z", "level": "WARNING", "service.name": "orders",'
                    b' "msg": "slow query", "db": {"ms": 812}, "user": "u1"}',
                    topic="logs", partition=2, offset=41, kafka_timestamp_ms=5)
    assert record.time_unix_nano == 1795779417 * 10**9
    assert (record.severity_number, record.level) == (13, "warn")
    assert record.service == "orders"
    assert record.message == "slow query"
    assert record.attributes == {"db": {"ms": 812}, "user": "u1"}
    assert (record.topic, record.partition, record.offset) == ("logs", 2, 41)
    assert record.malformed is None
    client = record.to_client()
    assert client["time"] == "2026-11-27T11:36:57.000000000Z"
    assert client["level"] == "warn" and client["severity"] == 13
    assert "malformed" not in client


@pytest.mark.parametrize("key", ["service", "serviceName", "service_name", "app"])
def test_service_spellings(key):
    assert decode(f'{{"{key}": "billing", "message": "x"}}'.encode()).service == "billing"


def test_nested_service_object():
    record = decode(b'{"service": {"name": "api", "version": "2"}, "message": "x"}')
    assert record.service == "api"
    assert record.attributes == {"service": {"version": "2"}}


def test_missing_fields_fall_back_to_kafka_timestamp_and_default_service():
    record = decode(b'{"message": "hi"}', kafka_timestamp_ms=1_700_000_000_123, default_service="svc")
    assert record.time_unix_nano == 1_700_000_000_123_000_000
    assert record.service == "svc"
    assert (record.severity_number, record.level) == (0, "unknown")


def test_unparseable_timestamp_stays_as_attribute():
    record = decode(b'{"timestamp": "soon", "message": "x"}', kafka_timestamp_ms=1000)
    assert record.time_unix_nano == 1000 * 10**6
    assert record.attributes == {"timestamp": "soon"}


def test_non_string_message_becomes_json_text():
    assert decode(b'{"message": {"a": 1}}').message == '{"a":1}'


@pytest.mark.parametrize("value, reason, body", [
    (b"plain text line", "not_json", "plain text line"),
    (b"\xff\xfe broken", "invalid_utf8", "\ufffd\ufffd broken"),
    (b"", "empty", ""),
    (b"   ", "empty", "   "),
    (None, "tombstone", ""),
    (b"[1, 2]", "not_object", "[1, 2]"),
    (b'"just a string"', "not_object", '"just a string"'),
    (b"{broken json", "not_json", "{broken json"),
])
def test_malformed_values_become_text_records(value, reason, body):
    record = decode(value, topic="t", partition=0, offset=7, kafka_timestamp_ms=1)
    assert record.malformed == reason
    assert record.message == body
    assert record.offset == 7
    assert record.to_client()["malformed"] == reason


def test_format_time_keeps_nanoseconds():
    assert format_time(1795779417 * 10**9 + 5) == "2026-11-27T11:36:57.000000005Z"


S = 1_000_000_000  # ns per second


@pytest.mark.parametrize("value, expected_ns", [
    (0, 0), ("0", 0), (0.5, S // 2),  # the epoch itself, and half a second after it
    (9_000_000_000, 9_000_000_000 * S),  # seconds (up to OTLP's limit in 2262)
    (100_000_000_000, 100_000_000_000 * 1_000_000),  # from 1e11 on: milliseconds
    (100_000_000_000_000, 100_000_000_000_000 * 1_000),  # from 1e14 on: microseconds
    (100_000_000_000_000_000, 100_000_000_000_000_000),  # from 1e17 on: nanoseconds
    ((1 << 63) - 1, (1 << 63) - 1),  # the last representable instant
    ("2026-01-01T00:00:00.5z", 1_767_225_600 * S + S // 2),  # lower-case zone letter
    ("2026-01-01T00:00:00", 1_767_225_600 * S),  # no zone: UTC, whatever the machine's zone
    ("1970-01-01T00:00:00Z", 0),
])
def test_epoch_units_and_iso_forms_at_their_edges(value, expected_ns, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # a local zone that is not UTC must change nothing
    time.tzset()
    try:
        assert parse_time(value) == expected_ns
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("value", [1 << 63, "1969-12-31T23:59:59Z", float("nan"), "-1", "2262-04-12T00:00:00Z"])
def test_instants_outside_what_otlp_holds_are_not_timestamps(value):
    assert parse_time(value) is None


def test_format_time_is_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert format_time(1_767_225_600 * S + 7) == "2026-01-01T00:00:00.000000007Z"
    finally:
        monkeypatch.undo()
        time.tzset()
    assert format_time(-10**20) == "1970-01-01T00:00:00.000000000Z", "out of range: the epoch, not a crash"


def test_the_client_form_has_exactly_the_documented_fields():
    record = decode(b'{"level": "error", "service": "api", "message": "m", "k": 1}', topic="logs", partition=2,
                    offset=41, kafka_timestamp_ms=1_000)
    assert record.to_client() == {"time": "1970-01-01T00:00:01.000000000Z", "level": "error", "severity": 17,
                                  "service": "api", "message": "m", "attributes": {"k": 1}, "topic": "logs",
                                  "partition": 2, "offset": 41}
    assert decode(b"text").to_client()["malformed"] == "not_json"


def test_raw_values_are_kept_only_when_asked_and_the_fallback_time_is_the_epoch():
    assert decode(b"x").raw is None and decode(b"x", keep_raw=True).raw == b"x"
    assert decode(b"x").time_unix_nano == 0, "no Kafka timestamp: 0"
    no_message = decode(b'{"level": "info"}')
    assert no_message.message == "" and no_message.attributes == {}


def test_a_service_object_gives_its_name_and_keeps_its_other_fields():
    assert decode(b'{"service": {"name": "api"}}').attributes == {}
    kept = decode(b'{"service": {"name": "api", "version": "2"}}')
    assert kept.service == "api" and kept.attributes == {"service": {"version": "2"}}
