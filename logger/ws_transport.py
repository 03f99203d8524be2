"""One upgraded ``/ws`` connection on gevent: moves bytes, never blocks, bounds its queue.

The RFC 6455 rules live in :mod:`logger.ws_protocol`; this module only moves
bytes between the socket and that protocol object, and owns what is about I/O
and scheduling:

* **Writing never blocks the caller.** The hub hands every client the same
  pre-framed ``bytes`` (one encoding per filter group); the common case is one
  non-blocking ``send()`` that takes it all, with no greenlet switch. Only a
  client whose socket would block gets a :class:`_Backlog`: a bounded queue and
  a writer greenlet that hands the kernel many frames per ``sendmsg``. Past
  ``max_pending`` bytes the oldest *batches* are dropped, O(1) each (control
  frames never are); the owner is told of each drop and, once the client caught
  up, of how many it lost (the hub composes the ``dropped`` message). Frames
  that cannot be dropped (replies, pongs) are charged to the same bound with a
  per-frame overhead, and a client past it is closed with 1008 rather than
  served for ever; one whose backlog does not move for ``stall_timeout_s`` too.
* **Reading needs no greenlet.** An idle client is this object, its protocol
  object, its socket and one I/O watcher whose callback reads at most
  ``READ_BYTES`` and hands them to the protocol. That is what keeps 10,000
  idle clients small: a greenlet parked in ``recv`` under pywsgi and
  gevent-websocket cost ~23 KB each. Messages that cost more to handle (a
  subscribe with a new regular expression) are handled one ``WORK_SLICE_S`` at
  a time, reading paused meanwhile so that TCP pushes back on the peer.
* **Pause and replay** hold live batches (within the same bound, oldest dropped
  first); a replay is encoded a chunk at a time as the socket drains, so a
  client that never reads holds one chunk, not a copy of the ring (issue 12).

We frame and parse ourselves rather than use gevent-websocket's ``WebSocket``
because that class never puts the close code in its close frame and writes
pongs with a blocking ``sendall`` that could interleave with our frames
(gevent-websocket 0.10.1); and rather than a library's per-client framing
because encoding once per group and sharing the bytes measured 25 % less CPU
per delivery.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Protocol

import gevent
from gevent import get_hub

from logger import metrics
from logger.ws_protocol import (
    CLOSE_FIRST_BYTE,
    CLOSED,
    NORMAL,
    OPEN,
    PONG_FIRST_BYTE,
    POLICY_VIOLATION,
    Close,
    Event,
    Ping,
    ProtocolError,
    ServerProtocol,
    TextMessage,
    close_frame,
)

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 2.0  # how long a closing client may take to answer our close frame
DRAIN_FRAMES = 64  # queued frames a backlogged client's writer hands the kernel at once (IOV_MAX is 1024)
READ_BYTES = 4 << 10  # new input one read callback parses before the loop serves anyone else (~680 tiny frames)
WORK_SLICE_S = 0.005  # past this, a read callback stops handling messages and reading, until the loop's next turn
REPLAY_AHEAD_BYTES = 64 << 10  # a replay is encoded only while less than this is queued
QUEUED_FRAME_COST = 128  # what one queued undroppable frame costs beyond its bytes: entry, deque slot, bytes header

# A queued frame: [frame, droppable, cost charged to the undroppable total]. A list, so that
# dropping a batch (frame → b"") and coalescing a pong (frame replaced) are O(1) in place.
Entry = list


class Owner(Protocol):
    """What a connection tells whoever serves it (the hub). Called in gevent's hub or the
    writer greenlet: implementations must not block."""

    def message_received(self, connection: WebSocketConnection, text: str) -> None: ...

    def batch_dropped(self, connection: WebSocketConnection) -> None: ...

    def caught_up(self, connection: WebSocketConnection, lost: int) -> None:
        """The connection wrote everything queued after losing ``lost`` batches."""

    def connection_closed(self, connection: WebSocketConnection) -> None: ...


class _Backlog:
    """What a client whose socket would block has queued, and the greenlet writing it."""

    __slots__ = ("queue", "size", "droppable", "undroppable_cost", "pong", "writer", "last_progress")

    def __init__(self, queue: deque[Entry], size: int) -> None:
        self.queue = queue
        self.size = size  # bytes in queue
        self.droppable: deque[Entry] = deque()  # the queued batches not yet dropped, oldest first
        self.undroppable_cost = 0  # bytes + QUEUED_FRAME_COST of each queued frame that must go out
        self.pong: Entry | None = None  # a queued pong not yet started: the next one replaces it
        self.writer: gevent.Greenlet | None = None
        self.last_progress = time.monotonic()  # when the writer last finished a frame


class _Hold:
    """Live batches kept back while the peer paused or a replay goes out first."""

    __slots__ = ("frames", "size", "paused", "replay")

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()
        self.size = 0  # bytes in frames
        self.paused = False  # by the peer's request
        self.replay: Iterator[bytes] | None = None  # replay frames still to encode and send


class WebSocketConnection:
    """One upgraded connection. Every method runs without blocking; call them from
    any greenlet (the owner's methods run in gevent's hub or the writer greenlet)."""

    # __slots__ keeps an idle connection small: 10,000 of them is the design point.
    __slots__ = ("sock", "_raw", "address", "protocol", "max_pending", "stall_timeout_s", "last_seen", "dropped",
                 "_backlog", "_hold", "_unhandled", "_watcher", "_owner", "had_backlog", "subscription",
                 "grant", "__weakref__")

    def __init__(self, sock: socket.socket, address: str = "", *, max_pending: int = 4 << 20,
                 max_message_bytes: int = 64 << 10, max_fragments: int = 128,
                 stall_timeout_s: float = 30.0) -> None:
        self.sock = sock
        # gevent's socket wraps a real non-blocking socket; sending and receiving on
        # that one directly either moves bytes or raises BlockingIOError: no switch.
        self._raw = getattr(sock, "_sock", sock)
        self.address = address
        self.protocol = ServerProtocol(max_message_bytes=max_message_bytes, max_fragments=max_fragments)
        self.max_pending = max_pending
        self.stall_timeout_s = stall_timeout_s
        self.last_seen = time.monotonic()
        self.dropped = 0  # batches lost since the owner was last told (caught_up)
        self._backlog: _Backlog | None = None  # only while the socket would block
        self._hold: _Hold | None = None  # only while paused or replaying
        self._unhandled: deque[Event | bytes] | None = None  # left for the loop's next turn; reading paused
        self._watcher: Any = None
        self._owner: Owner | None = None
        self.had_backlog = False  # ever needed a writer: its frames' memory is worth giving back
        self.subscription: Any = None  # what the hub filters for this client
        self.grant: Any = None  # what its token allows (logger.auth.Grant), when auth is on

    @property
    def closing(self) -> bool:
        """A close frame went one way or the other: no more batches."""
        return self.protocol.state is not OPEN

    @property
    def closed(self) -> bool:
        return self.protocol.state is CLOSED

    def start(self, owner: Owner, initial: bytes = b"") -> None:
        """Begin reading and reporting to ``owner``. ``initial`` holds bytes the HTTP
        layer read past the upgrade request."""
        self._owner = owner
        self._watcher = get_hub().loop.io(self._raw.fileno(), 1)  # 1: readable
        self._watcher.start(self._on_readable)
        if initial:
            self._receive(initial)

    # -- writing: called by the hub, never blocks ------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._backlog.size if self._backlog is not None else 0

    @property
    def paused(self) -> bool:
        return self._hold is not None and self._hold.paused

    def pause(self) -> None:
        """Hold batches (not control frames) until :meth:`resume`, within the same bound."""
        if self._hold is None:
            self._hold = _Hold()
        self._hold.paused = True

    def resume(self) -> None:
        hold = self._hold
        if hold is not None:
            hold.paused = False
            if hold.replay is None:  # else the replay's end releases them
                self._release_held()
        if self._backlog is None:  # everything held went out at once
            self._report_caught_up()

    def _release_held(self) -> None:
        hold, self._hold = self._hold, None
        for frame in hold.frames if hold is not None else ():
            self.send(frame)

    def _report_caught_up(self) -> None:
        if self.dropped and not self.closing and self._hold is None:
            lost, self.dropped = self.dropped, 0
            if self._owner is not None:
                self._owner.caught_up(self, lost)

    def _lose_batch(self) -> None:
        self.dropped += 1
        if self._owner is not None:
            self._owner.batch_dropped(self)

    def replay(self, frames: Iterable[bytes]) -> None:
        """Send ``frames`` (encoded lazily, one at a time) before any live batch.

        The writer pulls the next frame only once the socket took the last one,
        and live batches are held meanwhile (within ``max_pending``, oldest
        dropped first). So a replay costs what the peer actually reads.
        """
        if self.closing:
            return
        if self._hold is None:
            self._hold = _Hold()
        self._hold.replay = iter(frames)
        if self._backlog is None:
            self._start_writer(deque(), 0)

    def send(self, frame: bytes, droppable: bool = True) -> None:
        """Queue one encoded frame; drop old batches rather than grow past the bound.
        Nothing is sent once a close frame went either way."""
        if self.protocol.state is OPEN:  # not self.closing: a property costs a call per delivery
            self._send(frame, droppable)

    def _send(self, frame: bytes, droppable: bool) -> None:
        hold = self._hold
        if droppable and hold is not None:
            hold.frames.append(frame)
            hold.size += len(frame)
            while hold.size > self.max_pending and len(hold.frames) > 1:
                hold.size -= len(hold.frames.popleft())
                self._lose_batch()
            return
        if self._backlog is not None:  # the hub's keepalive calls check_stall() every second
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

    def _start_writer(self, queue: deque[Entry], size: int) -> None:
        backlog = self._backlog = _Backlog(queue, size)
        self.had_backlog = True
        backlog.writer = gevent.spawn(self._write_backlog, backlog)

    def _enqueue(self, frame: bytes, droppable: bool, charged: bool = True) -> Entry | None:
        """Queue behind the backlog. O(1) amortised: each batch is dropped at most once.

        Undroppable frames are ``charged`` to the client's bound, except replay
        frames: the writer pulls one only while little is queued.
        """
        backlog = self._backlog
        assert backlog is not None
        cost = len(frame) + QUEUED_FRAME_COST if charged and not droppable else 0
        entry: Entry = [frame, droppable, cost]
        backlog.queue.append(entry)
        backlog.size += len(frame)
        backlog.undroppable_cost += cost
        if droppable:
            backlog.droppable.append(entry)
        droppable_queue = backlog.droppable
        while backlog.size > self.max_pending and droppable_queue:
            oldest = droppable_queue.popleft()
            backlog.size -= len(oldest[0])
            oldest[0], oldest[1] = b"", False
            self._lose_batch()
        if backlog.undroppable_cost > self.max_pending:
            # Replies it does not read, faster than it reads them: serving it for
            # ever would cost memory without end, and dropping replies would break
            # the protocol. Hang up (1008), as with a client that takes nothing.
            self._give_up("client does not read its replies", "overflow")
            return None
        return entry

    def _send_control(self, frame: bytes) -> None:
        """A frame the protocol wants written; a pong is coalesced with one still queued untouched."""
        backlog = self._backlog
        if backlog is None or frame[0] != PONG_FIRST_BYTE:
            self._send(frame, droppable=False)
            return
        queued = backlog.pong
        if queued is not None:
            growth = len(frame) - len(queued[0])
            queued[0] = frame
            queued[2] += growth
            backlog.size += growth
            backlog.undroppable_cost += growth
        else:
            entry = self._enqueue(frame, False)
            if self._backlog is backlog and not self.closing:
                backlog.pong = entry

    def check_stall(self) -> None:
        """Give up on a backlogged peer that has taken nothing for ``stall_timeout_s``."""
        backlog = self._backlog
        if backlog is not None and backlog.queue and not self.closing \
                and time.monotonic() - backlog.last_progress > self.stall_timeout_s:
            self._give_up("client too slow", "slow")

    def _give_up(self, reason: str, counted_as: str) -> None:
        """Drop what is queued, leave a 1008 close frame behind the partly sent one, and hang up soon."""
        backlog = self._backlog
        assert backlog is not None
        # Our close may be the frame that overflowed: then this one replaces it.
        goodbye = self.protocol.send_close(POLICY_VIOLATION, reason) or close_frame(POLICY_VIOLATION, reason)
        kept: deque[Entry] = deque()
        if backlog.queue:
            head = backlog.queue[0]  # may be partly on the wire: it must finish
            head[1], head[2] = False, 0
            kept.append(head)
        kept.append([goodbye, False, 0])
        backlog.queue = kept
        backlog.size = sum(len(entry[0]) for entry in kept)  # two entries
        backlog.droppable, backlog.undroppable_cost, backlog.pong = deque(), 0, None
        self._hold = None
        metrics.CLIENTS_CLOSED.labels(counted_as).inc()
        gevent.spawn_later(CLOSE_WAIT_S, self.abort)

    def _write_backlog(self, backlog: _Backlog) -> None:
        """The writer greenlet of a backlogged client: write until the queue is empty.

        Many queued frames go out in one ``sendmsg`` on the raw non-blocking socket,
        and the greenlet waits on a write watcher only when the socket is full.
        (gevent's ``sendall`` per frame cost three times as much: it asks the kernel
        for SO_SNDBUF and slices the frame on every call.)
        A replay is pulled a frame at a time, yielding between frames.
        """
        hub = get_hub()
        if self.closed or self._raw.fileno() < 0:  # closed before this greenlet first ran
            self._backlog = None
            return
        writable = hub.loop.io(self._raw.fileno(), 2)  # 2: writable
        try:
            while True:
                self._forget_sent(backlog, 0)  # batches dropped at the front
                if backlog.size < REPLAY_AHEAD_BYTES and self._next_replay_frame():
                    gevent.sleep(0)  # one chunk encoded: let the others run
                    continue
                if not backlog.queue:
                    if self.dropped and not self.closing and self._hold is None:
                        self._report_caught_up()  # the owner queues its notice behind us
                        continue
                    break
                try:
                    sent = self._raw.sendmsg([entry[0] for entry in islice(backlog.queue, DRAIN_FRAMES)])
                except BlockingIOError:
                    hub.wait(writable)
                    continue
                backlog.last_progress = time.monotonic()
                self._forget_sent(backlog, sent)
        except OSError:
            self._backlog = None
            self.abort()
        finally:
            writable.close()
            if self._backlog is backlog:
                self._backlog = None

    def _next_replay_frame(self) -> bool:
        """Queue the next replay frame; at the end, release the batches held meanwhile.
        False when there is nothing more to write."""
        hold = self._hold
        if hold is None or hold.replay is None or self.closing:
            return False
        frame = next(hold.replay, None)
        if frame is None:
            hold.replay = None
            if not hold.paused:
                self._release_held()  # queued behind us: the writer goes on with them
            return bool(self._backlog is not None and self._backlog.queue)
        self._enqueue(frame, False, charged=False)
        return True

    def _forget_sent(self, backlog: _Backlog, sent: int) -> None:
        """Take ``sent`` bytes off the front of the queue (and any dropped batches there);
        a frame left partly sent is kept, undroppable."""
        queue, droppable = backlog.queue, backlog.droppable
        backlog.size -= sent
        while queue:
            entry = queue[0]
            size = len(entry[0])
            if sent < size:
                if sent:
                    if entry[1]:  # the oldest batch still queued: now it must finish
                        droppable.popleft()
                        entry[1] = False
                    entry[0] = memoryview(entry[0])[sent:]
                    if entry is backlog.pong:
                        backlog.pong = None
                return
            sent -= size
            queue.popleft()
            if entry[1]:
                droppable.popleft()
            backlog.undroppable_cost -= entry[2]
            if entry is backlog.pong:
                backlog.pong = None

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the socket is shut if the peer doesn't answer in time."""
        frame = self.protocol.send_close(code, reason)
        if frame is not None:
            self._send(frame, droppable=False)
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
        """Hand what arrived to the protocol, write its answers, act on its events."""
        self.last_seen = time.monotonic()
        self._handle(deque((data if type(data) is bytes else bytes(data),)))

    def _handle(self, events: deque[Event | bytes]) -> None:
        """Parse input and act on the events it makes until all is done or the slice is
        used up; then the rest waits for the loop's next turn with reading stopped, so
        that what the peer sends meanwhile waits in the kernel, not here.

        Input not parsed yet (``bytes``) is always last in ``events``, and is parsed
        ``READ_BYTES`` at a time: the bytes read past the upgrade request can be 64 KiB.
        """
        deadline = time.monotonic() + WORK_SLICE_S
        while events and not self.closed:
            event = events.popleft()
            kind = type(event)
            if kind is bytes:
                self.protocol.receive_data(event[:READ_BYTES])
                events.extend(self.protocol.events_received())
                if len(event) > READ_BYTES:
                    events.append(event[READ_BYTES:])
            elif kind is TextMessage:
                self._flush_protocol()  # a pong owed goes before the reply
                if self._owner is not None:
                    self._owner.message_received(self, event.text)
            elif kind is ProtocolError:
                self._flush_protocol()
                log.info("closing WebSocket %s: %s (%d)", self.address, event.reason, event.code)
                metrics.CLIENTS_CLOSED.labels("protocol").inc()
                # The protocol ignores the peer's input from now on, but we keep reading it
                # until the peer hangs up or the close timer aborts us: closing a socket with
                # unread input makes the kernel send a reset, and the peer would lose our
                # close frame and its code.
            elif kind is Close:
                self._flush_protocol()
                self.abort_when_flushed()  # our close (or our answer to its close) is written
            elif kind is Ping:
                self._flush_protocol()  # the pongs of this slice; queued ones are coalesced
            # Pong: reading it (last_seen) is all it is for.
            if events and time.monotonic() > deadline:
                break
        self._flush_protocol()
        if events and not self.closed:
            self._unhandled = events
            if self._watcher is not None:
                self._watcher.stop()
                get_hub().loop.run_callback(self._resume_reading)

    def _flush_protocol(self) -> None:
        """Write what the protocol wants written; a close frame starts the close timer."""
        for frame in self.protocol.data_to_send():
            self._send_control(frame)
            if frame[0] == CLOSE_FIRST_BYTE:
                gevent.spawn_later(CLOSE_WAIT_S, self.abort)

    def _resume_reading(self) -> None:
        events, self._unhandled = self._unhandled, None
        if self.closed or self._watcher is None:
            return
        if events:
            self._handle(events)
        if self._unhandled is None and not self.closed and self._watcher is not None:
            self._watcher.start(self._on_readable)

    def abort_when_flushed(self) -> None:
        """Hang up once the queued frames (our close answer) are written."""
        if self._backlog is None or not self._backlog.queue:
            self.abort()
        # else: the writer finishes, and the close timer hangs up

    def _finish(self) -> None:
        """The connection is over: release the watcher and the socket, tell the owner once."""
        self.protocol.connection_lost()
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        backlog, self._backlog = self._backlog, None
        if backlog is not None and backlog.writer is not None and backlog.writer is not gevent.getcurrent():
            backlog.writer.kill(block=False)
        self._hold, self._unhandled = None, None
        try:
            self.sock.close()
        except OSError:
            pass
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.connection_closed(self)
