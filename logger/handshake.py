"""The opening handshake of ``/ws``, checked as RFC 6455 §4.2.1 says, before the 101.

gevent-websocket 0.10.1 checks less and answers worse: ``Connection:
notupgradeatall`` passes (it looks for the substring ``upgrade``), versions 7
and 8 are accepted, a key that is not base64 raises out of ``b64decode`` (500
with a traceback: it catches ``TypeError`` only), an HTTP/1.0 upgrade gets the
status line ``402 Bad Request``, and its refusals write ``str`` bodies that
pywsgi rejects with a traceback. So every check happens here first, as pure
logic over the WSGI environ, and a request that fails gets a 4xx and one log
line; gevent-websocket then only ever sees requests it accepts.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

VERSION = "13"  # the only version of RFC 6455; a 426 names it (§4.4)


class HandshakeError(Exception):
    """An upgrade request to refuse: the HTTP status, a reason, and extra response headers."""

    def __init__(self, status: str, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def tokens(value: str) -> set[str]:
    """A comma-separated header's tokens, lower case (``Connection: keep-alive, Upgrade``)."""
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def wants_websocket(environ: dict[str, Any]) -> bool:
    """Does this request ask for a WebSocket at all? (Else it is plain HTTP for Flask.)"""
    return "websocket" in tokens(environ.get("HTTP_UPGRADE", ""))


def check_upgrade(environ: dict[str, Any], request_version: str) -> None:
    """Raise HandshakeError unless this is a valid client handshake (RFC 6455 §4.2.1)."""
    if request_version != "HTTP/1.1":  # §4.2.1 (1): HTTP/1.1 or higher, and HTTP/2 never reaches pywsgi
        raise HandshakeError("400 Bad Request", "a WebSocket upgrade needs HTTP/1.1")
    if environ.get("REQUEST_METHOD") != "GET":
        raise HandshakeError("400 Bad Request", "a WebSocket upgrade is a GET request")
    if not environ.get("HTTP_HOST"):  # (2)
        raise HandshakeError("400 Bad Request", "a WebSocket upgrade needs a Host header")
    if "upgrade" not in tokens(environ.get("HTTP_CONNECTION", "")):  # (4)
        raise HandshakeError("400 Bad Request", "Connection must include the Upgrade token")
    version = environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip()
    if version != VERSION:  # (6), and §4.4: answer with the versions we speak
        raise HandshakeError("426 Upgrade Required", "only WebSocket version 13 is supported",
                             (("Sec-WebSocket-Version", VERSION),))
    if not valid_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")):  # (5)
        raise HandshakeError("400 Bad Request", "Sec-WebSocket-Key must be 16 random bytes in base64")


def valid_key(key: str) -> bool:
    """A base64 value that decodes to exactly 16 bytes (24 characters, padding included)."""
    key = key.strip()
    if len(key) != 24 or not key.isascii():
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False
