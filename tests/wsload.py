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
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from devstack.waiting import wait_until


@dataclass
class RawClient:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    eof: bool = False
    pings_answered: int = 0

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for m in self.messages if m.get("type") == "logs" for r in m["records"]]


def handshake(host: str, port: int, path: str = "/ws", origin: str | None = None, rcvbuf: int | None = None
              ) -> tuple[socket.socket, int, bytes]:
    """Open a connection and send the upgrade; return (socket, HTTP status, bytes after the headers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    if rcvbuf:  # before connect(), or the window is already negotiated
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    headers = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
               f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin:
        headers.append(f"Origin: {origin}")
    sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
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
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + mask + body


def parse_frames(client: RawClient, answer_pings: bool = True) -> None:
    """Consume the complete frames in ``client.buffer``."""
    buf = client.buffer
    while len(buf) >= 2:
        opcode, length, offset = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return
            length, offset = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                return
            length, offset = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < offset + length:
            return
        payload = bytes(buf[offset:offset + length])
        del buf[:offset + length]
        if opcode == 0x1:
            client.messages.append(json.loads(payload))
        elif opcode == 0x8:
            client.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        elif opcode == 0x9 and answer_pings:
            client.sock.setblocking(True)
            client.sock.sendall(masked_frame(payload, 0xA))
            client.sock.setblocking(False)
            client.pings_answered += 1



class ClientPool:
    """N clients read by one background thread; pings are answered unless ``answer_pings`` is off."""

    def __init__(self, host: str, port: int, count: int, *, answer_pings: bool = True) -> None:
        self.clients: list[RawClient] = []
        self.answer_pings = answer_pings
        self._selector = selectors.DefaultSelector()
        for _ in range(count):
            sock, status, rest = handshake(host, port)
            if status != 101:
                raise ConnectionError(f"upgrade answered {status}")
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

    def wait(self, condition, timeout: float, what: str) -> None:
        wait_until(condition, timeout, what)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for client in self.clients:
            client.sock.close()
        self._selector.close()
