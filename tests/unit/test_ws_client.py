"""WebSocketClient over a gevent socketpair: framing, limits, slow peers."""

from __future__ import annotations

import os
import struct

import gevent
import orjson
import pytest
from gevent import socket

from logger.ws_client import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WebSocketClient,
    encode_frame,
)


def masked(payload: bytes, opcode: int = OP_TEXT, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask + body


def read_frame(sock) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data
    first, second = exactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    return first & 0x0F, exactly(length)


def frames_until_dropped_notice(peer) -> list[tuple[int, bytes]]:
    """Every frame the peer reads, up to and including the ``dropped`` notice."""
    frames = []
    with gevent.Timeout(5):
        while True:
            frames.append(read_frame(peer))
            if frames[-1][1].startswith(b'{"type":"dropped"'):
                return frames


@pytest.fixture
def pair():
    server, peer = socket.socketpair()
    client = WebSocketClient(server, "test", max_pending=64 << 10, max_message_bytes=1024)
    yield client, peer
    server.close()
    peer.close()


def serve(client, received):
    """Start reading; returns a list that gets the client once it is closed."""
    ended: list = []
    client.start(lambda _client, text: received.append(text), ended.append)
    return ended


def wait_for(condition, timeout: float = 3.0) -> None:
    with gevent.Timeout(timeout):
        while not condition():
            gevent.sleep(0.01)


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_frames_of_every_length_arrive_intact(pair, size):
    client, peer = pair
    payload = b"a" * size
    gevent.spawn(client.send, encode_frame(payload))
    assert read_frame(peer) == (OP_TEXT, payload)


def test_text_messages_reach_the_callback_and_ping_gets_pong(pair):
    client, peer = pair
    received: list[str] = []
    ended = serve(client, received)
    peer.sendall(masked(b"hel", fin=False) + masked(b"lo", opcode=0) + masked(b"x1", OP_PING))
    assert read_frame(peer) == (OP_PONG, b"x1")
    wait_for(lambda: received)
    assert received == ["hello"]
    peer.sendall(masked(struct.pack("!H", 1000), OP_CLOSE))
    opcode, payload = read_frame(peer)
    assert opcode == OP_CLOSE and close_code(payload) == 1000
    wait_for(lambda: ended == [client])
    assert client.closed and peer.recv(10) == b"", "the server hung up after the close handshake"


@pytest.mark.parametrize("frame, code", [
    (masked(b"x" * 2000), 1009),              # larger than max_message_bytes
    (masked(b"\x00\x01", OP_BINARY), 1003),   # binary is not accepted
    (masked(b"\xff\xfe", OP_TEXT), 1007),     # invalid UTF-8
    (b"\x81\x02hi", 1002),                    # unmasked client frame
    (masked(b"x", opcode=0x3), 1002),         # reserved opcode
    (bytes([0xC1]) + masked(b"x")[1:], 1002),  # RSV1 without an extension
])
def test_misbehaving_peers_are_closed_with_the_right_code(pair, frame, code):
    client, peer = pair
    ended = serve(client, [])
    peer.sendall(frame)
    opcode, payload = read_frame(peer)
    assert opcode == OP_CLOSE and close_code(payload) == code
    peer.close()  # the server drains our input until we hang up
    wait_for(lambda: ended == [client])


def numbered(number: int, size: int = 8192) -> bytes:
    return encode_frame(b"%05d" % number + b"b" * (size - 5))


def batch_numbers(frames: list[tuple[int, bytes]]) -> list[int]:
    return [int(payload[:5]) for opcode, payload in frames if opcode == OP_TEXT and not payload.startswith(b"{")]


def assert_oldest_dropped(arrived: list[int], sent: int, dropped: int) -> None:
    """What a slow client loses is one run of the oldest queued batches: what it got
    ends with the newest batch, and the missing ones are contiguous and counted."""
    assert dropped > 0
    assert arrived == sorted(arrived) and arrived[-1] == sent - 1, "the newest batch arrives"
    missing = sorted(set(range(sent)) - set(arrived))
    assert len(missing) == dropped, "every lost batch is counted, and only those"
    assert missing == list(range(missing[0], missing[0] + dropped)), "one run of old batches, not scattered ones"
    assert arrived[-(sent - 1 - missing[-1]):] == list(range(missing[-1] + 1, sent)), "everything newer arrives"


def test_a_peer_that_does_not_read_loses_its_oldest_batches_keeps_the_newest_and_is_told(pair):
    client, peer = pair  # max_pending 64 KiB
    for number in range(200):  # 1.6 MB against a 64 KB bound plus kernel buffers
        client.send(numbered(number))
    assert client.pending_bytes <= (64 << 10) + 8200
    dropped = client.dropped
    frames = frames_until_dropped_notice(peer)
    assert orjson.loads(frames[-1][1]) == {"type": "dropped", "count": dropped}
    arrived = batch_numbers(frames[:-1])
    assert_oldest_dropped(arrived, 200, dropped)
    assert len(arrived) - 1 >= (64 << 10) // 8192 - 1, "the bound's worth of newest batches is kept, not less"


@pytest.fixture
def tcp_pair():
    """Loopback TCP with small buffers: unlike a socketpair, writes end mid-frame."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    yield WebSocketClient(server, "tcp", max_pending=64 << 10), peer
    server.close()
    peer.close()


def test_a_backlog_drains_in_order_intact_and_keeps_every_control_frame(tcp_pair):
    # Numbered batches of odd sizes (so writes end mid-frame), with a ping after
    # every tenth, far past the bound: what arrives is in order and whole, every
    # ping arrives, and every batch either arrives or is counted as dropped.
    client, peer = tcp_pair
    sent_pings = 0
    for number in range(300):
        client.send(encode_frame(b"%05d" % number + b"x" * (5000 + 37 * number)))
        if number % 10 == 9:
            client.send(encode_frame(b"%d" % number, OP_PING), droppable=False)
            sent_pings += 1
    dropped = client.dropped
    assert dropped > 0 and client.pending_bytes <= (64 << 10) + 20_000
    frames = frames_until_dropped_notice(peer)
    batches = [int(payload[:5]) for opcode, payload in frames[:-1] if opcode == OP_TEXT]
    assert batches == sorted(batches)
    assert all(len(payload) == 5 + 5000 + 37 * int(payload[:5]) for opcode, payload in frames if opcode == OP_TEXT
               and not payload.startswith(b"{"))
    assert sum(1 for opcode, _ in frames if opcode == OP_PING) == sent_pings
    assert len(batches) + dropped == 300


def test_a_peer_that_takes_nothing_for_too_long_is_closed_with_1008():
    server, peer = socket.socketpair()
    client = WebSocketClient(server, "stuck", max_pending=64 << 10, stall_timeout_s=0.2)
    batch = encode_frame(b"s" * 8192)
    for _ in range(100):
        client.send(batch)
    gevent.sleep(0.3)
    client.check_stall()  # as the hub's keepalive does every second
    assert client.closing
    codes = []
    with gevent.Timeout(5):
        while True:
            opcode, payload = read_frame(peer)
            if opcode == OP_CLOSE:
                codes.append(close_code(payload))
                break
    assert codes == [1008]
    server.close()
    peer.close()


def test_frames_split_across_reads_and_bytes_read_before_the_upgrade_handed_over():
    server, peer = socket.socketpair()
    client = WebSocketClient(server, "split")
    received: list[str] = []
    frames = masked(b"first") + masked(b"second" * 30)
    client.start(lambda _c, text: received.append(text), lambda _c: None, initial=frames[:3])
    for i in range(3, len(frames)):  # the rest one byte at a time
        peer.sendall(frames[i:i + 1])
        gevent.sleep(0)
    wait_for(lambda: len(received) == 2)
    assert received == ["first", "second" * 30]
    server.close()
    peer.close()


def test_pause_holds_the_newest_batches_within_the_bound_and_resume_tells_what_was_lost(pair):
    client, peer = pair  # max_pending 64 KiB
    client.pause()
    for number in range(20):  # 160 KiB while paused
        client.send(numbered(number))
    client.send(encode_frame(b"control"), droppable=False)  # control traffic still flows
    assert read_frame(peer) == (OP_TEXT, b"control")
    lost = client.dropped
    assert lost == 20 - (64 << 10) // len(numbered(0)), "exactly what does not fit the bound is dropped"
    client.resume()
    frames = frames_until_dropped_notice(peer)
    assert orjson.loads(frames[-1][1]) == {"type": "dropped", "count": lost}
    assert batch_numbers(frames[:-1]) == list(range(lost, 20)), "the oldest went, the newest came"


def test_a_paused_client_gets_nothing_until_it_resumes(pair):
    client, peer = pair
    client.pause()
    client.send(numbered(0, 100))
    client.send(numbered(1, 100))
    client.send(encode_frame(b"marker"), droppable=False)
    assert read_frame(peer) == (OP_TEXT, b"marker"), "no batch went out before the control frame"
    client.resume()
    assert [read_frame(peer)[1][:5] for _ in range(2)] == [b"00000", b"00001"]
    assert client.dropped == 0


@pytest.mark.parametrize("pieces, delivered", [
    ([1024], True),  # exactly max_message_bytes
    ([1025], False),  # one byte more
    ([512, 512], True),  # the same, fragmented
    ([512, 513], False),
    ([1000, 24, 0], True),
])
def test_a_message_of_exactly_the_limit_is_accepted_and_one_byte_more_closes_1009(pair, pieces, delivered):
    client, peer = pair  # max_message_bytes 1024
    received: list[str] = []
    ended = serve(client, received)
    frames = b"".join(masked(b"m" * size, OP_TEXT if i == 0 else 0, fin=i == len(pieces) - 1)
                      for i, size in enumerate(pieces))
    peer.sendall(frames + masked(b"after", OP_PING))
    opcode, payload = read_frame(peer)
    if delivered:
        assert (opcode, payload) == (OP_PONG, b"after")
        assert received == ["m" * sum(pieces)]
    else:
        assert opcode == OP_CLOSE and close_code(payload) == 1009 and received == []
        peer.close()
        wait_for(lambda: ended == [client])


@pytest.mark.parametrize("sent, answered", [
    (1000, 1000), (1001, 1001), (1003, 1003), (1007, 1007), (1011, 1011), (1014, 1014), (3000, 3000),
    (4999, 4999),
    # Codes a peer must not send (RFC 6455 §7.4.1-2): answered with a plain 1000.
    (999, 1000), (1004, 1000), (1005, 1000), (1006, 1000), (1015, 1000), (2999, 1000), (5000, 1000),
    (None, 1000),  # a close frame without a code
])
def test_a_peers_close_is_answered_with_its_code_when_that_code_may_be_sent(pair, sent, answered):
    client, peer = pair
    ended = serve(client, [])
    peer.sendall(masked(b"" if sent is None else struct.pack("!H", sent), OP_CLOSE))
    opcode, payload = read_frame(peer)
    assert opcode == OP_CLOSE and close_code(payload) == answered
    wait_for(lambda: ended == [client])


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from logger.ws_client import ProtocolViolation, close_frame, parse_frame  # noqa: E402


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_from_a_client_never_escape_as_an_exception(data):
    """Anything a client sends either parses, waits for more, or is a ProtocolViolation
    carrying a close code we may send."""
    offset = 0
    try:
        while (frame := parse_frame(data, offset, 1024)) is not None:
            offset = frame[3]
    except ProtocolViolation as exc:
        assert exc.code in (1002, 1003, 1007, 1009)


SENDABLE = {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}  # RFC 6455 §7.4


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_a_client_sending_random_bytes_is_closed_cleanly_or_left_waiting(data):
    server, peer = socket.socketpair()
    client = WebSocketClient(server, "fuzz", max_message_bytes=1024)
    client.start(lambda _c, _t: None, lambda _c: None)
    client._receive(data)  # what the I/O callback does with whatever arrived
    if client.closing:
        opcode, payload = read_frame(peer)
        # Our own codes for violations, a plain 1000, or the peer's own code echoed back
        # when it is one a peer may send (never 1004-1006, 1015, 1016-2999).
        code = close_code(payload)
        assert opcode == OP_CLOSE and (code in (1000, 1002, 1003, 1007, 1009) or code in SENDABLE), code
    client.abort()
    peer.close()


def frame_head(opcode: int, length: int, fin: bool = True, masked_bit: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked_bit else 0
    if length < 126:
        return struct.pack("!BB", first, mask_bit | length)
    if length < 65536:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    return struct.pack("!BBQ", first, mask_bit | 127, length)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 40_000, 65535, 65536, 70_000])
def test_client_frames_of_every_length_form_parse_intact(size):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = masked(payload)
    assert parse_frame(b"xx" + frame, 2, 1 << 20) == (True, OP_TEXT, payload, 2 + len(frame))
    assert parse_frame(frame[:-1], 0, 1 << 20) is None, "one byte short: wait for more"


@pytest.mark.parametrize("head, reason", [
    (b"\x81\x02", "client frames must be masked"),  # refused from its first two bytes
    (b"\x81\x03", "client frames must be masked"),  # (an odd length sets the low bit, not the mask bit)
    (b"\xc1\x82", "reserved bits set without an extension"),
    (b"\x83\x80", "unknown opcode 3"),
    (frame_head(OP_PING, 126), "control frames must be short and unfragmented"),
    (frame_head(OP_CLOSE, 126), "control frames must be short and unfragmented"),
    (frame_head(OP_PONG, 5, fin=False), "control frames must be short and unfragmented"),
])
def test_protocol_errors_are_found_in_the_header_with_their_reason(head, reason):
    with pytest.raises(ProtocolViolation) as caught:
        parse_frame(head, 0, 1 << 20)
    assert (caught.value.code, caught.value.reason) == (1002, reason)


def test_a_control_frame_may_carry_exactly_125_bytes():
    frame = masked(b"p" * 125, OP_PING)
    assert parse_frame(frame, 0, 1024)[2] == b"p" * 125


@pytest.mark.parametrize("head", [frame_head(OP_TEXT, 2000), frame_head(OP_TEXT, 70_000)])
def test_a_too_long_message_is_refused_from_its_length_field_alone(head):
    with pytest.raises(ProtocolViolation) as caught:
        parse_frame(head, 0, 1024)
    assert caught.value.code == 1009


def test_server_frames_keep_their_opcode_in_every_length_form():
    for opcode in (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        for size in (10, 200, 70_000):
            frame = encode_frame(b"z" * size, opcode)
            assert frame[0] == 0x80 | opcode, (opcode, size)


def test_a_close_frame_carries_the_code_and_at_most_123_bytes_of_reason():
    frame = close_frame(1008, "é" + "x" * 200)
    assert frame[1] == 125 and struct.unpack("!H", frame[2:4])[0] == 1008
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
