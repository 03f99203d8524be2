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


def test_a_peer_that_does_not_read_loses_old_batches_and_is_told(pair):
    client, peer = pair
    serve(client, [])
    batch = encode_frame(b"b" * 8192)
    for _ in range(200):  # 1.6 MB against a 64 KB bound plus kernel buffers
        client.send(batch)
    assert client.pending_bytes <= (64 << 10) + 8200
    assert client.dropped > 0
    dropped = client.dropped
    frames = frames_until_dropped_notice(peer)
    notice = orjson.loads(frames[-1][1])
    assert notice == {"type": "dropped", "count": dropped}
    assert len(frames) - 1 + dropped == 200  # every batch either arrived or was counted


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


def test_pause_holds_batches_within_the_bound_and_resume_tells_what_was_lost(pair):
    client, peer = pair  # max_pending 64 KiB
    serve(client, [])
    client.pause()
    batch = encode_frame(b"p" * 8192)
    for _ in range(20):  # 160 KiB while paused
        client.send(batch)
    client.send(encode_frame(b"control"), droppable=False)  # control traffic still flows
    assert read_frame(peer) == (OP_TEXT, b"control")
    assert client.dropped > 0
    lost = client.dropped
    client.resume()
    frames = frames_until_dropped_notice(peer)
    assert orjson.loads(frames[-1][1]) == {"type": "dropped", "count": lost}
    assert len(frames) - 1 + lost == 20


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_a_client_sending_random_bytes_is_closed_cleanly_or_left_waiting(data):
    server, peer = socket.socketpair()
    client = WebSocketConnection(server, "fuzz", max_message_bytes=1024)
    serve(client, [])
    client._receive(data)  # what the I/O callback does with whatever arrived
    if client.closing:
        opcode, payload = read_frame(peer)
        # Our own codes for violations, or the peer's own (valid) code echoed back.
        assert opcode == OP_CLOSE and (close_code(payload) in (1002, 1003, 1007, 1009)
                                       or 1000 <= close_code(payload) <= 4999)
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
        hub.publish(big)
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
