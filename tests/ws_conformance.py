"""RFC 6455 conformance cases modelled on the Autobahn test suite, as client frames to send.

Section 5 (fragmentation; control frames interleaved with a fragmented
message), 6 (UTF-8: valid characters split across fragments, invalid
sequences, invalid sequences split across fragments, failing fast) and 7
(close handling: valid and invalid codes, 1-byte payload, invalid reason,
close after close, data after close). Each case says which text messages the
server must deliver and which close code it must answer with (None: it stays
open). Used by the pure protocol tests (``tests/unit/test_ws_protocol.py``)
and against the real server under Gunicorn
(``tests/integration/test_conformance.py``), where every message is a JSON
``ping`` that the hub answers.

Close codes 1012-1014 are echoed, not refused: they were registered with IANA
after RFC 6455 (service restart, try again later, bad gateway), and
websockets' ``EXTERNAL_CLOSE_CODES`` accepts them too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tests.ws_frames import masked

TEXT, CONT, CLOSE, PING, PONG = 0x1, 0x0, 0x8, 0x9, 0xA
PING_MESSAGE = '{"type":"ping"}'
GREEK = '{"type":"ping","text":"κόσμε"}'  # Autobahn's favourite word: 2-byte characters
EMOJI = '{"type":"ping","text":"\U0001F600"}'  # a 4-byte character


@dataclass(frozen=True)
class Case:
    name: str
    frames: list[bytes]
    messages: list[str] = field(default_factory=list)  # delivered, in order
    close_code: int | None = None  # the server's close frame, or None: still open


def close(code: int | None = None, reason: bytes = b"") -> bytes:
    return masked(b"" if code is None else struct.pack("!H", code) + reason, CLOSE)


def pieces(text: str | bytes, *cuts: int) -> list[bytes]:
    """A message as fragments cut at the given byte offsets."""
    data = text.encode() if isinstance(text, str) else text
    bounds = [0, *cuts, len(data)]
    parts = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    return [masked(part, TEXT if i == 0 else CONT, fin=i == len(parts) - 1) for i, part in enumerate(parts)]


_ping = PING_MESSAGE.encode()

FRAGMENTATION_CASES = [
    Case("5.1 ping in two fragments", [masked(b"ab", PING, fin=False), masked(b"cd", CONT)], close_code=1002),
    Case("5.2 pong in two fragments", [masked(b"ab", PONG, fin=False), masked(b"cd", CONT)], close_code=1002),
    Case("5.3 text in two fragments", pieces(PING_MESSAGE, 5), [PING_MESSAGE]),
    Case("5.4 text in one fragment per byte", pieces(PING_MESSAGE, *range(1, len(_ping))), [PING_MESSAGE]),
    Case("5.5 empty fragments around the text",
         [masked(b"", TEXT, fin=False), masked(_ping, CONT, fin=False), masked(b"", CONT)], [PING_MESSAGE]),
    Case("5.6 ping between two fragments",
         [pieces(PING_MESSAGE, 5)[0], masked(b"p", PING), pieces(PING_MESSAGE, 5)[1]], [PING_MESSAGE]),
    Case("5.7 pong between two fragments",
         [pieces(PING_MESSAGE, 5)[0], masked(b"", PONG), pieces(PING_MESSAGE, 5)[1]], [PING_MESSAGE]),
    Case("5.8 pings between every fragment",
         [f for part in pieces(PING_MESSAGE, 3, 6, 9) for f in (part, masked(b"x", PING))], [PING_MESSAGE]),
    Case("5.9 continuation without a message, FIN set", [masked(b"x", CONT)], close_code=1002),
    Case("5.10 continuation without a message, FIN clear", [masked(b"x", CONT, fin=False)], close_code=1002),
    Case("5.11 continuation after a complete message", [masked(_ping), masked(b"x", CONT)], [PING_MESSAGE], 1002),
    Case("5.12 a new text message inside a fragmented one",
         [masked(b"{", TEXT, fin=False), masked(_ping, TEXT)], close_code=1002),
    Case("5.13 a binary frame inside a fragmented text message",
         [masked(b"{", TEXT, fin=False), masked(b"x", 0x2)], close_code=1002),
    Case("5.14 two fragmented messages back to back",
         pieces(PING_MESSAGE, 4) + pieces(PING_MESSAGE, 9), [PING_MESSAGE, PING_MESSAGE]),
    Case("5.15 close between two fragments: answered, the partial message dropped",
         [pieces(PING_MESSAGE, 5)[0], close(1000), pieces(PING_MESSAGE, 5)[1]], close_code=1000),
    Case("5.16 a fragmented ping with a reserved opcode", [masked(b"x", 0xB, fin=False)], close_code=1002),
    Case("5.17 a message in more fragments than allowed",
         [masked(b"{", TEXT, fin=False)] + [masked(b"", CONT, fin=False)] * 200, close_code=1008),
]

UTF8_CASES = [
    Case("6.1 empty text message", [masked(b"")], [""]),
    Case("6.2 two-byte characters split inside a character",
         pieces(GREEK, GREEK.encode().index("κ".encode()) + 1), [GREEK]),
    Case("6.2 a four-byte character split into four fragments",
         pieces(EMOJI, *(EMOJI.encode().index("\U0001F600".encode()) + i for i in (1, 2, 3))), [EMOJI]),
    Case("6.3 every Greek character split across fragments",
         pieces(GREEK, *(GREEK.encode().index(c.encode()) + 1 for c in "κόσμε")), [GREEK]),
    Case("6.3 invalid UTF-8 in one frame", [masked(b'{"type":"ping","text":"\xce\xba\xff"}')], close_code=1007),
    Case("6.4 fail fast: the fragment that makes the message invalid is refused, before its end",
         [masked("κόσμε".encode(), TEXT, fin=False), masked(b"\xf4\x90\x80\x80", CONT, fin=False)],
         close_code=1007),
    Case("6.4 fail fast: an invalid sequence split across two fragments",
         [masked("κόσμε".encode() + b"\xce", TEXT, fin=False), masked(b"\x41", CONT, fin=False)],
         close_code=1007),
    Case("6.4 fail fast: a code point past U+10FFFF split across three fragments",
         [masked(b"ab\xf4", TEXT, fin=False), masked(b"\x90", CONT, fin=False), masked(b"\x80", CONT, fin=False)],
         close_code=1007),
    Case("6.6 a message that ends inside a character", pieces(b"ab\xce", 2), close_code=1007),
    Case("6.8 a surrogate (U+D800) is not UTF-8", [masked(b"\xed\xa0\x80")], close_code=1007),
    Case("6.9 an overlong encoding of '/'", [masked(b"\xc0\xaf")], close_code=1007),
    Case("6.12 an unexpected continuation byte", [masked(b"a\x80b")], close_code=1007),
    Case("6.22 U+FFFF and U+10FFFF are valid", [masked('{"type":"ping","t":"\uffff\U0010ffff"}'.encode())],
         ['{"type":"ping","t":"\uffff\U0010ffff"}']),
]
VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]

CLOSE_CASES = [
    Case("7.1.1 close, echoed", [close(1000)], close_code=1000),
    Case("7.1.2 close after close: the second is ignored", [close(1000), close(1001)], close_code=1000),
    Case("7.1.3 a ping after close is not answered", [close(1000), masked(b"x", PING)], close_code=1000),
    Case("7.1.4 a text message after close is not delivered", [close(1000), masked(_ping)], close_code=1000),
    Case("7.1.5 close in the middle of a fragmented message", [masked(b"{", TEXT, fin=False), close(1000)],
         close_code=1000),
    Case("7.3.1 close without a payload: answered 1000", [close()], close_code=1000),
    Case("7.3.2 close with a 1-byte payload", [masked(b"\x03", CLOSE)], close_code=1002),
    Case("7.3.4 close with a reason", [close(1000, b"bye")], close_code=1000),
    Case("7.3.5 close with the longest reason (123 bytes)", [close(1000, b"r" * 123)], close_code=1000),
    Case("7.3.6 close with a reason too long for a control frame", [close(1000, b"r" * 124)], close_code=1002),
    Case("7.5.1 close reason that is not UTF-8", [close(1000, b"\xce\xba\xff")], close_code=1007),
    *(Case(f"7.7 valid close code {code}", [close(code)], close_code=code) for code in VALID_CODES),
    *(Case(f"7.9 invalid close code {code}", [close(code)], close_code=1002) for code in INVALID_CODES),
]
