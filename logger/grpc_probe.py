"""Does a collector address speak HTTP/2 only, like an OTLP/gRPC receiver? (issue 17)

The Go service this one replaces sent OTLP/gRPC and documented
``OTLP_ENDPOINT=localhost:4317``. Posted OTLP/HTTP (HTTP/1.1), a gRPC server
answers with its HTTP/2 SETTINGS frame and then resets the connection, and
all ``requests`` reports is ``Connection aborted ... BadStatusLine`` or
``Connection reset by peer``, which reads like a network fault. The OTLP sink
runs this probe once after such a failure (off the hot path: the batch has
failed already and waits for its retry) to say which it is.

How the reply is told apart (RFC 9113 §3.4): an HTTP/2 server sends its
connection preface, a SETTINGS frame, and may do so before the client says
anything (Rotel's gRPC receiver does, checked; a server that waits is drawn
out by the request below). An HTTP/1.1 server never speaks first. So the
probe listens briefly, and if the server is silent it
asks ``GET /`` over HTTP/1.1 (no data enters any pipeline) and reads the
first bytes of the answer: ``HTTP/1.x`` is an HTTP/1.1 server, a frame
header of type SETTINGS or GOAWAY on stream 0 is an HTTP/2-only server,
anything else (a reset with no bytes, a timeout, TLS) proves nothing.
"""

from __future__ import annotations

import socket

HTTP1, HTTP2, UNKNOWN = "http/1.1", "http/2 only", "unknown"

_FRAME_HEADER_BYTES = 9
_SETTINGS, _GOAWAY = 0x4, 0x7
_MAX_DEFAULT_FRAME = 1 << 14  # SETTINGS_MAX_FRAME_SIZE before any SETTINGS (RFC 9113 §4.2)
_SERVER_FIRST_WAIT_S = 0.5


def classify(reply: bytes) -> str:
    """What the first bytes a server sent say about the protocol it speaks."""
    if reply.startswith(b"HTTP/1."):
        return HTTP1
    if len(reply) < _FRAME_HEADER_BYTES:
        return UNKNOWN
    length = int.from_bytes(reply[0:3], "big")
    frame_type = reply[3]
    stream = int.from_bytes(reply[5:9], "big") & 0x7FFF_FFFF
    if frame_type in (_SETTINGS, _GOAWAY) and stream == 0 and length <= _MAX_DEFAULT_FRAME:
        return HTTP2
    return UNKNOWN


def probe(host: str, port: int, timeout: float = 2.0) -> str:
    """Connect to ``host:port`` over plain TCP and classify what the server says.

    Blocks the calling greenlet for at most about ``timeout`` + 0.5 s (gevent
    makes the socket cooperative). Never raises: an address that cannot be
    reached is UNKNOWN, the caller's own error says why.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(_SERVER_FIRST_WAIT_S)
            reply = _read_some(sock)
            if reply is None:  # silent, as an HTTP/1.1 server is: ask it something harmless
                sock.settimeout(timeout)
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                reply = _read_some(sock)
            return classify(reply or b"")
    except OSError:
        return UNKNOWN


def _read_some(sock: socket.socket) -> bytes | None:
    """Up to one frame header's worth of bytes; None if the server said nothing in time."""
    received = b""
    try:
        while len(received) < _FRAME_HEADER_BYTES:
            chunk = sock.recv(_FRAME_HEADER_BYTES - len(received))
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        return received or None
    except OSError:  # reset: what arrived before it still counts
        pass
    return received
