"""Trace context of a log record: W3C ``traceparent`` and hex trace/span ids.

OTLP carries a record's trace and span as fields of the ``LogRecord``
(``trace_id``, ``span_id``, ``flags``), not as attributes: that is what lets
Grafana jump from a log line to its trace. Producers put them in a Kafka
header (``traceparent``, W3C Trace Context) or in the JSON value
(``trace_id``/``span_id``/``trace_flags``, hex). Pure parsing, no I/O: a value
that is not a valid id yields ``None`` and the caller keeps it as a plain
attribute, so nothing is ever dropped.
"""

from __future__ import annotations

from typing import Any

TRACE_ID_KEYS = ("trace_id", "traceId")
SPAN_ID_KEYS = ("span_id", "spanId")
TRACE_FLAGS_KEYS = ("trace_flags", "traceFlags")

_HEX = frozenset("0123456789abcdefABCDEF")


def hex_id(value: Any, length: int) -> bytes | None:
    """``length`` hex digits, not all zero (the W3C "invalid" id) → bytes; else None."""
    if not isinstance(value, str) or len(value) != length or not _HEX.issuperset(value):
        return None
    raw = bytes.fromhex(value)
    return raw if any(raw) else None


def flags(value: Any) -> int | None:
    """Trace flags as a hex byte (``"01"``) or a small integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0xFF else None
    if isinstance(value, str) and 1 <= len(value) <= 2 and _HEX.issuperset(value):
        return int(value, 16)
    return None


def parse_traceparent(value: bytes | str | None) -> tuple[bytes, bytes, int] | None:
    """``00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`` → (trace id, span id, flags).

    Versions other than 00 are read the same way (the spec asks parsers to try),
    except ``ff``, which is invalid; anything malformed gives None.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or not _HEX.issuperset(parts[0]) or parts[0].lower() == "ff":
        return None
    if parts[0] == "00" and len(parts) != 4:
        return None
    trace_id, span_id = hex_id(parts[1], 32), hex_id(parts[2], 16)
    trace_flags = flags(parts[3]) if len(parts[3]) == 2 else None
    if trace_id is None or span_id is None or trace_flags is None:
        return None
    return trace_id, span_id, trace_flags
