"""Free TCP ports on 127.0.0.1 for servers that tests start.

Ports come from below the kernel's ephemeral range on purpose. A client that
reconnects in a loop to a loopback port inside that range while nothing
listens there (a broker being restarted) can be handed that very port as its
own source port and connect to itself (TCP simultaneous open); the server then
fails to bind on restart with "Address already in use". Ports below the range
are never chosen as source ports, so they stay free while a server is down.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 10_000  # stay clear of well-known and registered service ports


def _ephemeral_floor() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux default


def _bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # No SO_REUSEADDR: a port still in TIME_WAIT counts as taken.
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct ports that were free on 127.0.0.1 just now.

    All ``n`` are held bound at once while choosing, so they are distinct.
    Another process can still take one before the caller binds it; the range
    is large and the choice random, so that is rare.
    """
    held: list[socket.socket] = []
    try:
        candidates = list(range(_LOW, _ephemeral_floor()))
        random.shuffle(candidates)
        for port in candidates:
            if len(held) == n:
                break
            sock = _bind(port)
            if sock is not None:
                held.append(sock)
        while len(held) < n:  # no room below the range: let the kernel pick
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def free_port() -> int:
    """Return one port that was free on 127.0.0.1 just now."""
    return free_ports(1)[0]
