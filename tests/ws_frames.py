"""What the server sends, read by a WebSocket implementation this project did not write.

``websockets.frames.Frame.parse`` checks each server frame as RFC 6455 says
(no mask from a server, no RSV bits, control frames short and unfragmented)
and ``websockets.frames.Close.parse`` checks close codes: a test that reads
through here fails if our framing is wrong, instead of agreeing with it.
Frames the tests *send* are built by hand (``masked``), since many are wrong
on purpose.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Generator

from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

__all__ = ["Close", "Frame", "FrameReader", "Opcode", "close_code", "masked", "read_frame"]


def masked(payload: bytes, opcode: int = 0x1, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame, masked as clients must; any opcode, FIN or RSV bits, so it can be wrong."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask + body


def _parse(read_exact: Callable[[int], Generator[None, None, bytes | bytearray]]) -> Generator[None, None, Frame]:
    return Frame.parse(read_exact, mask=False)


def read_frame(sock) -> tuple[int, bytes]:
    """The next frame from a blocking socket, as (opcode, payload); EOFError at the end."""
    def read_exact(n: int) -> Generator[None, None, bytes]:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data
        yield  # a generator, as Frame.parse wants: it never waits, the socket blocks instead

    parser = _parse(read_exact)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame.opcode.value, bytes(frame.data)
    raise AssertionError("unreachable: read_exact never yields")


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload, checked by websockets (1005 for an empty one)."""
    return Close.parse(payload).code


class FrameReader:
    """Frames from bytes fed as they arrive (non-blocking sockets, many clients)."""

    def __init__(self) -> None:
        self._stream = StreamReader()
        self._parser: Generator[None, None, Frame] | None = None

    def feed(self, data: bytes) -> None:
        self._stream.feed_data(data)

    def frames(self) -> list[Frame]:
        """Every frame completed by what was fed so far."""
        out = []
        while True:
            if self._parser is None:
                self._parser = _parse(self._stream.read_exact)
            try:
                next(self._parser)
            except StopIteration as done:
                out.append(done.value)
                self._parser = None
            else:
                return out
