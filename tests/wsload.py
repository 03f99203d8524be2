"""Many WebSocket clients in one thread: raw sockets, one selector, counted frames.

For tests that need hundreds of clients (a thread per websocket-client
connection would not scale) or clients that misbehave on purpose: never read
(stalled), never answer pings, send oversized or garbage frames.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from devstack.waiting import wait_until
from tests.ws_frames import Close, FrameReader, Opcode, masked


@dataclass
class RawClient:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    eof: bool = False
    pings_answered: int = 0
    reader: FrameReader = field(default_factory=FrameReader)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for m in self.messages if m.get("type") == "logs" for r in m["records"]]


def handshake(host: str, port: int, path: str = "/ws", origin: str | None = None, rcvbuf: int | None = None,
              headers: Sequence[str] = ()) -> tuple[socket.socket, int, bytes]:
    """Open a connection and send the upgrade; return (socket, HTTP status, bytes after the headers).
    ``headers``: more header lines, e.g. ``"Authorization: Bearer …"``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    if rcvbuf:  # before connect(), or the window is already negotiated
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *headers]
    if origin:
        lines.append(f"Origin: {origin}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head, _, rest = read_response_head(sock).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return sock, status, rest


def read_response_head(sock: socket.socket) -> bytes:
    """Read until the end of an HTTP response head (or EOF); returns all that was read."""
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    return response


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    return masked(payload, opcode)


def parse_frames(client: RawClient, answer_pings: bool = True) -> None:
    """Consume ``client.buffer``: complete frames are parsed (by websockets, see
    ``tests.ws_frames``), a partial one waits in the client's reader."""
    client.reader.feed(bytes(client.buffer))
    del client.buffer[:]
    for frame in client.reader.frames():
        if frame.opcode is Opcode.TEXT:
            client.messages.append(json.loads(frame.data))
        elif frame.opcode is Opcode.CLOSE:
            client.close_code = Close.parse(bytes(frame.data)).code
        elif frame.opcode is Opcode.PING and answer_pings:
            client.sock.setblocking(True)
            client.sock.sendall(masked_frame(bytes(frame.data), 0xA))
            client.sock.setblocking(False)
            client.pings_answered += 1


Upgrade = tuple[str, Sequence[str]]  # (path with query, extra header lines) of one client


class ClientPool:
    """N clients read by one background thread; pings are answered unless ``answer_pings`` is off.

    ``count`` plain clients of ``/ws``, then one client per item of ``upgrades``
    (path and header lines of its own: a query, a token).
    """

    def __init__(self, host: str, port: int, count: int = 0, *, answer_pings: bool = True,
                 upgrades: Sequence[Upgrade] = ()) -> None:
        self.clients: list[RawClient] = []
        self.answer_pings = answer_pings
        self._selector = selectors.DefaultSelector()
        for path, headers in [("/ws", ())] * count + list(upgrades):
            sock, status, rest = handshake(host, port, path=path, headers=headers)
            if status != 101:
                raise ConnectionError(f"upgrade of {path[:60]} answered {status}")
            sock.setblocking(False)
            client = RawClient(sock, bytearray(rest))
            self.clients.append(client)
            self._selector.register(sock, selectors.EVENT_READ, client)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for client in self.clients:
            parse_frames(client, self.answer_pings)
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                client: RawClient = key.data
                try:
                    data = client.sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    client.eof = True
                    self._selector.unregister(client.sock)
                    continue
                client.buffer += data
                parse_frames(client, self.answer_pings)

    def send(self, client: RawClient, message: dict[str, Any]) -> None:
        """Send one text message (small: one non-blocking send takes it)."""
        client.sock.sendall(masked_frame(json.dumps(message).encode()))

    def wait(self, condition, timeout: float, what: str) -> None:
        wait_until(condition, timeout, what)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for client in self.clients:
            client.sock.close()
        self._selector.close()
