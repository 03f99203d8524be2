"""RFC 6455 for the server side of ``/ws``, without I/O: bytes in, events and bytes out.

The shape of ``websockets``' ``protocol.py`` and of ``wsproto``: feed what the
socket read to :meth:`ServerProtocol.receive_data`, then take
:meth:`~ServerProtocol.events_received` (text messages, pings, pongs, the
peer's close, our own verdict on a broken frame) and
:meth:`~ServerProtocol.data_to_send` (pongs and close frames, ready to write).
Nothing here touches a socket, a clock or gevent, so every rule is tested with
plain byte strings (``tests/unit/test_ws_protocol.py``).

There is no CONNECTING state: the opening handshake is HTTP, checked in
``logger.handshake`` and answered by gevent-websocket before this object
exists, so a connection starts OPEN.

Every cost a peer can cause is bounded here, per frame and per message (issue
12), by plain counters next to the state: a frame costs O(1) besides its
payload (running totals, never a re-sum); a partial frame waits in one
``bytearray`` that grows, never re-copied per read; a message may come in at
most ``max_fragments`` pieces and ``max_message_bytes`` bytes. Every ping gets
its pong here (at most one per 6 bytes received, and the transport parses a
slice at a time); the transport coalesces pongs that wait in its queue for a
peer that does not read (RFC 6455 §5.5.3 lets us answer only the latest).
Coalescing here too, one pong per read, was tried: a flooding peer that never
reads then stalled its own sending on loopback (its 4 KiB receive buffer full
of 2-byte segments, 4 MB stuck in its send queue, nothing in ours), and
``test_ping_flood_from_a_client_that_does_not_read`` failed.
"""

from __future__ import annotations

import codecs
import enum
import struct
from collections.abc import Sequence
from typing import NamedTuple

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

# Close codes (RFC 6455 §7.4.1) this service sends.
NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA = 1000, 1001, 1002, 1003
INVALID_PAYLOAD, POLICY_VIOLATION, MESSAGE_TOO_BIG, INTERNAL_ERROR = 1007, 1008, 1009, 1011


class State(enum.Enum):
    """Where the connection is. (No CONNECTING: the handshake happened before us.)"""

    OPEN = 1  # messages flow both ways
    CLOSING = 2  # a close frame was sent or received; waiting for the other, or for the hang-up
    CLOSED = 3  # the TCP connection is gone


# Module names for the states: ``State.OPEN`` goes through the Enum metaclass, ~90 ns a
# lookup on Python 3.11, and the state is checked on every send of the fan-out.
OPEN, CLOSING, CLOSED = State.OPEN, State.CLOSING, State.CLOSED


# -- events -------------------------------------------------------------------------


class TextMessage(NamedTuple):
    """A complete text message, reassembled from its fragments and valid UTF-8."""

    text: str


class Ping(NamedTuple):
    payload: bytes


class Pong(NamedTuple):
    payload: bytes


class Close(NamedTuple):
    """The peer's close frame. If we had not sent ours, the answer is in data_to_send()."""

    code: int
    reason: str


class ProtocolError(NamedTuple):
    """The peer broke the protocol; our close frame with ``code`` is in data_to_send(),
    and further input is ignored."""

    code: int
    reason: str


Event = TextMessage | Ping | Pong | Close | ProtocolError


class ProtocolViolation(Exception):
    """Raised by :func:`parse_frame`; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# -- framing (servers never mask, RFC 6455 §5.1) ------------------------------------


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A single unmasked server frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to the 123 bytes that fit, never inside a character."""
    cut = reason.encode()[:123].decode("utf-8", "ignore").encode()
    return encode_frame(struct.pack("!H", code) + cut, OP_CLOSE)


PONG_FIRST_BYTE = 0x80 | OP_PONG  # how a transport recognises a queued pong (to coalesce it)
CLOSE_FIRST_BYTE = 0x80 | OP_CLOSE


class ServerProtocol:
    """One connection's RFC 6455 state: parse client frames, check them, say what to answer."""

    # __slots__: one of these lives per idle connection (10,000 is the design point).
    __slots__ = ("state", "max_message_bytes", "max_fragments", "_inbox", "_fragments", "_fragment_bytes",
                 "_utf8", "_events", "_pong", "_output", "_input_closed")

    def __init__(self, *, max_message_bytes: int = 64 << 10, max_fragments: int = 128) -> None:
        self.state = OPEN
        self.max_message_bytes = max_message_bytes
        self.max_fragments = max_fragments
        self._inbox: bytearray | None = None  # an incomplete frame; None while idle
        self._fragments: list[str] | None = None  # the message being reassembled, decoded as it came
        self._fragment_bytes = 0  # running total of the fragments' bytes
        self._utf8: codecs.IncrementalDecoder | None = None  # checks fragments as they come
        self._events: list[Event] | None = None
        self._pong: list[bytes] | None = None  # payloads of the pings not yet answered
        self._output: list[bytes] | None = None  # close frames to write
        self._input_closed = False  # the peer's close was answered, or it broke the protocol

    # -- the interface a transport uses ------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Parse what arrived: complete frames become events, a partial one waits."""
        if self._input_closed or self.state is CLOSED:
            return
        inbox = self._inbox
        if inbox is not None:
            inbox += data  # a trickled frame grows one buffer; nothing before it is copied again
            buffer: bytes | bytearray = inbox
        else:
            buffer = data
        offset = 0
        try:
            while not self._input_closed:
                frame = parse_frame(buffer, offset, self.max_message_bytes)
                if frame is None:
                    break
                fin, opcode, payload, offset = frame
                self._handle_frame(fin, opcode, payload)
        except ProtocolViolation as exc:
            self._fail(exc.code, exc.reason)
        if self._input_closed or offset >= len(buffer):
            self._inbox = None
        elif inbox is None:
            self._inbox = bytearray(memoryview(buffer)[offset:])
        elif offset:
            del inbox[:offset]

    def events_received(self) -> list[Event]:
        events, self._events = self._events, None
        return events or []

    def data_to_send(self) -> Sequence[bytes]:
        """Frames to write, in order: pongs, then any close frame."""
        if self._pong is None and self._output is None:
            return ()  # the common case, asked before every reply: no list made
        out: list[bytes] = []
        if self._pong is not None:
            out += [encode_frame(payload, OP_PONG) for payload in self._pong]
            self._pong = None
        if self._output is not None:
            out += self._output
            self._output = None
        return out

    def send_close(self, code: int = NORMAL, reason: str = "") -> bytes | None:
        """Start the closing handshake: our close frame, or None if one was already sent."""
        if self.state is not OPEN:
            return None
        self.state = CLOSING
        self._pong = None  # nothing goes after a close frame
        return close_frame(code, reason)

    def connection_lost(self) -> None:
        self.state = CLOSED
        self._inbox = self._fragments = self._utf8 = self._events = self._pong = self._output = None

    @property
    def close_received(self) -> bool:
        """The peer's close came (or it broke the protocol): its input means nothing more."""
        return self._input_closed

    # -- frames -------------------------------------------------------------------------

    def _event(self, event: Event) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def _fail(self, code: int, reason: str) -> None:
        self._input_closed = True
        self._fragments = self._utf8 = None
        self._fragment_bytes = 0
        frame = self.send_close(code, reason)
        if frame is not None:
            self._output = [frame]
        self._event(ProtocolError(code, reason))

    def _handle_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if self.state is OPEN:
                if self._pong is None:
                    self._pong = [payload]
                else:
                    self._pong.append(payload)
            self._event(Ping(payload))
        elif opcode == OP_PONG:
            self._event(Pong(payload))
        elif opcode == OP_CLOSE:
            code, reason = _parse_close(payload)
            self._input_closed = True
            self._fragments = self._utf8 = None
            if self.state is OPEN:  # the peer closes: answer with its code
                self.state = CLOSING
                self._pong = None
                self._output = [close_frame(code)]
            self._event(Close(code, reason))
        elif opcode == OP_CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                raise ProtocolViolation(PROTOCOL_ERROR, "continuation frame without a message")
            self._fragment_bytes += len(payload)  # a running total: O(1) per fragment
            if self._fragment_bytes > self.max_message_bytes:
                raise ProtocolViolation(MESSAGE_TOO_BIG, f"message larger than {self.max_message_bytes} bytes")
            if len(fragments) >= self.max_fragments:
                raise ProtocolViolation(POLICY_VIOLATION, f"message in more than {self.max_fragments} fragments")
            fragments.append(self._decode(payload, fin))
            if fin:
                text = "".join(fragments)
                self._fragments, self._fragment_bytes, self._utf8 = None, 0, None
                if self.state is OPEN:
                    self._event(TextMessage(text))
        elif self._fragments is not None:
            raise ProtocolViolation(PROTOCOL_ERROR, "new message inside a fragmented one")
        elif opcode == OP_BINARY:
            raise ProtocolViolation(UNSUPPORTED_DATA, "binary messages are not accepted")
        elif fin:
            self._deliver(payload)
        else:
            self._utf8 = codecs.getincrementaldecoder("utf-8")()
            self._fragments, self._fragment_bytes = [self._decode(payload, False)], len(payload)

    def _decode(self, payload: bytes, final: bool) -> str:
        """Fail fast (Autobahn 6.x): an invalid sequence is refused in the fragment that
        makes it invalid, even when it started in the one before; a character split
        across fragments is fine."""
        assert self._utf8 is not None
        try:
            return self._utf8.decode(payload, final)
        except UnicodeDecodeError:
            raise ProtocolViolation(INVALID_PAYLOAD, "text message is not valid UTF-8") from None

    def _deliver(self, payload: bytes) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation(INVALID_PAYLOAD, "text message is not valid UTF-8") from None
        if self.state is OPEN:  # after our close, messages are read but mean nothing
            self._event(TextMessage(text))


def parse_frame(buffer: bytes | bytearray, offset: int, max_message_bytes: int
                ) -> tuple[bool, int, bytes, int] | None:
    """One client frame from ``buffer[offset:]``: (fin, opcode, payload, next offset),
    or None while incomplete. Raises ProtocolViolation as soon as the header is wrong."""
    available = len(buffer) - offset
    if available < 2:
        return None
    first, second = buffer[offset], buffer[offset + 1]
    fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
    if first & 0x70:
        raise ProtocolViolation(PROTOCOL_ERROR, "reserved bits set without an extension")
    if opcode not in _OPCODES:
        raise ProtocolViolation(PROTOCOL_ERROR, f"unknown opcode {opcode}")
    if not second & 0x80:
        raise ProtocolViolation(PROTOCOL_ERROR, "client frames must be masked")
    if opcode >= OP_CLOSE and (length > 125 or not fin):
        raise ProtocolViolation(PROTOCOL_ERROR, "control frames must be short and unfragmented")
    header = 2
    if length == 126:
        if available < 4:
            return None
        length, header = struct.unpack_from("!H", buffer, offset + 2)[0], 4
    elif length == 127:
        if available < 10:
            return None
        length, header = struct.unpack_from("!Q", buffer, offset + 2)[0], 10
    if length > max_message_bytes:
        raise ProtocolViolation(MESSAGE_TOO_BIG, f"message larger than {max_message_bytes} bytes")
    end = offset + header + 4 + length
    if len(buffer) < end:
        return None
    mask = buffer[offset + header:offset + header + 4]
    payload = buffer[offset + header + 4:end]
    return fin, opcode, _unmask(payload, mask) if length else b"", end


def _unmask(data: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    # XOR as one big integer: far faster in CPython than a byte loop.
    length = len(data)
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(length, "big")


def _parse_close(payload: bytes) -> tuple[int, str]:
    """The peer's close code and reason, checked (RFC 6455 §5.5.1, §7.4); none means 1000."""
    if not payload:
        return NORMAL, ""
    if len(payload) == 1:
        raise ProtocolViolation(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = struct.unpack_from("!H", payload)[0]
    if not echoable(code):  # 1005, 1006 and 1015 are never sent; others are unassigned
        raise ProtocolViolation(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(INVALID_PAYLOAD, "close reason is not valid UTF-8") from None
    return code, reason


def echoable(code: int) -> bool:
    """Codes a peer may send us and we may send back (RFC 6455 §7.4)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
