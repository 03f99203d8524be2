"""WebSocket clients at the edges: slow, stalled, silent, too many, misbehaving, a thousand at once."""

from __future__ import annotations

import json
import socket
import time

import pytest

from devstack.collector import OtlpReceiver
from tests.conftest import metric, produce, scrape
from tests.ws_frames import Close, FrameReader, Opcode
from tests.wsload import ClientPool, RawClient, handshake, masked_frame, parse_frames

BIG = "x" * 2000


def big_values(count: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"seq": i, "message": BIG}).encode() for i in range(start, start + count)]


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return data, True
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        return data, True


def close_code_in(data: bytes) -> int | None:
    """The close code of the last frame in a server stream (read from its start, by
    websockets' parser), if it is a close frame."""
    reader = FrameReader()
    reader.feed(data)
    frames = reader.frames()
    if not frames or frames[-1].opcode is not Opcode.CLOSE:
        return None
    return Close.parse(bytes(frames[-1].data)).code


def test_a_stalled_client_loses_batches_and_is_closed_as_slow_while_others_get_everything(kafka, topic, service):
    name = topic(1)
    proc = service(name, WS_CLIENT_BUFFER_BYTES="65536", WS_STALL_TIMEOUT_S="2", TAIL_BATCH_SIZE="20")
    healthy = ClientPool("127.0.0.1", proc.port, 2)
    stalled, status, _ = handshake("127.0.0.1", proc.port, rcvbuf=4096)
    assert status == 101
    try:
        produce(kafka, name, big_values(4000))  # ~8 MB: far past every buffer on the way
        healthy.wait(lambda: all(len(c.records) == 4000 for c in healthy.clients), 60, "all records")
        for client in healthy.clients:
            assert [r["attributes"]["seq"] for r in client.records] == list(range(4000))
        proc.wait_until(lambda: proc.health()["clients"] == 2, 20, "the stalled client to be closed")
        samples = scrape(proc)
        assert metric(samples, "logger_ws_dropped_batches_total") > 0, "it lost batches before it was given up"
        assert metric(samples, "logger_ws_closed_total", reason="slow") == 1, "closed as too slow (1008)"
        assert metric(samples, "logger_ws_closed_total", reason="unresponsive") == 0
    finally:
        healthy.close()
        stalled.close()


def test_clients_that_never_read_do_not_delay_the_collector(kafka, topic, service):
    # The stall timeout and pings are far off: the stalled clients stay connected, backed up,
    # for the whole test. If their full sockets held up the worker, the forward path would
    # stop with them until WS_STALL_TIMEOUT_S (60 s) closed them, past the 30 s deadline.
    name = topic(1)
    with OtlpReceiver() as collector:
        proc = service(name, OTLP_ENDPOINT=collector.endpoint, WS_CLIENT_BUFFER_BYTES="65536",
                       WS_STALL_TIMEOUT_S="60", WS_PING_INTERVAL_S="60", TAIL_BATCH_SIZE="20")
        stalled = []
        try:
            for _ in range(20):
                sock, status, _ = handshake("127.0.0.1", proc.port, rcvbuf=4096)
                assert status == 101
                stalled.append(sock)
            produce(kafka, name, big_values(4000))  # ~8 MB: every stalled client backs up within the first MB
            records = collector.wait_for(4000, timeout=30)
            assert sorted(r["attributes"]["seq"] for r in records) == list(range(4000))
            assert proc.health()["clients"] == 20, "still connected and stalled: not closed to free the worker"
            assert metric(scrape(proc), "logger_ws_dropped_batches_total") > 0, "the clients did back up"
        finally:
            for sock in stalled:
                sock.close()


def test_a_client_that_stops_reading_is_told_how_many_batches_it_lost(kafka, topic, service):
    name = topic(1)
    proc = service(name, WS_CLIENT_BUFFER_BYTES="65536", WS_STALL_TIMEOUT_S="60", TAIL_BATCH_SIZE="20")
    reference = ClientPool("127.0.0.1", proc.port, 1)
    paused, status, rest = handshake("127.0.0.1", proc.port, rcvbuf=4096)
    assert status == 101
    try:
        produce(kafka, name, big_values(4000))
        reference.wait(lambda: len(reference.clients[0].records) == 4000, 60, "the reference client")
        batches = sum(1 for m in reference.clients[0].messages if m["type"] == "logs")
        # Now read the paused client's backlog: what it got, plus what it was told it lost.
        paused.setblocking(False)
        client = RawClient(paused, bytearray(rest))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = paused.recv(1 << 16)
            except BlockingIOError:
                chunk = b""
                time.sleep(0.01)
            client.buffer += chunk
            parse_frames(client)
            got = sum(1 for m in client.messages if m["type"] == "logs")
            lost = sum(m["count"] for m in client.messages if m["type"] == "dropped")
            if got + lost == batches:
                break
        assert lost > 0, "the pause was long enough to lose batches"
        assert got + lost == batches
        seqs = [r["attributes"]["seq"] for r in client.records]
        assert seqs == sorted(seqs), "what arrived is in order"
    finally:
        reference.close()
        paused.close()


def test_beyond_the_client_limit_the_upgrade_is_answered_503(kafka, topic, service):
    proc = service(topic(1), WS_MAX_CLIENTS="3")
    pool = ClientPool("127.0.0.1", proc.port, 3)
    try:
        sock, status, _ = handshake("127.0.0.1", proc.port)
        sock.close()
        assert status == 503
        assert proc.health()["clients"] == 3, "HTTP still answers while the worker is full"
    finally:
        pool.close()


@pytest.mark.parametrize("frame, code", [
    (masked_frame(b"x" * 70_000), 1009),          # larger than WS_MAX_MESSAGE_BYTES (64 KiB)
    (masked_frame(b"\x00\x01", opcode=0x2), 1003),  # binary
    (masked_frame(b"\xc3\x28 not UTF-8"), 1007),    # a text message that is not UTF-8
    (b"GARBAGE BYTES\r\n\r\n", 1002),              # not WebSocket framing at all
])
def test_misbehaving_clients_are_closed_and_nobody_else_notices(kafka, topic, service, ws_client, frame, code):
    name = topic(1)
    proc = service(name)
    bystander = ws_client(proc.ws_url)
    sock, status, rest = handshake("127.0.0.1", proc.port)
    assert status == 101
    sock.sendall(frame)
    data, closed = read_until_closed(sock, 10)
    sock.close()
    assert closed and close_code_in(rest + data) == code
    produce(kafka, name, [b'{"message": "still here"}'])
    assert bystander.wait_records(1)[0]["message"] == "still here"


def test_a_client_that_never_answers_pings_is_closed(kafka, topic, service):
    proc = service(topic(1), WS_PING_INTERVAL_S="0.5")
    silent = ClientPool("127.0.0.1", proc.port, 1, answer_pings=False)
    answering = ClientPool("127.0.0.1", proc.port, 1)
    try:
        silent.wait(lambda: silent.clients[0].close_code is not None or silent.clients[0].eof, 10, "the close")
        assert silent.clients[0].close_code == 1011
        # Three more ping intervals, each ping answered: the answering client is still there.
        answered = answering.clients[0].pings_answered
        answering.wait(lambda: answering.clients[0].pings_answered >= answered + 3, 10, "three more pings")
        assert answering.clients[0].close_code is None and not answering.clients[0].eof
    finally:
        silent.close()
        answering.close()


def test_a_thousand_clients_all_receive_the_same_batches(kafka, topic, service, run_id):
    name = topic(1)
    proc = service(name)
    pool = ClientPool("127.0.0.1", proc.port, 1000)
    try:
        assert proc.health()["clients"] == 1000
        produce(kafka, name, [json.dumps({"seq": i, "message": f"m{i}"}).encode() for i in range(200)])
        pool.wait(lambda: all(len(c.records) == 200 for c in pool.clients), 60, "every client to get 200 records")
        shapes = {tuple(tuple(r["offset"] for r in m["records"]) for m in c.messages if m["type"] == "logs")
                  for c in pool.clients}
        assert len(shapes) == 1, "every client got the very same batches"
    finally:
        pool.close()
