"""Records written by Kafka's own Java producer, as production writes them: every codec,
transactions, Schema Registry framing, keys and headers, and a batch corrupted on disk.

Each test checks what reached a /ws client *and* the collector. The producer is
``devstack.java_producer.JavaProducer`` (kafka-clients from the broker's distribution).
"""

from __future__ import annotations

import json
import os
import struct
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from devstack.java_producer import JavaProducer
from devstack.waiting import wait_until
from tests.conftest import LiveClient

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
PAD = "x" * 2800  # compresses well: a 1,500-record batch is ~4 MiB decompressed, tens of KiB on the wire


def value(run_id: str, tag: str, seq: int, pad: str = "") -> bytes:
    return json.dumps({"level": "info", "service": "orders", "message": f"{tag} {seq}", "run": run_id,
                       "tag": tag, "seq": seq, "pad": pad}).encode()


def tags_at_client(client: LiveClient, run_id: str) -> Counter[tuple[str, int]]:
    return Counter((r["attributes"]["tag"], r["attributes"]["seq"]) for r in client.records()
                   if r["attributes"].get("run") == run_id)


def tags_at_collector(receiver, run_id: str) -> Counter[tuple[str, int]]:
    return Counter((r["attributes"]["tag"], r["attributes"]["seq"]) for r in receiver.records()
                   if r["attributes"].get("run") == run_id)


def arrived_at_collector(receiver, run_id: str, count: int) -> Counter[tuple[str, int]]:
    """What reached the receiver behind the collector, once ``count`` records did. The collector
    (Rotel) accepts an export, and we commit, before it forwards on its own schedule: under
    load the receiver can be a batch behind our commit."""
    wait_until(lambda: sum(tags_at_collector(receiver, run_id).values()) >= count, 30,
               f"{count} records at the receiver", lambda: str(tags_at_collector(receiver, run_id)))
    return tags_at_collector(receiver, run_id)


def committed(proc) -> int:
    return proc.health()["kafka"]["forward"].get("records_committed", 0)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_codec_reaches_clients_and_the_collector_on_every_partition(
        kafka, topic, service, ws_client, receiver, run_id, codec):
    name = topic(3)
    proc = service(name)
    client = ws_client(proc.ws_url)
    expected: Counter[tuple[str, int]] = Counter()
    with JavaProducer(kafka.bootstrap, name, compression=codec) as producer:
        for seq in range(30):
            producer.send(value(run_id, "small", seq), partition=seq % 3)
            expected["small", seq] += 1
        producer.flush()
        for seq in range(1500):  # one batch that decompresses to several MiB
            producer.send(value(run_id, "big", seq, PAD), partition=1)
            expected["big", seq] += 1
        producer.flush()
    wait_until(lambda: tags_at_client(client, run_id) == expected, 60, f"every {codec} record at the client",
               lambda: f"got {sum(tags_at_client(client, run_id).values())} of {sum(expected.values())}")
    wait_until(lambda: committed(proc) >= sum(expected.values()), 60, "every record exported and committed",
               lambda: f"{json.dumps(proc.health())}\n{proc.log_tail()}")
    assert arrived_at_collector(receiver, run_id, sum(expected.values())) == expected  # each exactly once
    health = proc.health()["kafka"]
    assert "undecodable_batches" not in health["tail"] and "undecodable_batches" not in health["forward"]


def write_committed_aborted_committed(kafka, name: str, run_id: str) -> None:
    """Three transactions of 20 records over two partitions: committed, aborted, committed."""
    with JavaProducer(kafka.bootstrap, name, compression="lz4", transactional_id=f"tx-{run_id}") as producer:
        for tag, finish in (("committed-1", producer.commit), ("aborted", producer.abort),
                            ("committed-2", producer.commit)):
            producer.begin()
            for seq in range(20):
                producer.send(value(run_id, tag, seq), partition=seq % 2)
            producer.flush()
            finish()


def test_aborted_transactions_are_never_shown_or_exported(kafka, topic, service, ws_client, receiver, run_id):
    name = topic(2)
    proc = service(name)
    client = ws_client(proc.ws_url)
    write_committed_aborted_committed(kafka, name, run_id)
    expected = Counter({(tag, seq): 1 for tag in ("committed-1", "committed-2") for seq in range(20)})
    # committed-2 follows the aborted records in both partitions: once it is all here,
    # anything of the aborted transaction would be here too.
    wait_until(lambda: tags_at_client(client, run_id) == expected, 30, "the committed records at the client",
               lambda: str(tags_at_client(client, run_id)))
    wait_until(lambda: committed(proc) >= 40, 30, "the committed records exported")
    assert arrived_at_collector(receiver, run_id, sum(expected.values())) == expected
    # Control records (the commit and abort markers) never surface as records.
    assert len([r for r in client.records() if r["topic"] == name]) == 40


def test_with_read_uncommitted_aborted_transactions_are_shown_and_exported(kafka, topic, service, ws_client,
                                                                           receiver, run_id):
    name = topic(2)
    proc = service(name, KAFKA_ISOLATION_LEVEL="read_uncommitted")
    client = ws_client(proc.ws_url)
    write_committed_aborted_committed(kafka, name, run_id)
    expected = Counter({(tag, seq): 1 for tag in ("committed-1", "aborted", "committed-2") for seq in range(20)})
    wait_until(lambda: tags_at_client(client, run_id) == expected, 30, "every record at the client",
               lambda: str(tags_at_client(client, run_id)))
    wait_until(lambda: committed(proc) >= 60, 30, "every record exported")
    assert arrived_at_collector(receiver, run_id, sum(expected.values())) == expected
    # The markers still never surface as records.
    assert len([r for r in client.records() if r["topic"] == name]) == 60


def test_schema_registry_framing_keys_headers_and_trace_context(kafka, topic, service, ws_client, receiver, run_id):
    name = topic(1)
    proc = service(name)
    client = ws_client(proc.ws_url)
    json_value = json.dumps({"level": "error", "service": "billing", "message": "framed", "run": run_id}).encode()
    avro = b"\x02\x0cbilling\xff\xfe"
    with JavaProducer(kafka.bootstrap, name, compression="zstd") as producer:
        producer.send(b"\x00" + struct.pack(">I", 17) + json_value, key=b"order-1",
                      headers=[("traceparent", f"00-{TRACE}-{SPAN}-01".encode()), ("run", run_id.encode()),
                               ("blob", b"\xff\x01")])
        producer.send(b"\x00" + struct.pack(">I", 18) + avro, key=b"\x80\x81", headers=[("run", run_id.encode())])
        producer.send(json.dumps({"message": "json trace", "run": run_id, "trace_id": TRACE, "span_id": SPAN,
                                  "trace_flags": "01"}).encode())
        producer.send(json.dumps({"message": "bad trace", "run": run_id, "trace_id": "not-hex"}).encode())
        producer.flush()

    def mine(record):
        attributes = record["attributes"]
        return run_id in (attributes.get("run"), attributes.get("messaging.kafka.message.header.run"))

    framed, binary, json_trace, bad_trace = client.wait_records(4, where=mine)
    assert (framed["level"], framed["service"], framed["message"]) == ("error", "billing", "framed")
    assert (framed["trace_id"], framed["span_id"]) == (TRACE, SPAN)
    assert framed["attributes"] == {
        "run": run_id, "kafka.schema_id": 17, "messaging.kafka.message.key": "order-1",
        "messaging.kafka.message.header.run": run_id, "messaging.kafka.message.header.blob": "/wE="}
    assert binary["malformed"] == "schema_registry_binary" and "trace_id" not in binary
    assert binary["attributes"]["kafka.schema_id"] == 18
    assert binary["attributes"]["messaging.kafka.message.key"] == "gIE="
    assert (json_trace["trace_id"], json_trace["span_id"]) == (TRACE, SPAN)
    assert "trace_id" not in json_trace["attributes"]
    assert "trace_id" not in bad_trace and bad_trace["attributes"]["trace_id"] == "not-hex"

    exported = {r["body"]: r for r in receiver.wait_for_matching(mine, 4)}
    at_collector = exported["framed"]
    assert (at_collector["trace_id"], at_collector["span_id"], at_collector["flags"]) == (TRACE, SPAN, 1)
    assert at_collector["resource"]["service.name"] == "billing"
    assert at_collector["attributes"]["kafka.schema_id"] == 17
    assert at_collector["attributes"]["messaging.kafka.message.key"] == "order-1"
    assert "traceparent" not in json.dumps(at_collector["attributes"])
    assert exported["json trace"]["trace_id"] == TRACE
    assert exported["bad trace"]["trace_id"] == "" and exported["bad trace"]["attributes"]["trace_id"] == "not-hex"
    binary_at_collector = next(r for r in exported.values() if r["attributes"].get("log.malformed"))
    assert binary_at_collector["attributes"]["log.malformed"] == "schema_registry_binary"


def last_data_batch(segment: Path) -> tuple[int, int, int]:
    """(file position, first offset, last offset) of the last non-control record batch in a log segment."""
    data = segment.read_bytes()
    position, found = 0, None
    while position + 61 <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, position)
        attributes, last_delta = struct.unpack_from(">hi", data, position + 21)
        if not attributes & 0x20:  # not a control batch (a transaction marker)
            found = (position, base_offset, base_offset + last_delta)
        position += 12 + length
    assert found is not None, f"no record batch in {segment}"
    return found


def test_a_corrupt_batch_costs_that_batch_only_on_both_paths(kafka, topic, service, ws_client, receiver, run_id):
    name = topic(3)
    dead_letters = topic(1)
    proc = service(name, DEAD_LETTER_TOPIC=dead_letters)
    client = ws_client(proc.ws_url)
    before = Counter({("before", seq): 1 for seq in range(12)})
    after = Counter({("after", seq): 1 for seq in range(30)})
    with JavaProducer(kafka.bootstrap, name, compression="lz4", transactional_id=f"tx-{run_id}") as producer:
        producer.begin()
        for seq in range(12):
            producer.send(value(run_id, "before", seq), partition=seq % 3)
        producer.commit()
        wait_until(lambda: tags_at_client(client, run_id) == before, 30, "the records before the bad batch")
        # A transaction held open: read_committed readers cannot fetch its batch until the
        # commit, so it can be corrupted on disk first (the broker serves the file as is).
        producer.begin()
        for seq in range(50):
            producer.send(value(run_id, "corrupt", seq, PAD[:200]), partition=0)
        producer.flush()
        segment = kafka.data_dir / "logs" / f"{name}-0" / "00000000000000000000.log"
        position, first, last = last_data_batch(segment)
        assert last - first == 49
        with open(segment, "r+b") as log:
            os.pwrite(log.fileno(), bytes([segment.read_bytes()[position + 70] ^ 0xFF]), position + 70)
        producer.commit()
        producer.begin()
        for seq in range(30):
            producer.send(value(run_id, "after", seq), partition=seq % 3)
        producer.commit()

    wait_until(lambda: tags_at_client(client, run_id) == before + after, 30,
               "every record after the bad batch, on every partition", lambda: str(tags_at_client(client, run_id)))
    gaps = [m for m in client.messages if m["type"] == "gap"]
    assert len(gaps) == 1
    (gap,) = gaps[0]["partitions"]
    assert (gap["topic"], gap["partition"], gap["from"], gap["to"], gap["reason"]) == \
        (name, 0, first, last, "undecodable")
    assert "CRC" in gap["error"]

    wait_until(lambda: committed(proc) >= 42, 30, "the good records exported and committed")
    good = before + after
    assert arrived_at_collector(receiver, run_id, sum(good.values())) == good  # nothing twice, nothing of the bad batch
    health = proc.health()["kafka"]
    for path in ("tail", "forward"):
        assert health[path]["undecodable_batches"] == 1
        skipped = health[path]["last_undecodable"]
        assert (skipped["partition"], skipped["from"], skipped["to"]) == (0, first, last)
        assert health[path]["state"] == "ok"

    # The forward path recorded the range in the dead-letter topic and committed past it.
    consumer = kafka.consumer(dead_letters, auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    try:
        letters = [m for m in consumer]
    finally:
        consumer.close()
    assert len(letters) == 1
    notice = json.loads(letters[0].value)
    assert (notice["type"], notice["topic"], notice["partition"], notice["from"], notice["to"]) == \
        ("undecodable_batch", name, 0, first, last)
    assert dict(letters[0].headers)["x-logger-service-error"].startswith(b"undecodable batch")

    with urllib.request.urlopen(proc.url + "/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'logger_undecodable_batches_total{path="tail"} 1.0' in metrics
    assert 'logger_undecodable_batches_total{path="forward"} 1.0' in metrics
    assert f'logger_undecodable_offsets_total{{path="forward"}} {float(last - first + 1)}' in metrics
    lines = [line for line in proc.log_path.read_text().splitlines() if "undecodable batch" in line]
    assert len(lines) == 2, lines  # one line per path, no reconnect loop
