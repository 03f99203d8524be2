"""One WebSocket connection: RFC 6455 frames over the socket gevent-websocket upgraded.

Writing never blocks the caller. The hub hands every client the same frame
``bytes``; the common case is one non-blocking ``send()`` that takes it all,
with no greenlet switch. Only a client whose socket would block gets a
pending queue and a writer greenlet of its own, and that queue is bounded:
past ``max_pending`` bytes the oldest *batches* are dropped (control frames
never are) and the client is told ``{"type":"dropped","count":N}`` once it
catches up; a client that stays stuck is closed with 1008.

Reading needs no greenlet either. Once upgraded, the connection leaves
pywsgi (see ``logger.app.WebSocketRoute``): an idle client is this object, its
socket and one I/O watcher whose callback parses whatever arrived, without
blocking. That is what keeps 10,000 idle clients small: a greenlet parked in
``recv`` under pywsgi and gevent-websocket cost ~23 KB each (its saved stack,
the handler, the WSGI environ, an 8 KB read buffer). We parse frames ourselves
rather than use gevent-websocket's ``WebSocket`` because that class never puts
the close code in its close frame and writes pongs with a blocking ``sendall``
that could interleave with our frames (gevent-websocket 0.10.1).

Every cost a peer can cause is bounded here, where it is caused (issue 12):
one read callback parses at most ``READ_BYTES`` new bytes, and each frame in
them costs O(1) besides its payload; messages that cost more (a subscribe with
a new regular expression) are handled one ``WORK_SLICE_S`` at a time, reading
paused meanwhile so that TCP pushes back on the peer (running totals, a partial frame waits in
one ``bytearray`` and is never re-copied); a message may come in at most
``max_fragments`` pieces; pongs are coalesced (RFC 6455 §5.5.3 lets us answer
only the latest ping); frames that cannot be dropped (replies, pongs, replay)
are charged to the same ``max_pending`` bound, with a per-frame overhead, and
a client past it is closed with 1008 instead of being queued for forever;
dropping a batch costs O(1) (``_droppable`` keeps them in order); and a replay
is encoded a chunk at a time as the socket drains, while live batches wait
within the bound, so a client that never reads holds one chunk, not a copy
of the ring.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import gevent
import orjson
from gevent import get_hub

from logger import metrics

log = logging.getLogger(__name__)

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Close codes (RFC 6455 §7.4.1) this service sends.
NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA = 1000, 1001, 1002, 1003
INVALID_PAYLOAD, POLICY_VIOLATION, MESSAGE_TOO_BIG, INTERNAL_ERROR, TRY_AGAIN_LATER = 1007, 1008, 1009, 1011, 1013

CLOSE_WAIT_S = 2.0  # how long a closing client may take to answer our close frame
DRAIN_FRAMES = 64  # queued frames a backlogged client's writer hands the kernel at once (IOV_MAX is 1024)
READ_BYTES = 4 << 10  # new input one read callback parses before the loop serves anyone else (~680 tiny frames)
WORK_SLICE_S = 0.005  # past this, a read callback stops parsing and reading, and goes on at the loop's next turn
REPLAY_AHEAD_BYTES = 64 << 10  # a replay is encoded only while less than this is queued
QUEUED_FRAME_COST = 128  # what one queued undroppable frame costs beyond its bytes: entry, deque slot, bytes header

# A queued frame: [frame, droppable, cost charged to the undroppable total]. A list, so that
# dropping a batch (frame → b"") and coalescing a pong (frame replaced) are O(1) in place.
Entry = list


_drops_unreported = 0


def _count_drop() -> None:
    global _drops_unreported
    _drops_unreported += 1


def report_drops() -> None:
    """Add the batches dropped since the last call to the Prometheus counter.

    One update per fan-out rather than one per drop: a client that lags for good
    drops a batch for every batch sent, and a multiprocess ``Counter.inc`` (an
    mmap write) cost more than the rest of that client's share of the fan-out.
    """
    global _drops_unreported
    if _drops_unreported:
        metrics.DROPPED_BATCHES.inc(_drops_unreported)
        _drops_unreported = 0


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A single unmasked server frame (servers never mask, RFC 6455 §5.1)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def encode_message(message: dict[str, Any]) -> bytes:
    return encode_frame(orjson.dumps(message))


def close_frame(code: int, reason: str = "") -> bytes:
    return encode_frame(struct.pack("!H", code) + reason.encode()[:123], OP_CLOSE)


class ProtocolViolation(Exception):
    """The peer broke the protocol; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class WebSocketClient:
    """One upgraded connection. Every method runs without blocking; call them from
    any greenlet (the callbacks given to :meth:`start` run in gevent's hub)."""

    # __slots__ keeps an idle connection small: 10,000 of them is the design point.
    __slots__ = ("sock", "_raw", "address", "max_pending", "max_message_bytes", "max_fragments",
                 "stall_timeout_s", "_pending", "_pending_bytes", "_droppable", "_undroppable_cost", "_pong",
                 "_writer", "dropped", "closing", "closed", "last_seen", "last_progress", "_inbox", "_fragments",
                 "_fragment_bytes", "_discarding", "_watcher", "_on_text", "_on_close", "_held", "_held_bytes",
                 "_user_paused", "_replay", "had_backlog", "_yielding", "subscription", "__weakref__")

    def __init__(self, sock: socket.socket, address: str = "", *, max_pending: int = 4 << 20,
                 max_message_bytes: int = 64 << 10, max_fragments: int = 128,
                 stall_timeout_s: float = 30.0) -> None:
        self.sock = sock
        # gevent's socket wraps a real non-blocking socket; sending and receiving on
        # that one directly either moves bytes or raises BlockingIOError: no switch.
        self._raw = getattr(sock, "_sock", sock)
        self.address = address
        self.max_pending = max_pending
        self.max_message_bytes = max_message_bytes
        self.max_fragments = max_fragments
        self.stall_timeout_s = stall_timeout_s
        # The backlog exists only while a writer greenlet does (see send()).
        self._pending: deque[Entry] | None = None
        self._pending_bytes = 0
        self._droppable: deque[Entry] | None = None  # the queued batches not yet dropped, oldest first
        self._undroppable_cost = 0  # bytes + QUEUED_FRAME_COST of each queued frame that must go out
        self._pong: Entry | None = None  # a queued pong not yet started: the next ping replaces its payload
        self._writer: gevent.Greenlet | None = None
        self.dropped = 0
        self.closing = False
        self.closed = False
        self.last_seen = time.monotonic()
        self.last_progress = 0.0  # when the writer last finished a frame (while backlogged)
        self._inbox: bytearray | None = None  # bytes of an incomplete frame; None while idle
        self._fragments: list[bytes] | None = None
        self._fragment_bytes = 0
        self._discarding = False
        self._watcher: Any = None
        self._on_text: Callable[[WebSocketClient, str], None] | None = None
        self._on_close: Callable[[WebSocketClient], None] | None = None
        self._held: deque[bytes] | None = None  # batches kept while the client paused or replays
        self._held_bytes = 0
        self._user_paused = False
        self._replay: Iterator[bytes] | None = None  # replay frames still to encode and send
        self.had_backlog = False  # ever needed a writer: its frames' memory is worth giving back
        self._yielding = False  # reading paused until the loop's next turn (see _receive)
        self.subscription: Any = None  # what the hub filters for this client

    def start(self, on_text: Callable[[WebSocketClient, str], None],
              on_close: Callable[[WebSocketClient], None], initial: bytes = b"") -> None:
        """Begin reading. ``on_text`` gets each text message, ``on_close`` runs once at the end.

        ``initial`` holds bytes the HTTP layer read past the upgrade request.
        Both callbacks run in the hub: they must not block.
        """
        self._on_text, self._on_close = on_text, on_close
        self._watcher = get_hub().loop.io(self._raw.fileno(), 1)  # 1: readable
        self._watcher.start(self._on_readable)
        if initial:
            self._receive(initial)

    # -- writing: called by the hub, never blocks ------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def paused(self) -> bool:
        return self._user_paused

    def pause(self) -> None:
        """Hold batches (not control frames) until :meth:`resume`, within the same bound."""
        self._user_paused = True
        if self._held is None:
            self._held = deque()

    def resume(self) -> None:
        self._user_paused = False
        if self._replay is None:  # else the replay's end releases them
            self._release_held()
        if self.dropped and self._writer is None:  # everything held went out at once
            self.send(encode_message({"type": "dropped", "count": self.dropped}), droppable=False)
            self.dropped = 0

    def _release_held(self) -> None:
        held, self._held, self._held_bytes = self._held, None, 0
        for frame in held or ():
            self.send(frame)

    def replay(self, frames: Iterable[bytes]) -> None:
        """Send ``frames`` (encoded lazily, one at a time) before any live batch.

        The writer greenlet pulls the next frame only once the socket took the
        last one, and live batches are held meanwhile (within ``max_pending``,
        oldest dropped first). So a replay costs what the peer actually reads:
        120 connections asking for the whole ring and never reading hold 120
        chunks, not 120 encodings of it (issue 12).
        """
        if self.closing or self.closed:
            return
        self._replay = iter(frames)
        if self._held is None:
            self._held = deque()
        if self._writer is None:
            self._start_writer(deque(), 0)

    def send(self, frame: bytes, droppable: bool = True) -> None:
        """Queue one encoded frame; drop old batches rather than grow past the bound."""
        if self.closing or self.closed:
            return
        if droppable and self._held is not None:
            self._held.append(frame)
            self._held_bytes += len(frame)
            while self._held_bytes > self.max_pending and len(self._held) > 1:
                self._held_bytes -= len(self._held.popleft())
                self.dropped += 1
                _count_drop()
            return
        if self._writer is not None:  # backlogged; the hub's keepalive calls check_stall() every second
            self._enqueue(frame, droppable)
            return
        try:
            sent = self._raw.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(frame):
            # The head frame is partly on the wire: it must finish, so it is not droppable.
            self._start_writer(deque([[memoryview(frame)[sent:], False, 0]]), len(frame) - sent)

    def _start_writer(self, pending: deque[Entry], size: int) -> None:
        self._pending, self._pending_bytes = pending, size
        self._droppable, self._undroppable_cost, self._pong = deque(), 0, None
        self.last_progress = time.monotonic()
        self.had_backlog = True
        self._writer = gevent.spawn(self._drain)

    def _enqueue(self, frame: bytes, droppable: bool, charged: bool = True) -> Entry | None:
        """Queue behind the backlog. O(1) amortised: each batch is dropped at most once.

        Undroppable frames are ``charged`` to the client's bound, except replay
        frames: the writer pulls one only while little is queued, so they are
        bounded where they are made.
        """
        assert self._pending is not None and self._droppable is not None
        cost = len(frame) + QUEUED_FRAME_COST if charged and not droppable else 0
        entry: Entry = [frame, droppable, cost]
        self._pending.append(entry)
        self._pending_bytes += len(frame)
        self._undroppable_cost += cost
        if droppable:
            self._droppable.append(entry)
        droppable_queue = self._droppable
        while self._pending_bytes > self.max_pending and droppable_queue:
            oldest = droppable_queue.popleft()
            self._pending_bytes -= len(oldest[0])
            oldest[0], oldest[1] = b"", False
            self.dropped += 1
            _count_drop()
        if self._undroppable_cost > self.max_pending:
            # Replies it does not read, faster than it reads them: serving it for
            # ever would cost memory without end, and dropping replies would break
            # the protocol. Hang up (1008), as with a client that takes nothing.
            self._give_up("client does not read its replies", "overflow")
            return None
        return entry

    def _answer_ping(self, payload: bytes) -> None:
        """Pong, coalesced: while one is still queued untouched, it just takes the newer payload."""
        if self.closing or self.closed:
            return
        frame = encode_frame(payload, OP_PONG)
        queued = self._pong
        if queued is not None:
            growth = len(frame) - len(queued[0])
            queued[0] = frame
            queued[2] += growth
            self._pending_bytes += growth
            self._undroppable_cost += growth
        elif self._writer is None:
            self.send(frame, droppable=False)
        else:
            entry = self._enqueue(frame, False)
            if not self.closing:
                self._pong = entry

    def check_stall(self) -> None:
        """Give up on a backlogged peer that has taken nothing for ``stall_timeout_s``."""
        if self._pending and not self.closing and time.monotonic() - self.last_progress > self.stall_timeout_s:
            self._give_up("client too slow", "slow")

    def _give_up(self, reason: str, counted_as: str) -> None:
        """Drop what is queued, leave a 1008 close frame behind the partly sent one, and hang up soon."""
        assert self._pending is not None
        goodbye: Entry = [close_frame(POLICY_VIOLATION, reason), False, 0]
        kept = deque([goodbye])
        if self._pending:
            head = self._pending[0]  # may be partly on the wire: it must finish
            head[1], head[2] = False, 0
            kept.appendleft(head)
        self._pending = kept
        self._pending_bytes = sum(len(entry[0]) for entry in kept)  # two entries
        self._droppable, self._undroppable_cost, self._pong = deque(), 0, None
        self._replay, self._held, self._held_bytes = None, None, 0
        self.closing = True
        metrics.CLIENTS_CLOSED.labels(counted_as).inc()
        gevent.spawn_later(CLOSE_WAIT_S, self.abort)

    def _drain(self) -> None:
        """The writer greenlet of a backlogged client: write until the queue is empty.

        Many queued frames go out in one ``sendmsg`` on the raw non-blocking socket,
        and the greenlet waits on a write watcher only when the socket is full.
        (gevent's ``sendall`` per frame cost three times as much: it asks the kernel
        for SO_SNDBUF and slices the frame on every call. When the load clients
        fell behind, that path took two thirds of the worker's CPU.)
        A replay is pulled a frame at a time, yielding between frames.
        """
        hub = get_hub()
        if self.closed or self._raw.fileno() < 0:  # closed before this greenlet first ran
            self._pending = self._droppable = self._pong = None
            self._writer = None
            return
        writable = hub.loop.io(self._raw.fileno(), 2)  # 2: writable
        try:
            while True:
                self._forget_sent(0)  # batches dropped at the front
                if self._pending_bytes < REPLAY_AHEAD_BYTES and self._next_replay_frame():
                    gevent.sleep(0)  # one chunk encoded: let the others run
                    continue
                if not self._pending:
                    if self.dropped and not self.closing and self._held is None:
                        notice = encode_message({"type": "dropped", "count": self.dropped})
                        self.dropped = 0
                        self._enqueue(notice, False)
                        continue
                    break
                try:
                    sent = self._raw.sendmsg([entry[0] for entry in islice(self._pending, DRAIN_FRAMES)])
                except BlockingIOError:
                    hub.wait(writable)
                    continue
                self.last_progress = time.monotonic()
                self._forget_sent(sent)
        except OSError:
            self._writer = None
            self.abort()
        finally:
            writable.close()
            self._pending = self._droppable = self._pong = None
            self._pending_bytes = self._undroppable_cost = 0
            self._writer = None

    def _next_replay_frame(self) -> bool:
        """Queue the next replay frame; at the end, release the batches held meanwhile.
        False when there is nothing more to write."""
        if self._replay is None or self.closing:
            return False
        frame = next(self._replay, None)
        if frame is None:
            self._replay = None
            if not self._user_paused:
                self._release_held()  # queued behind us: the writer goes on with them
            return bool(self._pending)
        self._enqueue(frame, False, charged=False)
        return True

    def _forget_sent(self, sent: int) -> None:
        """Take ``sent`` bytes off the front of the queue (and any dropped batches there);
        a frame left partly sent is kept, undroppable."""
        pending, droppable = self._pending, self._droppable
        assert pending is not None and droppable is not None
        self._pending_bytes -= sent
        while pending:
            entry = pending[0]
            size = len(entry[0])
            if sent < size:
                if sent:
                    if entry[1]:  # the oldest batch still queued: now it must finish
                        droppable.popleft()
                        entry[1] = False
                    entry[0] = memoryview(entry[0])[sent:]
                    if entry is self._pong:
                        self._pong = None
                return
            sent -= size
            pending.popleft()
            if entry[1]:
                droppable.popleft()
            self._undroppable_cost -= entry[2]
            if entry is self._pong:
                self._pong = None

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the socket is shut if the peer doesn't answer in time."""
        if self.closing or self.closed:
            return
        self.send(close_frame(code, reason), droppable=False)
        self.closing = True
        gevent.spawn_later(CLOSE_WAIT_S, self.abort)

    def abort(self) -> None:
        """Drop the connection now."""
        if not self.closed:
            self._finish()

    # -- reading: an I/O watcher callback, never blocks ------------------------------

    def _on_readable(self) -> None:
        try:
            data = self._raw.recv(READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._finish()
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        """Parse the complete frames in what arrived; keep an incomplete one for later.

        A frame trickled in a byte at a time is appended to one ``bytearray``
        and its header re-read, never the whole buffer re-copied per read.
        """
        self.last_seen = time.monotonic()
        if self._discarding:
            return
        inbox = self._inbox
        if inbox is not None:
            inbox += data
        buffer: bytes | bytearray = inbox if inbox is not None else data
        offset = 0
        deadline = time.monotonic() + WORK_SLICE_S
        try:
            while not self.closed:
                frame = parse_frame(buffer, offset, self.max_message_bytes)
                if frame is None:
                    break
                fin, opcode, payload, offset = frame
                self._handle_frame(fin, opcode, payload)
                if offset < len(buffer) and time.monotonic() > deadline:
                    self._yield_reading()
                    break
        except ProtocolViolation as exc:
            log.info("closing WebSocket %s: %s (%d)", self.address, exc.reason, exc.code)
            metrics.CLIENTS_CLOSED.labels("protocol").inc()
            self.close(exc.code, exc.reason)
            # Keep reading and dropping the peer's input until it hangs up or the
            # close timeout aborts us: closing a socket with unread input makes the
            # kernel send a reset, and the peer would lose our close frame and code.
            self._discarding = True
            offset = len(buffer)
        if offset >= len(buffer):
            self._inbox = None
        elif inbox is None:
            self._inbox = bytearray(memoryview(buffer)[offset:])
        elif offset:
            del inbox[:offset]

    def _yield_reading(self) -> None:
        """Out of time with input left: let the loop serve the others first. Reading
        stops meanwhile, so what the peer sends waits in the kernel, not in our inbox."""
        if self._watcher is not None and not self._yielding:
            self._yielding = True
            self._watcher.stop()
            get_hub().loop.run_callback(self._resume_reading)

    def _resume_reading(self) -> None:
        self._yielding = False
        if self.closed or self._watcher is None:
            return
        self._receive(b"")  # what is left in the inbox
        if not self._yielding and not self.closed and self._watcher is not None:
            self._watcher.start(self._on_readable)

    def _handle_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._answer_ping(payload)
        elif opcode == OP_PONG:
            pass  # last_seen is all a pong is for
        elif opcode == OP_CLOSE:
            if self.closing:  # the answer to our close: done
                self.abort()
            else:  # the peer closes: answer with its code, then hang up
                self.close(_close_code(payload))
                self.abort_when_flushed()
        elif opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise ProtocolViolation(PROTOCOL_ERROR, "continuation frame without a message")
            self._fragments.append(payload)
            self._fragment_bytes += len(payload)  # a running total: O(1) per fragment
            if self._fragment_bytes > self.max_message_bytes:
                raise ProtocolViolation(MESSAGE_TOO_BIG, f"message larger than {self.max_message_bytes} bytes")
            if len(self._fragments) > self.max_fragments:
                raise ProtocolViolation(POLICY_VIOLATION, f"message in more than {self.max_fragments} fragments")
            if fin:
                message, self._fragments, self._fragment_bytes = b"".join(self._fragments), None, 0
                self._deliver(message)
        elif self._fragments is not None:
            raise ProtocolViolation(PROTOCOL_ERROR, "new message inside a fragmented one")
        elif opcode == OP_BINARY:
            raise ProtocolViolation(UNSUPPORTED_DATA, "binary messages are not accepted")
        elif fin:
            self._deliver(payload)
        else:
            self._fragments, self._fragment_bytes = [payload], len(payload)

    def _deliver(self, payload: bytes) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation(INVALID_PAYLOAD, "text frame is not valid UTF-8") from None
        if self._on_text is not None and not self.closing:
            self._on_text(self, text)

    def abort_when_flushed(self) -> None:
        """Hang up once the queued frames (our close answer) are written."""
        if not self._pending:
            self.abort()
        # else: the writer finishes, and the close timer set by close() hangs up

    def _finish(self) -> None:
        """The connection is over: release the watcher and the socket, tell the owner once."""
        self.closed = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        if self._writer is not None and self._writer is not gevent.getcurrent():
            self._writer.kill(block=False)
        self._pending, self._inbox, self._fragments, self._held = None, None, None, None
        self._droppable, self._pong, self._replay = None, None, None
        try:
            self.sock.close()
        except OSError:
            pass
        on_close, self._on_close, self._on_text = self._on_close, None, None
        if on_close is not None:
            on_close(self)


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
    if opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
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


def _close_code(payload: bytes) -> int:
    """The code to answer a peer's close frame with, after checking it (RFC 6455 §5.5.1, §7.4)."""
    if not payload:
        return NORMAL
    if len(payload) == 1:
        raise ProtocolViolation(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = struct.unpack_from("!H", payload)[0]
    if not _echoable(code):  # 1005, 1006 and 1015 are never sent; others are unassigned
        raise ProtocolViolation(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(INVALID_PAYLOAD, "close reason is not valid UTF-8") from None
    return code


def _echoable(code: int) -> bool:
    """Codes a peer may send us and we may send back (RFC 6455 §7.4)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
