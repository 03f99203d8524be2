"""WebSocketConnection over a gevent socketpair: framing on the wire, limits, slow peers.

What the server writes is read back with websockets' parser (``tests.ws_frames``).
The protocol's rules alone are tested in ``test_ws_protocol.py``.
"""

from __future__ import annotations

import struct
import time

import gevent
import orjson
import pytest
from gevent import socket

from logger.ws_protocol import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_frame
from logger.ws_transport import WebSocketConnection
from tests.ws_frames import close_code, masked, read_frame


class Recorder:
    """The connection's owner, as the hub would be: records what it is told, and answers a
    client that caught up after losing batches with a ``dropped`` notice."""

    def __init__(self, received: list[str]) -> None:
        self.received = received
        self.ended: list[WebSocketConnection] = []
        self.dropped = 0

    def message_received(self, connection: WebSocketConnection, text: str) -> None:
        self.received.append(text)

    def batch_dropped(self, connection: WebSocketConnection) -> None:
        self.dropped += 1

    def caught_up(self, connection: WebSocketConnection, lost: int) -> None:
        connection.send(encode_frame(orjson.dumps({"type": "dropped", "count": lost})), droppable=False)

    def connection_closed(self, connection: WebSocketConnection) -> None:
        self.ended.append(connection)


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
    client = WebSocketConnection(server, "test", max_pending=64 << 10, max_message_bytes=1024)
    yield client, peer
    server.close()
    peer.close()


def serve(client, received):
    """Start reading; returns a list that gets the client once it is closed."""
    owner = Recorder(received)
    client.start(owner)
    return owner.ended


def wait_for(condition, timeout: float = 3.0) -> None:
    with gevent.Timeout(timeout):
        while not condition():
            gevent.sleep(0.01)


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
    serve(client, [])
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
    yield WebSocketConnection(server, "tcp", max_pending=64 << 10), peer
    server.close()
    peer.close()


def test_a_backlog_drains_in_order_intact_and_keeps_every_control_frame(tcp_pair):
    # Numbered batches of odd sizes (so writes end mid-frame), with a ping after
    # every tenth, far past the bound: what arrives is in order and whole, every
    # ping arrives, and every batch either arrives or is counted as dropped.
    client, peer = tcp_pair
    sent_pings = 0
    serve(client, [])
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
    client = WebSocketConnection(server, "stuck", max_pending=64 << 10, stall_timeout_s=0.2)
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
    client = WebSocketConnection(server, "split")
    received: list[str] = []
    frames = masked(b"first") + masked(b"second" * 30)
    client.start(Recorder(received), initial=frames[:3])
    for i in range(3, len(frames)):  # the rest one byte at a time
        peer.sendall(frames[i:i + 1])
        gevent.sleep(0)
    wait_for(lambda: len(received) == 2)
    assert received == ["first", "second" * 30]
    server.close()
    peer.close()


def test_pause_holds_the_newest_batches_within_the_bound_and_resume_tells_what_was_lost(pair):
    client, peer = pair  # max_pending 64 KiB
    serve(client, [])
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
    # Codes a peer must not send (RFC 6455 §7.4.1-2): a protocol error, answered 1002 (issue 12).
    (999, 1002), (1004, 1002), (1005, 1002), (1006, 1002), (1015, 1002), (2999, 1002), (5000, 1002),
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

from logger.ws_protocol import ProtocolViolation, close_frame, parse_frame  # noqa: E402



SENDABLE = {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}  # RFC 6455 §7.4


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_a_client_sending_random_bytes_is_closed_cleanly_or_left_waiting(data):
    server, peer = socket.socketpair()
    client = WebSocketConnection(server, "fuzz", max_message_bytes=1024)
    serve(client, [])
    client._receive(data)  # what the I/O callback does with whatever arrived
    if client.closing:
        opcode, payload = read_frame(peer)
        # Our own codes for violations, a plain 1000, or the peer's own code echoed back
        # when it is one a peer may send (never 1004-1006, 1015, 1016-2999).
        code = close_code(payload)
        assert opcode == OP_CLOSE and (code in (1000, 1002, 1003, 1007, 1009) or code in SENDABLE), code
    client.abort()
    peer.close()


# -- bounds on what one peer can cost (issue 12) ---------------------------------------


def test_a_message_in_too_many_fragments_is_closed_with_1008():
    server, peer = socket.socketpair()
    client = WebSocketConnection(server, "fragments", max_fragments=16)
    ended = serve(client, [])
    # Empty continuation frames never reach the byte cap: only the fragment count stops them.
    peer.sendall(masked(b"a", fin=False) + masked(b"", opcode=0, fin=False) * 200)
    with gevent.Timeout(5):
        opcode, payload = read_frame(peer)
    assert opcode == OP_CLOSE and close_code(payload) == 1008
    peer.close()
    wait_for(lambda: ended == [client])


def test_fragments_are_summed_as_they_come_and_the_total_is_capped(pair):
    client, peer = pair  # max_message_bytes 1024
    serve(client, [])
    peer.sendall(masked(b"x" * 100, fin=False) + masked(b"y" * 100, opcode=0, fin=False) * 10)
    with gevent.Timeout(5):
        opcode, payload = read_frame(peer)
    assert opcode == OP_CLOSE and close_code(payload) == 1009


def test_a_frame_trickled_in_is_appended_to_one_buffer_not_copied_per_read(pair):
    client, _ = pair
    received: list[str] = []
    serve(client, received)
    frame = masked(b"z" * 1000)
    client._receive(frame[:10])
    inbox = client.protocol._inbox
    for i in range(10, len(frame) - 1):
        client._receive(frame[i:i + 1])
        assert client.protocol._inbox is inbox, "the same buffer grows; nothing is re-copied"
    client._receive(frame[-1:])
    assert received == ["z" * 1000] and client.protocol._inbox is None


def fill_until_backlogged(client, peer) -> None:
    """Send batches until the client has a writer (the peer does not read)."""
    batch = encode_frame(b"f" * 8192)
    while client._backlog is None:
        client.send(batch)


def test_pings_from_a_peer_that_does_not_read_are_answered_by_one_pong_with_the_latest_payload(tcp_pair):
    client, peer = tcp_pair
    serve(client, [])
    fill_until_backlogged(client, peer)
    for number in range(2000):
        client._receive(masked(b"%d" % number, OP_PING))
    pongs_queued = sum(1 for entry in client._backlog.queue if entry[0][:1] == bytes([0x80 | OP_PONG]))
    assert pongs_queued == 1, "pongs are coalesced (RFC 6455 §5.5.3)"
    assert len(client._backlog.queue) < 20
    pongs = []
    with gevent.Timeout(10):
        while not client.closed and client._backlog is not None or not pongs:
            opcode, payload = read_frame(peer)
            if opcode == OP_PONG:
                pongs.append(payload)
    assert pongs == [b"1999"]


def test_a_peer_whose_unread_replies_pass_the_bound_is_closed_with_1008(tcp_pair):
    client, peer = tcp_pair  # max_pending 64 KiB
    fill_until_backlogged(client, peer)
    reply = encode_frame(b'{"type":"pong"}')
    sent = 0
    while not client.closing:
        client.send(reply, droppable=False)
        sent += 1
        assert sent < 10_000, "never closed"
    # Each queued reply is charged its bytes plus its bookkeeping: far fewer than 64 KiB / 17 fit.
    assert sent < (64 << 10) // 17
    assert len(client._backlog.queue) <= 2  # the partly sent head and the close frame
    codes = []
    with gevent.Timeout(10):
        while not codes:
            opcode, payload = read_frame(peer)
            if opcode == OP_CLOSE:
                codes.append(close_code(payload))
    assert codes == [1008]


def test_dropping_batches_behind_many_queued_replies_does_not_walk_them(tcp_pair):
    client, peer = tcp_pair
    fill_until_backlogged(client, peer)
    for _ in range(300):  # queued control replies, interleaved with batches
        client.send(encode_frame(b"r"), droppable=False)
    batch = encode_frame(b"b" * 4096)
    for _ in range(200):
        client.send(batch)
    assert client.pending_bytes <= (64 << 10)
    assert len(client._backlog.droppable) <= (64 << 10) // 4096
    assert sum(1 for entry in client._backlog.queue if entry[1]) == len(client._backlog.droppable)


def test_a_replay_is_encoded_as_the_peer_reads_and_live_batches_wait_behind_it(tcp_pair):
    client, peer = tcp_pair  # small kernel buffers, 64 KiB bound
    serve(client, [])
    encoded = []

    def chunks():
        for number in range(200):
            encoded.append(number)
            yield encode_frame(b"R%04d" % number + b"r" * 2000)

    client.replay(chunks())
    gevent.sleep(0.2)
    assert len(encoded) < 100, "only what the socket took, and a little more, was encoded"
    live = [encode_frame(b"L%04d" % number + b"l" * 3000) for number in range(40)]
    for frame in live:
        client.send(frame)  # held behind the replay, within the bound
    assert client._hold.size <= (64 << 10)
    got = []
    with gevent.Timeout(20):
        while True:
            opcode, payload = read_frame(peer)
            got.append(payload[:5])
            if payload.startswith(b'{"type":"dropped"'):
                break
    replayed = [p for p in got if p.startswith(b"R")]
    assert replayed == [b"R%04d" % n for n in range(200)]
    live_got = [p for p in got if p.startswith(b"L")]
    assert live_got and got.index(b"R0199") < got.index(live_got[0])
    assert live_got == sorted(live_got)


@pytest.mark.parametrize("payload, code", [
    (struct.pack("!H", 999), 1002),
    (struct.pack("!H", 1005), 1002),
    (struct.pack("!H", 1006), 1002),
    (struct.pack("!H", 1015), 1002),
    (struct.pack("!H", 2999), 1002),
    (struct.pack("!H", 5000), 1002),
    (b"\x03", 1002),                              # a 1-byte close payload
    (struct.pack("!H", 1000) + b"\xff\xfe", 1007),  # a reason that is not UTF-8
    (struct.pack("!H", 3000) + b"bye", 3000),       # valid: echoed
    (b"", 1000),
])
def test_close_frames_are_checked_as_rfc_6455_section_7_4_says(pair, payload, code):
    client, peer = pair
    serve(client, [])
    peer.sendall(masked(payload, OP_CLOSE))
    with gevent.Timeout(5):
        opcode, answer = read_frame(peer)
    assert opcode == OP_CLOSE and close_code(answer) == code


def test_slow_messages_are_handled_a_slice_at_a_time_letting_others_run(pair):
    client, peer = pair
    events: list[str] = []

    def slow_handler(_client, text: str) -> None:
        time.sleep(0.003)  # a costly message (a new regex, say): blocks the loop while it runs
        events.append(text)

    owner = Recorder([])
    owner.message_received = lambda _client, text: slow_handler(_client, text)
    client.start(owner)
    ticker_stop = []

    def ticker() -> None:
        while not ticker_stop:
            events.append("tick")
            gevent.sleep(0)
    gevent.spawn(ticker)
    peer.sendall(b"".join(masked(b"m%02d" % i) for i in range(20)))
    wait_for(lambda: sum(1 for e in events if e != "tick") == 20)
    ticker_stop.append(True)
    messages = [e for e in events if e != "tick"]
    assert messages == ["m%02d" % i for i in range(20)]
    first, last = events.index("m00"), events.index("m19")
    assert "tick" in events[first:last], "the loop ran others between slices"


def test_the_hub_counts_what_a_slow_client_lost_and_tells_it_once_it_caught_up():
    """Drops reach the hub through the connection's owner interface: counted once per
    fan-out for Prometheus, and the ``dropped`` notice is the hub's message."""
    from logger import metrics
    from logger.config import Settings
    from logger.hub import Hub
    from tests.unit.test_filters_replay import rec

    server, peer = socket.socketpair()
    client = WebSocketConnection(server, "slow", max_pending=64 << 10)
    hub = Hub(Settings())
    hub.attach(client)
    before = metrics.DROPPED_BATCHES._value.get()
    big = [rec(n, message="m" * 4000) for n in range(10)]
    for _ in range(40):  # ~40 KB per batch against a 64 KiB bound: most are dropped
        hub.broadcast(big)
    lost = metrics.DROPPED_BATCHES._value.get() - before
    assert lost > 0 and hub._drops_unreported == 0, "reported to Prometheus by the fan-out"
    frames = frames_until_dropped_notice(peer)
    assert orjson.loads(frames[-1][1]) == {"type": "dropped", "count": lost}
    logs = [f for f in frames if f[1].startswith(b'{"type":"logs"')]
    assert len(logs) + lost == 40
    client.abort()
    peer.close()


def test_bytes_read_past_the_upgrade_are_parsed_a_slice_at_a_time_letting_others_run():
    server, peer = socket.socketpair()
    client = WebSocketConnection(server, "initial")
    received: list[str] = []
    ticks: list[int] = []

    def ticker() -> None:
        while len(received) < 8000:
            ticks.append(len(received))
            gevent.sleep(0)
    gevent.spawn(ticker)
    gevent.sleep(0)
    initial = b"".join(masked(b"%d" % i) for i in range(8000))  # ~64 KiB of tiny messages
    assert len(initial) > 8 * 4096
    client.start(Recorder(received), initial=initial)
    left = client._unhandled
    assert left is not None and type(left[-1]) is bytes, "input not parsed yet waits, as bytes, for the next turn"
    assert client.protocol._inbox is None or len(client.protocol._inbox) < 4096
    wait_for(lambda: len(received) == 8000)
    assert received == ["%d" % i for i in range(8000)]
    assert any(0 < n < 8000 for n in ticks), "the loop ran others while the initial bytes were parsed"
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
