"""RFC 6455 conformance of the real server under Gunicorn, Autobahn-style (sections 5, 6, 7).

The cases live in ``tests/ws_conformance.py`` (the protocol's unit tests run
the same ones without a socket). Each case gets its own connection from a raw
socket; what the server writes is parsed by websockets (``tests.ws_frames``),
so a frame it would refuse fails the case. A case passes when the server
answers every message it should (the hub's reply to a JSON ``ping``, or its
``error`` for a message that is not JSON), closes with the expected code,
writes nothing after its close frame and hangs up. A case that must stay open
is closed by us (1000) once its replies arrived, and must be answered 1000.
One service serves every case of a section: starting Gunicorn per case would
take longer than the cases.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.ws_conformance import CLOSE_CASES, FRAGMENTATION_CASES, UTF8_CASES, Case, close
from tests.ws_frames import Close, FrameReader, Opcode, masked
from tests.wsload import handshake

CASE_TIMEOUT_S = 5.0


class Peer:
    """A raw client: sends frames, reads the server's back through websockets' parser."""

    def __init__(self, port: int) -> None:
        self.sock, status, rest = handshake("127.0.0.1", port)
        assert status == 101
        self.sock.settimeout(CASE_TIMEOUT_S)
        self.reader = FrameReader()
        self.reader.feed(rest)
        self.replies: list[dict] = []
        self.close_code: int | None = None
        self.after_close: list[Opcode] = []
        self.eof = False
        self._ready: list = []
        hello = self.next_frame()
        assert hello is not None and json.loads(hello.data)["type"] == "hello"

    def next_frame(self):
        while not self._ready:
            self._ready = self.reader.frames()
            if self._ready:
                break
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                data = b""
            if not data:
                self.eof = True
                return None
            self.reader.feed(data)
        return self._ready.pop(0)

    def read(self, until_replies: int | None = None) -> None:
        """Read until the server's close frame and hang-up (or ``until_replies`` text replies)."""
        while until_replies is None or len(self.replies) < until_replies:
            frame = self.next_frame()
            if frame is None:
                return
            if self.close_code is not None:
                self.after_close.append(frame.opcode)
            elif frame.opcode is Opcode.TEXT:
                self.replies.append(json.loads(frame.data))
            elif frame.opcode is Opcode.CLOSE:
                self.close_code = Close.parse(bytes(frame.data)).code
                try:
                    self.sock.shutdown(socket.SHUT_WR)  # we are done too; the server hangs up
                except OSError:  # it already has
                    pass
            elif frame.opcode is Opcode.PING:
                self.sock.sendall(masked(bytes(frame.data), 0xA))


def play(port: int, case: Case) -> list[str]:
    """Run one case against the server; the list of what went wrong (empty: it passed)."""
    peer = Peer(port)
    problems = []
    try:
        for frame in case.frames:
            try:
                peer.sock.sendall(frame)
            except OSError:  # hung up on us already (a failed case): what it wrote says why
                break
        if case.close_code is None:
            peer.read(until_replies=len(case.messages))
            peer.sock.sendall(close(1000))
        peer.read()
    finally:
        peer.sock.close()
    expected_code = case.close_code or 1000
    if peer.close_code != expected_code:
        problems.append(f"closed with {peer.close_code}, expected {expected_code}")
    if case.close_code is None and len(peer.replies) != len(case.messages):
        problems.append(f"{len(peer.replies)} replies to {len(case.messages)} messages")
    wanted = [json.loads(m)["type"] == "ping" if m.startswith("{") else False for m in case.messages]
    if case.close_code is None and [r["type"] == "pong" for r in peer.replies] != wanted:
        problems.append(f"replies {peer.replies}")
    if peer.after_close:
        problems.append(f"wrote {[op.name for op in peer.after_close]} after its close frame")
    if not peer.eof:
        problems.append("did not hang up")
    return problems


@pytest.fixture
def server(service, topic):
    return service(topic())


@pytest.mark.parametrize("section, cases", [
    ("5 fragmentation", FRAGMENTATION_CASES),
    ("6 UTF-8", UTF8_CASES),
    ("7 close handling", CLOSE_CASES),
])
def test_autobahn_style_section(server, section, cases):
    failures = {case.name: problems for case in cases if (problems := play(server.port, case))}
    assert not failures, f"section {section}: {json.dumps(failures, indent=1, ensure_ascii=False)}"
    log = server.log_text()
    assert "Traceback" not in log, log[-3000:]
