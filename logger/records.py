"""LogRecord: decode a Kafka message value once, normalise its fields once.

A value is usually a JSON object such as
``{"timestamp": "...", "level": "error", "service": "orders", "message": "..."}``.
Known spellings of the timestamp, level, service and message fields are
normalised; every other field is kept as an attribute. A value that is not a
JSON object (plain text, invalid UTF-8, empty, a tombstone, a JSON scalar)
becomes a record whose body is the text, with ``malformed`` saying why:
decoding never raises.

Producers other than our own add framing around the value and metadata
beside it, and both are read here:

* Confluent Schema Registry serializers write a magic byte ``0x00`` and a
  4-byte schema id before the payload. JSON after it is decoded as usual and
  the id kept as ``kafka.schema_id``; Avro or Protobuf after it becomes a text
  record (the payload in base64) marked ``schema_registry_binary``.
* The record key and headers become attributes, following the OpenTelemetry
  conventions for Kafka: ``messaging.kafka.message.key`` and
  ``messaging.kafka.message.header.<name>`` (text, or base64 when not UTF-8).
* Trace context goes to the record's ``trace_id``/``span_id``/``trace_flags``:
  from a W3C ``traceparent`` header first, else from ``trace_id``/``span_id``/
  ``trace_flags`` fields of the JSON (hex). Ids that are not valid stay
  attributes. A message with no key, no headers and no trace fields pays two
  checks and two dict look-ups for all this.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from logger import trace_context

TIMESTAMP_KEYS = ("timestamp", "@timestamp", "time", "ts", "datetime")
LEVEL_KEYS = ("level", "severity", "severity_text", "levelname", "log.level", "lvl", "loglevel")
SERVICE_KEYS = ("service", "service.name", "service_name", "serviceName", "app", "application")
MESSAGE_KEYS = ("message", "msg", "body", "log", "text")

# OTLP SeverityNumber (logs data model) for each spelling, with the canonical
# level name clients see and filter on (``filters`` reads the numbers of the names).
LEVELS: dict[str, tuple[int, str]] = {}
for _names, _number, _canonical in (
    (("trace", "trc", "finest", "verbose"), 1, "trace"),
    (("debug", "dbg", "fine", "finer"), 5, "debug"),
    (("info", "information", "informational", "inf"), 9, "info"),
    (("notice",), 10, "info"),
    (("warn", "warning", "wrn"), 13, "warn"),
    (("error", "err", "eror", "severe"), 17, "error"),
    (("critical", "crit", "fatal", "ftl"), 21, "fatal"),
    (("alert",), 22, "fatal"),
    (("emergency", "emerg", "panic"), 23, "fatal"),
):
    for _name in _names:
        LEVELS[_name] = (_number, _canonical)
# Numeric syslog severities (RFC 5424): 0 emergency ... 7 debug.
_SYSLOG = {0: "emergency", 1: "alert", 2: "critical", 3: "error",
           4: "warning", 5: "notice", 6: "info", 7: "debug"}
LEVEL_NAMES = ("trace", "debug", "info", "warn", "error", "fatal")
UNKNOWN_LEVEL = (0, "unknown")

KEY_ATTRIBUTE = "messaging.kafka.message.key"
HEADER_PREFIX = "messaging.kafka.message.header."
SCHEMA_ID_ATTRIBUTE = "kafka.schema_id"
SCHEMA_REGISTRY_MAGIC = 0  # Confluent wire format: magic byte, 4-byte big-endian schema id, payload

TRUNCATION_MARK = " …[truncated]"
MAX_TIME_NS = 1 << 63  # OTLP's fixed64 holds more, but nothing sane is past 2262

_ISO_FRACTION = re.compile(r"^(.*?T\d{2}:\d{2}:\d{2})[.,](\d+)(.*)$")


@dataclass(slots=True)
class LogRecord:
    """One log line, normalised. Times are nanoseconds since the epoch."""

    time_unix_nano: int
    severity_number: int
    level: str
    service: str
    message: str
    attributes: dict[str, Any]
    topic: str = ""
    partition: int = -1
    offset: int = -1
    malformed: str | None = None
    size: int = 0
    raw: bytes | None = None  # the value as read, kept only where it may be dead-lettered
    trace_id: bytes = b""  # 16 bytes when known
    span_id: bytes = b""  # 8 bytes when known
    trace_flags: int = 0

    def to_client(self) -> dict[str, Any]:
        """The record as WebSocket clients receive it (see the README's protocol)."""
        out: dict[str, Any] = {
            "time": format_time(self.time_unix_nano),
            "level": self.level,
            "severity": self.severity_number,
            "service": self.service,
            "message": self.message,
            "attributes": self.attributes,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }
        if self.malformed:
            out["malformed"] = self.malformed
        if self.trace_id:
            out["trace_id"] = self.trace_id.hex()
            if self.span_id:
                out["span_id"] = self.span_id.hex()
        return out


def decode(value: bytes | None, *, topic: str = "", partition: int = -1, offset: int = -1,
           kafka_timestamp_ms: int | None = None, default_service: str = "unknown_service",
           max_bytes: int = 0, keep_raw: bool = False, key: bytes | None = None,
           headers: list[tuple[str, bytes | None]] | None = None) -> LogRecord:
    """Turn one Kafka message (value, key, headers) into a LogRecord. Never raises.

    A value longer than ``max_bytes`` (0: no limit) is cut there and becomes a
    text record marked ``malformed="truncated"``.
    """
    record = _decode(value, topic, partition, offset, kafka_timestamp_ms, default_service, max_bytes)
    if key is not None or headers:
        _add_key_and_headers(record, key, headers)
    attributes = record.attributes
    if not record.trace_id and ("trace_id" in attributes or "traceId" in attributes):
        _take_trace_fields(record)  # a valid traceparent header outranks them: then they stay attributes
    if keep_raw:
        record.raw = value
    return record


def _decode(value: bytes | None, topic: str, partition: int, offset: int, kafka_timestamp_ms: int | None,
            default_service: str, max_bytes: int) -> LogRecord:
    fallback_ns = (kafka_timestamp_ms or 0) * 1_000_000
    position = (topic, partition, offset)
    if value is None:
        return _text_record("", "tombstone", fallback_ns, default_service, 0, position)
    size = len(value)
    if max_bytes and size > max_bytes:
        text = value[:max_bytes].decode("utf-8", "ignore") + TRUNCATION_MARK
        return _text_record(text, "truncated", fallback_ns, default_service, size, position)
    if not value.strip():
        return _text_record(value.decode("utf-8", "replace"), "empty", fallback_ns, default_service, size, position)
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        if value[0] == SCHEMA_REGISTRY_MAGIC and size > 5:
            return _schema_registry(value, fallback_ns, default_service, position)
        try:
            text, reason = value.decode("utf-8"), "not_json"
        except UnicodeDecodeError:
            text, reason = value.decode("utf-8", "replace"), "invalid_utf8"
        return _text_record(text, reason, fallback_ns, default_service, size, position)
    if not isinstance(parsed, dict):
        return _text_record(value.decode("utf-8", "replace"), "not_object", fallback_ns,
                            default_service, size, position)
    return _from_object(parsed, fallback_ns, default_service, size, position)


def _schema_registry(value: bytes, fallback_ns: int, default_service: str,
                     position: tuple[str, int, int]) -> LogRecord:
    """A value in Confluent's wire format: JSON after the header is decoded; any
    other payload (Avro, Protobuf) is kept, in base64, as a text record."""
    schema_id = int.from_bytes(value[1:5], "big")
    payload = value[5:]
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        record = _from_object(parsed, fallback_ns, default_service, len(value), position)
    else:
        text = base64.b64encode(payload).decode("ascii")
        record = _text_record(text, "schema_registry_binary", fallback_ns, default_service, len(value), position)
    record.attributes[SCHEMA_ID_ATTRIBUTE] = schema_id
    return record


def _text_record(text: str, reason: str, time_ns: int, service: str, size: int,
                 position: tuple[str, int, int]) -> LogRecord:
    number, level = UNKNOWN_LEVEL
    return LogRecord(time_ns, number, level, service, text, {}, *position, reason, size)


def _from_object(attributes: dict[str, Any], fallback_ns: int, default_service: str, size: int,
                 position: tuple[str, int, int]) -> LogRecord:
    """Take the known fields out of a freshly parsed object; what is left are its attributes."""
    time_ns = None
    for key in TIMESTAMP_KEYS:
        if key in attributes:
            time_ns = parse_time(attributes[key])
            if time_ns is not None:
                del attributes[key]
                break
    severity = UNKNOWN_LEVEL
    for key in LEVEL_KEYS:
        if key in attributes:
            found = parse_level(attributes[key])
            if found is not None:
                severity = found
                del attributes[key]
                break
    service = _pop_service(attributes) or default_service
    message: Any = ""
    for key in MESSAGE_KEYS:
        if key in attributes:
            message = attributes.pop(key)
            break
    if not isinstance(message, str):
        message = orjson.dumps(message).decode()
    number, level = severity
    # Positional: the constructor is on the hot path, and keywords cost ~40 % more.
    return LogRecord(fallback_ns if time_ns is None else time_ns, number, level, service, message,
                     attributes, *position, None, size)


def _take_trace_fields(record: LogRecord) -> None:
    """Move valid ``trace_id``/``span_id``/``trace_flags`` fields out of the attributes
    into the record's trace context; invalid ones stay attributes."""
    attributes = record.attributes
    trace_key = next(k for k in trace_context.TRACE_ID_KEYS if k in attributes)
    trace_id = trace_context.hex_id(attributes[trace_key], 32)
    if trace_id is None:
        return
    record.trace_id = trace_id
    del attributes[trace_key]
    for key in trace_context.SPAN_ID_KEYS:
        span_id = trace_context.hex_id(attributes.get(key), 16)
        if span_id is not None:
            record.span_id = span_id
            del attributes[key]
            break
    for key in trace_context.TRACE_FLAGS_KEYS:
        trace_flags = trace_context.flags(attributes.get(key))
        if trace_flags is not None:
            record.trace_flags = trace_flags
            del attributes[key]
            break


def _add_key_and_headers(record: LogRecord, key: bytes | None, headers: list[tuple[str, bytes | None]] | None
                         ) -> None:
    """The Kafka key and headers as attributes; a valid ``traceparent`` header sets the
    trace context instead."""
    attributes = record.attributes
    if key is not None:
        attributes[KEY_ATTRIBUTE] = _bytes_text(key)
    for name, raw in headers or ():
        if name.lower() == "traceparent":
            parsed = trace_context.parse_traceparent(raw)
            if parsed is not None:
                record.trace_id, record.span_id, record.trace_flags = parsed
                continue
        text = None if raw is None else _bytes_text(raw)
        attribute = HEADER_PREFIX + name
        if attribute not in attributes:
            attributes[attribute] = text
        else:  # a repeated header: keep every value, in order
            earlier = attributes[attribute]
            attributes[attribute] = [*earlier, text] if isinstance(earlier, list) else [earlier, text]


def _bytes_text(raw: bytes) -> str:
    """UTF-8 text as is; anything else in base64 (OpenTelemetry attributes are text)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def _pop_service(attributes: dict[str, Any]) -> str | None:
    nested = attributes.get("service")
    if isinstance(nested, dict) and isinstance(nested.get("name"), str) and nested["name"]:
        name = nested.pop("name")
        if not nested:
            del attributes["service"]
        return name
    for key in SERVICE_KEYS:
        value = attributes.get(key)
        if isinstance(value, str) and value:
            del attributes[key]
            return value
    return None


def parse_level(value: Any) -> tuple[int, str] | None:
    """A level spelling or a syslog number → (OTLP severity number, canonical name)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return LEVELS.get(_SYSLOG.get(value, ""))
    if isinstance(value, str):
        word = value.strip().lower()
        if word.isdigit():
            return LEVELS.get(_SYSLOG.get(int(word), ""))
        return LEVELS.get(word)
    return None


def parse_time(value: Any) -> int | None:
    """ISO-8601 text or epoch seconds/milliseconds/microseconds/nanoseconds → ns."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            return _epoch_to_ns(float(text)) if text and text[0].isdigit() and "-" not in text \
                and ":" not in text else _iso_to_ns(text)
        except (ValueError, OverflowError):
            return None
    if isinstance(value, (int, float)):
        try:
            return _epoch_to_ns(value)
        except (ValueError, OverflowError):
            return None
    return None


def _epoch_to_ns(number: float) -> int:
    if number != number or number < 0:  # nan or negative
        raise ValueError(number)
    if number < 1e11:
        scale = 1_000_000_000  # seconds
    elif number < 1e14:
        scale = 1_000_000  # milliseconds
    elif number < 1e17:
        scale = 1_000  # microseconds
    else:
        scale = 1
    # Split whole and fraction: a float times 1e9 would lose the last digits.
    whole = int(number)
    nanos = whole * scale + round((number - whole) * scale)
    if nanos >= MAX_TIME_NS:
        raise ValueError(number)
    return nanos


def _iso_to_ns(text: str) -> int:
    # datetime keeps microseconds; keep the full fraction (up to ns) ourselves.
    fraction_ns = 0
    match = _ISO_FRACTION.match(text)
    if match:
        head, digits, tail = match.groups()
        fraction_ns = int((digits + "000000000")[:9])
        text = head + tail
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    seconds = int(parsed.timestamp())
    nanos = seconds * 1_000_000_000 + fraction_ns
    if not 0 <= nanos < MAX_TIME_NS:
        raise ValueError(text)
    return nanos


def format_time(time_unix_nano: int) -> str:
    """ns since the epoch → ``2026-11-27T11:36:57.123456789Z``."""
    seconds, nanos = divmod(time_unix_nano, 1_000_000_000)
    try:
        stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        stamp = "1970-01-01T00:00:00"
    return f"{stamp}.{nanos:09d}Z"
