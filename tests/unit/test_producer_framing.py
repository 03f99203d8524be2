"""What producers other than ours put around and beside a value: Schema Registry framing,
keys, headers, trace context; and record batches kafka-python cannot decode."""

from __future__ import annotations

import base64
import struct

import kafka.codec
import orjson
import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from logger import undecodable
from logger.filters import EVERYTHING
from logger.otlp import OtlpSink
from logger.records import decode
from logger.replay import Gap, ReplayRing
from logger.status import ComponentStatus
from logger.trace_context import parse_traceparent
from logger.undecodable import UndecodableBatch

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"


def registry(schema_id: int, payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + payload


def test_schema_registry_json_is_decoded_and_keeps_its_schema_id():
    record = decode(registry(42, b'{"level": "error", "service": "orders", "message": "boom", "n": 1}'))
    assert (record.level, record.service, record.message, record.malformed) == ("error", "orders", "boom", None)
    assert record.attributes == {"n": 1, "kafka.schema_id": 42}


def test_schema_registry_binary_payload_is_text_marked_as_such_not_invalid_utf8():
    avro = b"\x02\x0c\xff\xfeorders\x00"
    record = decode(registry(7, avro), default_service="svc")
    assert record.malformed == "schema_registry_binary"
    assert base64.b64decode(record.message) == avro
    assert record.attributes == {"kafka.schema_id": 7}
    assert record.service == "svc"


def test_values_that_merely_start_with_a_nul_byte_or_are_short_stay_what_they_were():
    assert decode(b"\x00\x01").malformed in ("not_json", "invalid_utf8")
    assert decode(b'{"message": "plain"}').attributes == {}


def test_key_and_headers_become_attributes_text_or_base64():
    record = decode(b'{"message": "m"}', key=b"order-17",
                    headers=[("source", b"checkout"), ("blob", b"\xff\x00"), ("empty", None),
                             ("dup", b"a"), ("dup", b"b")])
    assert record.attributes == {
        "messaging.kafka.message.key": "order-17",
        "messaging.kafka.message.header.source": "checkout",
        "messaging.kafka.message.header.blob": base64.b64encode(b"\xff\x00").decode(),
        "messaging.kafka.message.header.empty": None,
        "messaging.kafka.message.header.dup": ["a", "b"],
    }
    assert decode(b"text", key=b"\x80").attributes == {"messaging.kafka.message.key": "gA=="}


def test_a_traceparent_header_sets_the_trace_context_and_is_not_repeated_as_an_attribute():
    record = decode(b'{"message": "m"}', headers=[("traceparent", TRACEPARENT.encode())])
    assert (record.trace_id.hex(), record.span_id.hex(), record.trace_flags) == (TRACE, SPAN, 1)
    assert record.attributes == {}
    client = record.to_client()
    assert (client["trace_id"], client["span_id"]) == (TRACE, SPAN)


def test_json_trace_fields_set_the_trace_context():
    record = decode(orjson.dumps({"message": "m", "trace_id": TRACE, "span_id": SPAN, "trace_flags": "01"}))
    assert (record.trace_id.hex(), record.span_id.hex(), record.trace_flags) == (TRACE, SPAN, 1)
    assert record.attributes == {}
    camel = decode(orjson.dumps({"message": "m", "traceId": TRACE, "spanId": SPAN}))
    assert (camel.trace_id.hex(), camel.span_id.hex()) == (TRACE, SPAN)


def test_the_header_outranks_json_fields_which_are_then_kept_as_attributes():
    other = "1" * 32
    record = decode(orjson.dumps({"message": "m", "trace_id": other, "span_id": "2" * 16}),
                    headers=[("traceparent", TRACEPARENT.encode())])
    assert record.trace_id.hex() == TRACE
    assert record.attributes == {"trace_id": other, "span_id": "2" * 16}


@pytest.mark.parametrize("bad", ["xyz", "0" * 32, TRACE[:-1], TRACE + "0", 12345, None])
def test_invalid_trace_ids_stay_attributes_and_never_crash(bad):
    record = decode(orjson.dumps({"message": "m", "trace_id": bad, "span_id": SPAN}))
    assert record.trace_id == b""
    assert record.attributes == {"trace_id": bad, "span_id": SPAN}
    assert "trace_id" not in record.to_client()


@pytest.mark.parametrize("header", [
    "00-" + TRACE + "-" + SPAN,  # no flags
    "00-" + "0" * 32 + "-" + SPAN + "-01",  # all-zero trace id
    "00-" + TRACE + "-" + "0" * 16 + "-01",  # all-zero span id
    "ff-" + TRACE + "-" + SPAN + "-01",  # version ff is invalid
    "00-" + TRACE + "-" + SPAN + "-01-extra",  # version 00 has exactly four parts
    "00-" + TRACE.upper()[:-2] + "zz-" + SPAN + "-01",
])
def test_malformed_traceparent_headers_are_kept_as_header_attributes(header):
    record = decode(b'{"message": "m"}', headers=[("traceparent", header.encode())])
    assert record.trace_id == b""
    assert record.attributes == {"messaging.kafka.message.header.traceparent": header}


def test_a_future_traceparent_version_with_more_parts_is_read():
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-00-more") == (bytes.fromhex(TRACE), bytes.fromhex(SPAN), 0)


def test_trace_context_reaches_the_otlp_record_fields_not_its_attributes():
    sink = OtlpSink("http://127.0.0.1:9/v1/logs", ComponentStatus("collector"))
    traced = decode(b'{"message": "m", "service": "s"}', key=b"k", headers=[("traceparent", TRACEPARENT.encode())])
    plain = decode(b'{"message": "n", "service": "s"}')
    first, second = sink.encode([traced, plain]).resource_logs[0].scope_logs[0].log_records
    assert (first.trace_id.hex(), first.span_id.hex(), first.flags) == (TRACE, SPAN, 1)
    assert [kv.key for kv in first.attributes] == ["messaging.kafka.message.key"]
    assert (second.trace_id, second.span_id, second.flags) == (b"", b"", 0)


# -- batches kafka-python cannot decode -------------------------------------------------------

def lz4_batch(base_offset: int, count: int) -> bytearray:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=DefaultRecordBatch.CODEC_LZ4,
                                        is_transactional=False, producer_id=-1, producer_epoch=-1,
                                        base_sequence=-1, batch_size=1 << 20)
    for i in range(count):
        builder.append(i, timestamp=1_700_000_000_000, key=None, value=value(i), headers=[])
    buffer = builder.build()
    assert buffer[22] & 0x07 == DefaultRecordBatch.CODEC_LZ4, "compressed (it is sent plain when that is smaller)"
    struct.pack_into(">q", buffer, 0, base_offset)  # the broker assigns the base offset
    return buffer


def value(i: int) -> bytes:
    return b'{"n": %d, "pad": "%s"}' % (i, b"x" * 200)


def read_all(buffer: bytearray) -> list[bytes]:
    batch = DefaultRecordBatch(bytes(buffer))
    assert batch.validate_crc()
    return [record.value for record in batch]


@pytest.fixture
def contained():
    undecodable.install()


def test_a_good_batch_still_reads(contained):
    assert read_all(lz4_batch(100, 3)) == [value(0), value(1), value(2)]


def test_a_corrupt_batch_names_its_offsets_and_the_crc(contained):
    buffer = lz4_batch(100, 5)
    buffer[-3] ^= 0xFF
    with pytest.raises(UndecodableBatch) as caught:
        read_all(buffer)
    assert (caught.value.first, caught.value.last) == (100, 104)
    assert "CRC" in caught.value.reason


def test_a_missing_codec_names_the_codec(contained, monkeypatch):
    buffer = lz4_batch(7, 2)
    monkeypatch.setattr(kafka.codec, "has_lz4", lambda: False)
    with pytest.raises(UndecodableBatch) as caught:
        read_all(buffer)
    assert (caught.value.first, caught.value.last) == (7, 8)
    assert "lz4" in caught.value.reason and "not supported" in caught.value.reason


def test_a_payload_that_does_not_decompress_names_the_codec(contained, monkeypatch):
    def broken(data):
        raise RuntimeError("LZ4F_decompress failed")
    monkeypatch.setattr("kafka.record.default_records.lz4_decode", broken)
    with pytest.raises(UndecodableBatch) as caught:
        read_all(lz4_batch(0, 1))
    assert "lz4 decompression failed" in caught.value.reason


def test_install_is_idempotent(contained):
    wrapped = DefaultRecordBatch.__iter__
    undecodable.install()
    assert DefaultRecordBatch.__iter__ is wrapped


def test_a_skipped_range_is_a_gap_with_its_reason_for_clients_resuming_from_before_it():
    ring = ReplayRing(max_records=100, max_bytes=1 << 20)
    ring.mark_start("logs", 0, 10)
    ring.skip(Gap("logs", 0, 10, 14, "undecodable", "CRC mismatch"))
    assert ring.positions() == ["logs:0:14"]
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 11})
    assert missed == []
    assert [g.as_dict() for g in gaps] == [{"topic": "logs", "partition": 0, "from": 12, "to": 14,
                                            "reason": "undecodable", "error": "CRC mismatch"}]
    assert ring.since(EVERYTHING, {("logs", 0): 14}) == ([], [])
