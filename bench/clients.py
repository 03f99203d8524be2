"""The load-client process: thousands of WebSocket clients in one asyncio loop.

    python -m bench.clients      # driven over stdin/stdout, one JSON object per line

Each client is a raw TCP socket that does the RFC 6455 handshake itself and
parses frames with a small state machine (an ``asyncio.BufferedProtocol`` that
reads into one buffer shared by every connection), so an idle client costs a
couple of KB here and a delivery costs one ``recv_into`` and a few comparisons.
Server pings are answered with pongs and a server's close frame is echoed.
Sockets use ``SO_LINGER 0``: closing sends RST and leaves no TIME_WAIT, so
repeated runs of 10,000 connections do not run out of local ports.

Clients belong to named groups (``normal``, ``stalled``...). Each group counts
``logs`` messages and their payload bytes. A *sampled* client (every
``sample_every``-th of a group) also parses each message and computes, per
record, receive time − the record's ``attributes.sent`` (ns, set by the
producer): the latency samples. A *stalled* client stops reading after the
``hello`` (``pause_reading``), with a small ``SO_RCVBUF``.

Commands (a reply line follows each, ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``):

* ``{"cmd": "connect", "port": P, "n": N, "group": "normal", "sample_every": 0,
  "stall": false, "rcvbuf": 0, "concurrency": 200, "timeout": 120, "sources": null,
  "tokens": null}`` -- open N clients; the reply comes when each got its ``hello`` (or
  failed). ``sources``: local addresses (``127.0.0.2``...) the clients bind to in turn, for
  more connections than one address has ephemeral ports. ``tokens``: JSON Web Tokens the
  clients send in turn as ``Authorization: Bearer`` (issue 14).
* ``{"cmd": "stats", "reset": true}`` -- counters per group since the last reset.
* ``{"cmd": "close", "group": null}`` -- drop clients (a group, or all).
* ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
import traceback
from array import array
from collections import Counter
from typing import Any

import orjson

from bench.procstat import raise_nofile

SHARED = bytearray(256 * 1024)  # every connection reads into this; processed before the next read
SHARED_MV = memoryview(SHARED)
LOGS_PREFIX = b'{"type":"logs"'
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # any base64 of 16 bytes will do
LINGER0 = struct.pack("ii", 1, 0)

OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux: the port is chosen at connect()


class Group:
    """Counters of one group of clients."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conns: list[Conn] = []
        self.reset()

    def reset(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.records = 0  # sampled clients only
        self.sampled_messages = 0
        self.other = Counter()  # non-logs messages by type (dropped, pong, ...)
        self.latency_ns = array("q")
        self.first = 0.0
        self.last = 0.0
        self.t_reset = time.time()
        for c in self.conns:
            c.messages = 0

    def summary(self) -> dict[str, Any]:
        per_conn = sorted(c.messages for c in self.conns if c.open) or [0]
        lat = sorted(self.latency_ns)
        out: dict[str, Any] = {
            "clients": len(self.conns), "open": sum(1 for c in self.conns if c.open),
            "sampled_clients": sum(1 for c in self.conns if c.sample and c.open),
            "messages": self.messages, "bytes": self.bytes, "records_sampled": self.records,
            "sampled_messages": self.sampled_messages,
            "records_per_message": round(self.records / self.sampled_messages, 2) if self.sampled_messages else None,
            "other": dict(self.other), "since": self.t_reset, "now": time.time(),
            "first": self.first, "last": self.last,
            "per_client_messages": {"min": per_conn[0], "median": per_conn[len(per_conn) // 2], "max": per_conn[-1]},
            "close_codes": dict(Counter(c.close_code for c in self.conns if c.close_code is not None)),
            "lost": sum(1 for c in self.conns if not c.open and c.close_code is None),
        }
        if lat:
            def pct(p: float) -> float:
                return round(lat[min(int(p * len(lat)), len(lat) - 1)] / 1e6, 3)
            out["latency_ms"] = {"n": len(lat), "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
                                 "max": round(lat[-1] / 1e6, 3), "min": round(lat[0] / 1e6, 3)}
        return out


class Conn(asyncio.BufferedProtocol):
    __slots__ = ("group", "sample", "stall", "transport", "hello", "handshake", "hdr", "left",
                 "opcode", "keep", "messages", "open", "close_code", "authorization")

    def __init__(self, group: Group, sample: bool, stall: bool, hello: asyncio.Future,
                 token: str | None = None) -> None:
        self.authorization = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
        self.group = group
        self.sample = sample
        self.stall = stall
        self.transport: asyncio.Transport | None = None
        self.hello: asyncio.Future | None = hello
        self.handshake: bytearray | None = bytearray()
        self.hdr = b""  # a frame header split across reads
        self.left = 0  # payload bytes of the current frame still to come
        self.opcode = 0
        self.keep: bytearray | None = None  # payload being kept (control, hello, sampled)
        self.messages = 0
        self.open = False
        self.close_code: int | None = None

    # -- asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True
        transport.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"  # type: ignore[attr-defined]
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY +
                        b"\r\nSec-WebSocket-Version: 13\r\n" + self.authorization + b"\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.hello is not None and not self.hello.done():
            self.hello.set_exception(ConnectionError(f"connection lost before hello: {exc!r}"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return SHARED_MV

    def buffer_updated(self, nbytes: int) -> None:
        data = SHARED_MV[:nbytes]
        if self.handshake is not None:
            self.handshake += data
            end = self.handshake.find(b"\r\n\r\n")
            if end < 0:
                if len(self.handshake) > 8192:
                    self.fail("handshake response too long")
                return
            head, rest = bytes(self.handshake[:end]), bytes(self.handshake[end + 4:])
            self.handshake = None
            if not head.startswith(b"HTTP/1.1 101"):
                self.fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
            if not rest:
                return
            data = memoryview(rest)
        self.feed(data)

    def eof_received(self) -> bool:
        return False  # close the transport

    # -- frames ---------------------------------------------------------------------------

    def feed(self, data: memoryview) -> None:
        if self.hdr:
            data = memoryview(self.hdr + bytes(data))
            self.hdr = b""
        pos, end = 0, len(data)
        group = self.group
        while pos < end:
            if self.left:  # inside a payload
                take = min(self.left, end - pos)
                if self.keep is not None:
                    self.keep += data[pos:pos + take]
                self.left -= take
                pos += take
                if not self.left:
                    self.frame_done()
                continue
            if end - pos < 2:
                self.hdr = bytes(data[pos:end])
                return
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            size = 2 if length < 126 else (4 if length == 126 else 10)
            if end - pos < size:
                self.hdr = bytes(data[pos:end])
                return
            if length == 126:
                length = (data[pos + 2] << 8) | data[pos + 3]
            elif length == 127:
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
            pos += size
            self.opcode = opcode = b0 & 0x0F
            self.left = length
            if opcode == OP_TEXT and self.hello is None and not self.sample and end - pos >= len(LOGS_PREFIX):
                # The common case: count it from its first bytes, skip the rest.
                if data[pos:pos + len(LOGS_PREFIX)] == LOGS_PREFIX:
                    self.keep = None
                    self.messages += 1
                    group.messages += 1
                    group.bytes += length
                    group.last = time.time()
                    if not group.first:
                        group.first = group.last
                    self.opcode = -1  # counted already
                else:
                    self.keep = bytearray()
            else:
                self.keep = bytearray()
            if not length:
                self.frame_done()

    def frame_done(self) -> None:
        opcode, payload, self.keep = self.opcode, self.keep, None
        if opcode == -1 or payload is None:
            return
        if opcode == OP_PING:
            self.write_frame(0xA, bytes(payload))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.write_frame(0x8, bytes(payload[:2]))
            assert self.transport is not None
            self.transport.close()
        elif opcode == OP_TEXT:
            self.text(payload)

    def text(self, payload: bytearray) -> None:
        now_ns = time.time_ns()
        group = self.group
        if self.hello is not None:
            hello, self.hello = self.hello, None
            if not hello.done():
                hello.set_result(None)
            if self.stall:
                assert self.transport is not None
                self.transport.pause_reading()
            return
        if not payload.startswith(LOGS_PREFIX):
            try:
                kind = orjson.loads(payload).get("type", "?")
            except (orjson.JSONDecodeError, AttributeError):
                kind = "not-json"
            group.other[kind] += 1
            return
        self.messages += 1
        group.messages += 1
        group.bytes += len(payload)
        group.last = now_ns / 1e9
        if not group.first:
            group.first = group.last
        if self.sample:
            records = orjson.loads(payload)["records"]
            group.sampled_messages += 1
            group.records += len(records)
            lat = group.latency_ns
            for r in records:
                sent = r.get("attributes", {}).get("sent")
                if sent:
                    lat.append(now_ns - sent)

    def write_frame(self, opcode: int, payload: bytes) -> None:
        # Client frames must be masked; an all-zero key leaves the payload as it is.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload)

    def fail(self, reason: str) -> None:
        if self.hello is not None and not self.hello.done():
            self.hello.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()


class Pool:
    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}

    async def connect(self, port: int, n: int, group: str = "normal", sample_every: int = 0, stall: bool = False,
                      rcvbuf: int = 0, concurrency: int = 200, timeout: float = 120.0,
                      host: str = "127.0.0.1", sources: list[str] | None = None,
                      tokens: list[str] | None = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        grp = self.groups.setdefault(group, Group(group))
        gate = asyncio.Semaphore(concurrency)
        errors: Counter[str] = Counter()
        began = time.monotonic()
        base = len(grp.conns)

        async def one(i: int) -> None:
            async with gate:
                for attempt in range(3):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                    if rcvbuf:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                    if sources:  # past the ~28k ephemeral ports of one source address
                        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                        sock.bind((sources[(base + i) % len(sources)], 0))
                    sock.setblocking(False)
                    hello = loop.create_future()
                    conn = Conn(grp, bool(sample_every) and (base + i) % sample_every == 0, stall, hello,
                                tokens[(base + i) % len(tokens)] if tokens else None)
                    try:
                        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 30)
                        await loop.create_connection(lambda: conn, sock=sock)
                        await asyncio.wait_for(hello, 30)
                        grp.conns.append(conn)
                        return
                    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                        errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                        if conn.transport is not None:
                            conn.transport.abort()
                        else:
                            sock.close()
                        await asyncio.sleep(0.2 * (attempt + 1))

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        return {"connected": len(grp.conns) - base, "wanted": n, "errors": dict(errors),
                "seconds": round(time.monotonic() - began, 3), "group_size": len(grp.conns)}

    def stats(self, reset: bool = False) -> dict[str, Any]:
        out = {name: g.summary() for name, g in self.groups.items()}
        if reset:
            for g in self.groups.values():
                g.reset()
        return out

    async def close(self, group: str | None = None) -> dict[str, Any]:
        names = [group] if group else list(self.groups)
        closed = 0
        for name in names:
            grp = self.groups.pop(name, None)
            if grp is None:
                continue
            for c in grp.conns:
                if c.transport is not None:
                    c.transport.abort()  # SO_LINGER 0: RST, no TIME_WAIT
                    closed += 1
        await asyncio.sleep(0.2)
        return {"closed": closed}


async def serve_commands() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pool = Pool()
    out = sys.stdout
    out.write(orjson.dumps({"ok": True, "ready": True, "nofile": raise_nofile()}).decode() + "\n")
    out.flush()
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            msg = orjson.loads(line)
            cmd = msg.pop("cmd")
            if cmd == "connect":
                reply = await pool.connect(**msg)
            elif cmd == "stats":
                reply = pool.stats(**msg)
            elif cmd == "close":
                reply = await pool.close(**msg)
            elif cmd == "quit":
                await pool.close()
                reply = {}
            else:
                raise ValueError(f"unknown command {cmd!r}")
            reply["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported to the driver
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            cmd = None
        out.write(orjson.dumps(reply).decode() + "\n")
        out.flush()
        if cmd == "quit":
            return


def main() -> None:
    raise_nofile()
    asyncio.run(serve_commands())


if __name__ == "__main__":
    main()
