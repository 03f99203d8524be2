"""ServerProtocol with plain byte strings: no socket, no gevent.

The conformance cases are modelled on the Autobahn test suite (sections 5:
fragmentation, 6: UTF-8, 7: close handling); ``tests/integration/test_conformance.py``
sends the same cases to the real server under Gunicorn. What the protocol
writes is read back with websockets' parser.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logger.ws_protocol import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Ping,
    Pong,
    ProtocolError,
    ProtocolViolation,
    ServerProtocol,
    State,
    TextMessage,
    close_frame,
    parse_frame,
)
from tests.ws_conformance import CLOSE_CASES, FRAGMENTATION_CASES, UTF8_CASES, Case
from tests.ws_frames import Close as WsClose
from tests.ws_frames import FrameReader, Opcode, close_code, masked


def written(protocol: ServerProtocol) -> list[tuple[Opcode, bytes]]:
    reader = FrameReader()
    for data in protocol.data_to_send():
        reader.feed(data)
    return [(frame.opcode, bytes(frame.data)) for frame in reader.frames()]


def run(case: Case) -> tuple[list[str], int | None, ServerProtocol]:
    """Feed a case frame by frame, answering pings as a transport would; returns the text
    messages delivered, the code of the close frame written (None if none) and the protocol."""
    protocol = ServerProtocol(max_message_bytes=1024, max_fragments=16)
    texts: list[str] = []
    code = None
    pings = 0
    for frame in case.frames:
        protocol.receive_data(frame)
        events = protocol.events_received()
        texts += [e.text for e in events if isinstance(e, TextMessage)]
        pings += sum(1 for e in events if isinstance(e, Ping) and code is None)
        for opcode, payload in written(protocol):
            assert code is None, f"{opcode.name} written after our close frame"
            if opcode is Opcode.CLOSE:
                code = close_code(payload)
            else:
                assert opcode is Opcode.PONG and pings, "a pong answers a ping"
                pings -= 1
    assert code is not None or pings == 0, "every ping answered"
    return texts, code, protocol


@pytest.mark.parametrize("case", FRAGMENTATION_CASES + UTF8_CASES + CLOSE_CASES, ids=lambda case: case.name)
def test_autobahn_style_case(case: Case):
    texts, code, protocol = run(case)
    assert texts == case.messages
    assert code == case.close_code
    if case.close_code is not None:
        assert protocol.state is State.CLOSING


def test_a_connection_starts_open_and_ends_closed():
    protocol = ServerProtocol()
    assert protocol.state is State.OPEN
    protocol.connection_lost()
    assert protocol.state is State.CLOSED
    protocol.receive_data(masked(b"ignored"))
    assert protocol.events_received() == [] and not protocol.data_to_send()


def test_events_in_order_and_the_pong_in_data_to_send():
    protocol = ServerProtocol()
    protocol.receive_data(masked(b"hel", fin=False) + masked(b"p1", OP_PING) + masked(b"lo", 0, fin=True)
                          + masked(b"", OP_PONG))
    assert protocol.events_received() == [Ping(b"p1"), TextMessage("hello"), Pong(b"")]
    assert written(protocol) == [(Opcode.PONG, b"p1")]
    assert protocol.events_received() == [] and not protocol.data_to_send()


def test_every_ping_is_answered_in_order():
    protocol = ServerProtocol()
    protocol.receive_data(b"".join(masked(b"%d" % n, OP_PING) for n in range(500)))
    assert len(protocol.events_received()) == 500
    assert written(protocol) == [(Opcode.PONG, b"%d" % n) for n in range(500)]


def test_our_close_then_the_peers_answer():
    protocol = ServerProtocol()
    frame = protocol.send_close(1001, "bye")
    assert frame is not None and protocol.state is State.CLOSING
    assert protocol.send_close(1000) is None, "one close frame only"
    protocol.receive_data(masked(b"late message") + masked(b"x", OP_PING))
    assert [type(e) for e in protocol.events_received()] == [Ping], "read, but meaning nothing now"
    assert not protocol.data_to_send(), "no pong after our close"
    protocol.receive_data(masked(struct.pack("!H", 1001), OP_CLOSE))
    assert protocol.events_received() == [Close(1001, "")]
    assert not protocol.data_to_send(), "the handshake is complete: nothing more to write"


def test_the_peers_close_is_echoed_and_later_input_ignored():
    protocol = ServerProtocol()
    protocol.receive_data(masked(struct.pack("!H", 3001) + "ça va".encode(), OP_CLOSE) + masked(b"after"))
    assert protocol.events_received() == [Close(3001, "ça va")]
    assert written(protocol) == [(Opcode.CLOSE, struct.pack("!H", 3001))]
    assert protocol.state is State.CLOSING and protocol.close_received
    protocol.receive_data(masked(b"more") + masked(b"", OP_CLOSE))
    assert protocol.events_received() == [] and not protocol.data_to_send()


def test_a_violation_is_an_event_with_its_code_and_input_is_ignored_after_it():
    protocol = ServerProtocol()
    protocol.receive_data(masked(b"ok") + masked(b"\x00", 0x2) + masked(b"never"))
    assert protocol.events_received() == [TextMessage("ok"), ProtocolError(1003, "binary messages are not accepted")]
    assert written(protocol) == [(Opcode.CLOSE, struct.pack("!H", 1003) + b"binary messages are not accepted")]
    protocol.receive_data(masked(b"still ignored"))
    assert protocol.events_received() == []


def test_a_frame_fed_a_byte_at_a_time_grows_one_buffer():
    protocol = ServerProtocol()
    frame = masked(b"z" * 1000)
    protocol.receive_data(frame[:10])
    inbox = protocol._inbox
    for i in range(10, len(frame) - 1):
        protocol.receive_data(frame[i:i + 1])
        assert protocol._inbox is inbox, "the same buffer grows; nothing is re-copied"
    protocol.receive_data(frame[-1:])
    assert protocol.events_received() == [TextMessage("z" * 1000)] and protocol._inbox is None


def test_fragments_are_counted_and_summed_as_they_come():
    protocol = ServerProtocol(max_message_bytes=1 << 20, max_fragments=1000)
    protocol.receive_data(masked(b"a", fin=False))
    for _ in range(998):
        protocol.receive_data(masked(b"", 0, fin=False))
    assert protocol._fragment_bytes == 1 and len(protocol._fragments) == 999
    protocol.receive_data(masked(b"", 0, fin=False) + masked(b"b", 0))
    assert [e.code for e in protocol.events_received()] == [1008]


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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_random_bytes_in_random_pieces_end_open_or_closing_with_a_valid_close_frame(data, piece):
    protocol = ServerProtocol(max_message_bytes=1024)
    for start in range(0, len(data), piece):
        protocol.receive_data(data[start:start + piece])
    protocol.events_received()
    frames = written(protocol)  # websockets accepts every frame we write
    closes = [payload for opcode, payload in frames if opcode is Opcode.CLOSE]
    assert len(closes) <= 1
    if closes:
        assert protocol.state is State.CLOSING
        assert close_code(closes[0]) in (1002, 1003, 1007, 1008, 1009) or 1000 <= close_code(closes[0]) <= 4999
    assert all(opcode in (Opcode.PONG, Opcode.CLOSE) for opcode, _ in frames)
    assert OP_TEXT not in [opcode.value for opcode, _ in frames]


def test_a_long_reason_is_cut_to_fit_a_control_frame_never_inside_a_character():
    frame = close_frame(1008, "é" * 100)  # 200 bytes of reason
    reader = FrameReader()
    reader.feed(frame)
    (parsed,) = reader.frames()
    close = WsClose.parse(bytes(parsed.data))
    assert close.code == 1008 and close.reason == "é" * 61
