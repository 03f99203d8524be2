"""The hub: who is connected to ``/ws``, and fan-out of each batch to all of them.

Each batch is serialised to JSON and framed once, then the same ``bytes``
are offered to every client; :class:`WebSocketClient` makes that a single
non-blocking send in the common case, so a slow client costs the others
nothing. The hub also admits or refuses upgrades (before the 101, see
``gunicorn_worker.py``), pings idle clients, and closes everyone with 1001 on
shutdown.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import gevent
import orjson
from gevent.event import Event

import logger
from logger.config import Settings
from logger.records import LogRecord
from logger.ws_client import (
    GOING_AWAY,
    INTERNAL_ERROR,
    OP_PING,
    WebSocketClient,
    encode_frame,
    encode_message,
)

log = logging.getLogger(__name__)

WS_PATH = "/ws"


class Refusal(Exception):
    """An upgrade the hub will not accept, with the HTTP status to answer."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Hub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: set[WebSocketClient] = set()
        self.counters: Counter[str] = Counter()
        self.accepting = True

    def __len__(self) -> int:
        return len(self._clients)

    # -- admission ------------------------------------------------------------------

    def admit(self, environ: dict[str, Any]) -> None:
        """Raise Refusal unless this upgrade request may become a client.

        CORS does not protect WebSockets: a page on any origin may open one.
        A browser always sends ``Origin``, so a foreign one is refused;
        non-browser clients (wscat, services) send none and are let in.
        """
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin.rstrip("/").lower() not in self.settings.cors_origins:
            self.counters["refused_origin"] += 1
            raise Refusal("403 Forbidden", f"origin {origin!r} is not allowed")
        if not self.accepting:
            raise Refusal("503 Service Unavailable", "server is shutting down")
        if len(self._clients) >= self.settings.max_clients:
            self.counters["refused_full"] += 1
            raise Refusal("503 Service Unavailable", f"this worker already has {len(self._clients)} clients")

    def attach(self, client: WebSocketClient, initial: bytes = b"") -> None:
        """Register an admitted client and start reading from it; returns at once."""
        client.send(encode_message({
            "type": "hello", "server": "logger-service", "version": logger.__version__,
            "topic": self.settings.kafka_topic, "worker": os.getpid(),
            "ping_interval_s": self.settings.ping_interval_s,
        }), droppable=False)
        self._clients.add(client)
        self.counters["connections"] += 1
        client.start(self._on_message, self._clients.discard, initial)

    def _on_message(self, client: WebSocketClient, text: str) -> None:
        # Runs in gevent's hub (an I/O callback): answer with non-blocking sends only.
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            client.send(encode_message({"type": "error", "error": "messages must be JSON objects with a type"}),
                        droppable=False)
            return
        if message["type"] == "ping":
            client.send(encode_message({"type": "pong"}), droppable=False)
        else:
            client.send(encode_message({"type": "error", "error": f"unknown message type {message['type']!r}"}),
                        droppable=False)

    # -- fan-out --------------------------------------------------------------------

    def publish(self, records: Sequence[LogRecord]) -> None:
        """Send one batch to every client: encoded once, one non-blocking send each."""
        if not records:
            return
        self.counters["batches"] += 1
        if not self._clients:
            return
        frame = encode_frame(orjson.dumps({"type": "logs", "records": [r.to_client() for r in records]}))
        clients = tuple(self._clients)
        for client in clients:
            client.send(frame)
        self.counters["records_delivered"] += len(records) * len(clients)
        self.counters["bytes_sent"] += len(frame) * len(clients)

    # -- keepalive and shutdown -----------------------------------------------------

    def keepalive(self, stop: Event) -> None:
        """Ping every client each interval; close those silent for two intervals,
        and those whose backlog has not moved for the stall timeout.

        nginx closes a proxied connection idle for ``proxy_read_timeout`` (60 s by
        default); the default interval (25 s) keeps a quiet tail alive through it.
        """
        interval = self.settings.ping_interval_s
        ping = encode_frame(b"", OP_PING)
        next_ping = time.monotonic() + interval
        while not stop.wait(min(interval, 1.0)):
            now = time.monotonic()
            pinging = now >= next_ping
            if pinging:
                next_ping = now + interval
            silent_since = now - 2 * interval
            for client in tuple(self._clients):
                if client.last_seen < silent_since:
                    self.counters["closed_unresponsive"] += 1
                    client.close(INTERNAL_ERROR, "keepalive ping timeout")
                elif pinging:
                    client.send(ping, droppable=False)
                else:
                    client.check_stall()

    def close_all(self, timeout: float, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        """Refuse new clients, send every client a close frame, wait for them to go."""
        self.accepting = False
        for client in tuple(self._clients):
            client.close(code, reason)
        deadline = time.monotonic() + timeout
        while self._clients and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for client in tuple(self._clients):
            client.abort()

