"""The hub: who is connected to ``/ws``, and fan-out of each batch to all of them.

Clients are grouped by filter. Each batch is serialised to JSON and framed
once per group, then the same ``bytes`` are offered to every client of the
group; :class:`WebSocketConnection` makes that a single non-blocking send in the
common case, so a slow client costs the others nothing. Every batch also goes
into the replay ring, for ``?tail=K`` and for clients resuming ``?since=``;
a replay goes out a few hundred records at a time as the client reads it
(``WebSocketConnection.replay``), so a client that never reads costs one chunk.

The hub admits or refuses upgrades (before the 101, see ``gunicorn_worker.py``),
answers client messages (subscribe, pause, resume, ping, auth), counts the batches
slow clients lose and tells each one how many once it caught up (``dropped``;
the hub is each connection's ``ws_transport.Owner``), pings idle clients, and
closes everyone with 1001 on shutdown. Nothing here blocks: broadcast runs in
the tail reader's greenlet, messages in gevent's hub, and neither yields while
it walks the clients, so a filter change or a replay always lands between
two batches.

With authentication on (issue 14), ``authorize`` turns the upgrade into a
:class:`~logger.auth.Grant` once per connection; its scope is ANDed with every
filter the client asks for (at connect, on ``subscribe``, for ``?tail=`` and
``?since=``), so groups are keyed by the *effective* filter and the fan-out
costs what it did, one encoding per distinct filter. Token expiry is one heap
(:class:`~logger.auth.Deadlines`) swept by the keepalive tick, not a timer per
client; an ``auth`` message with a fresh token is checked in a greenlet of its
own (it may wait for a JWKS refresh), one at a time per client.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import gevent
import orjson
from gevent.event import Event

import logger
from logger import metrics
from logger.auth import SUBPROTOCOL, AuthError, Authorize, Deadlines, Grant, describe_scope, offered_protocols
from logger.config import Settings
from logger.filters import EVERYTHING, Filter, FilterError
from logger.memory import release_freed_memory
from logger.records import LogRecord
from logger.replay import Gap, Partition, ReplayRing, parse_positions
from logger.status import Counts
from logger.ws_protocol import GOING_AWAY, INTERNAL_ERROR, OP_PING, POLICY_VIOLATION, encode_frame
from logger.ws_transport import WebSocketConnection

log = logging.getLogger(__name__)

WS_PATH = "/ws"


class Refusal(Exception):
    """An upgrade the hub will not accept, with the HTTP status to answer."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Subscription:
    """What a client asked for when it connected: ``filter`` is the effective one (already
    narrowed by the grant's scope); ``subprotocol``: it offered ``logger.v1``, answered so."""

    filter: Filter = EVERYTHING
    tail: int = 0
    since: dict[Partition, int] | None = None
    grant: Grant | None = None
    subprotocol: bool = False

    @classmethod
    def from_query_string(cls, query_string: str, max_tail: int) -> Subscription:
        query = parse_qs(query_string, keep_blank_values=False)
        try:
            wanted = Filter.from_query(query)
        except FilterError as exc:
            raise Refusal("400 Bad Request", str(exc)) from None
        tail = 0
        if "tail" in query:
            raw = query["tail"][-1]
            # isdigit() alone lets "²" through (int() then raises), and int() of 4,300+
            # digits raises too: ASCII digits, few of them, before converting.
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or int(raw) > max_tail:
                raise Refusal("400 Bad Request", f"tail must be a whole number from 0 to {max_tail}")
            tail = int(raw)
        since = None
        if "since" in query:
            try:
                since = parse_positions(query["since"][-1])
            except ValueError:
                raise Refusal("400 Bad Request", "since must be topic:partition:offset[,...]") from None
        return cls(wanted, tail, since)




class Hub:
    def __init__(self, settings: Settings, authorize: Authorize | None = None) -> None:
        self.settings = settings
        self.authorize = authorize  # None: auth is off, everyone sees everything
        self._deadlines = Deadlines()
        self._authorizing: set[WebSocketConnection] = set()  # an auth message is being checked
        self._clients: set[WebSocketConnection] = set()
        self._groups: dict[Filter, set[WebSocketConnection]] = {}
        self._regex_groups = 0  # groups whose filter has a regex
        self.ring = ReplayRing(settings.replay_records, settings.replay_bytes)
        # Counted once, shown in /health ("hub") and, where Prometheus has the series, there too.
        self.counters = Counts({"records_delivered": metrics.RECORDS_DELIVERED, "batches_sent": metrics.BATCHES_SENT,
                                "bytes_sent": metrics.BYTES_SENT,
                                "closed_unresponsive": metrics.CLIENTS_CLOSED.labels("unresponsive"),
                                "closed_expired": metrics.CLIENTS_CLOSED.labels("token_expired")})
        self.accepting = True
        self.listening_since: float | None = None  # time.time() since when there has been a client
        self._freed_backlogs = False  # a client with a backlog left since the last malloc_trim
        self._drops_unreported = 0  # batches clients lost since the last Prometheus update

    def __len__(self) -> int:
        return len(self._clients)

    # -- admission ------------------------------------------------------------------

    def admit(self, environ: dict[str, Any]) -> Subscription:
        """What this upgrade request subscribes to; Refusal unless it may become a client.

        CORS does not protect WebSockets: a page on any origin may open one.
        A browser always sends ``Origin``, so one that is neither a configured
        front end nor a page of this service itself (its viewer, see
        :func:`own_page`) is refused; non-browser clients (wscat, services)
        send none and are let in.
        """
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin.rstrip("/").lower() not in self.settings.cors_origins \
                and not own_page(origin, environ, self.settings.allowed_hosts):
            self.counters.add("refused_origin")
            raise Refusal("403 Forbidden", f"origin {origin!r} is not allowed")
        if not self.accepting:
            raise Refusal("503 Service Unavailable", "server is shutting down")
        grant = self._authorize(environ)  # AuthError: 401 or 403
        if len(self._clients) >= self.settings.max_clients:
            self.counters.add("refused_full")
            raise Refusal("503 Service Unavailable", f"this worker already has {len(self._clients)} clients")
        try:
            subscription = Subscription.from_query_string(environ.get("QUERY_STRING", ""),
                                                          self.settings.replay_records)
        except Refusal:
            self.counters.add("refused_bad_request")
            raise
        if grant is not None:
            try:
                subscription = replace(subscription, filter=subscription.filter.narrowed_by(grant.scope),
                                       grant=grant)
            except FilterError as exc:
                self.counters.add("refused_auth")
                raise AuthError.forbidden(str(exc)) from None
        if SUBPROTOCOL in offered_protocols(environ):
            subscription = replace(subscription, subprotocol=True)
        if not self._room_for(subscription.filter):
            self.counters.add("refused_regex")
            raise Refusal("503 Service Unavailable", self._no_room)
        return subscription

    def _authorize(self, environ: dict[str, Any]) -> Grant | None:
        if self.authorize is None:
            return None
        try:
            return self.authorize(environ)
        except AuthError:
            self.counters.add("refused_auth")
            raise

    @property
    def _no_room(self) -> str:
        return (f"this worker already filters with {self.settings.max_regex_filters} different regular "
                "expressions: use one of those, or try again later")

    def _room_for(self, wanted: Filter, client: WebSocketConnection | None = None) -> bool:
        """Each distinct filter with a regex is matched against every record of every batch,
        in the event loop: their number is bounded (``WS_MAX_REGEX_FILTERS``). A client
        that is alone in its regex group frees that place by moving."""
        if wanted.regex is None or wanted in self._groups:
            return True
        current = client.subscription if client is not None else None
        freed = current is not None and current.regex is not None and self._groups.get(current) == {client}
        return self._regex_groups - freed < self.settings.max_regex_filters

    def connect(self, sock: Any, address: str, subscription: Subscription, initial: bytes = b"") -> None:
        """An upgraded connection (see ``gunicorn_worker.UpgradeHandler``) becomes a client."""
        settings = self.settings
        client = WebSocketConnection(sock, address, max_pending=settings.client_buffer_bytes,
                                     max_message_bytes=settings.max_message_bytes,
                                     max_fragments=settings.max_fragments,
                                     stall_timeout_s=settings.client_stall_timeout_s)
        self.attach(client, subscription, initial)

    def attach(self, client: WebSocketConnection, subscription: Subscription | None = None,
               initial: bytes = b"") -> None:
        """Greet an admitted client, replay what it asked for, and make it live.

        Replay and registration happen without a yield, so the first live batch
        it gets is the one after the last replayed record: no gap, no duplicate.
        """
        subscription = subscription or Subscription()
        client.grant = subscription.grant
        described = subscription.filter.describe()  # once per connection, for the log and the hello
        log.debug("opened WebSocket %s: filter %s", client.address, described)
        client.send(_message_frame({
            "type": "hello", "server": "logger-service", "version": logger.__version__,
            "topic": self.settings.kafka_topic, "worker": os.getpid(),
            "ping_interval_s": self.settings.ping_interval_s, "positions": self.ring.positions(),
            "filter": described, **_auth_of(client),
        }), droppable=False)
        if subscription.since is not None:
            replay, gaps = self.ring.since(subscription.filter, subscription.since)
            if gaps:
                client.send(_message_frame({"type": "gap", "partitions": [g.as_dict() for g in gaps]}),
                            droppable=False)
        else:
            replay = self.ring.tail(subscription.filter, subscription.tail) if subscription.tail else []
        if replay:
            client.replay(_replay_frames(replay))
        if client.closed:  # it hung up during the greeting
            return
        if not self._clients:
            self.listening_since = time.time()
        self._clients.add(client)
        self._join(client, subscription.filter)
        self._expire_at(client, client.grant)
        self.counters.add("connections")
        metrics.CLIENTS.set(len(self._clients))
        client.start(self, initial)

    def _join(self, client: WebSocketConnection, wanted: Filter) -> None:
        self._leave(client)
        client.subscription = wanted
        if wanted not in self._groups:
            self._groups[wanted] = set()
            self._regex_groups += wanted.regex is not None
        self._groups[wanted].add(client)

    def _expire_at(self, client: WebSocketConnection, grant: Grant | None) -> None:
        """Close this client when its token expires (with the leeway it was checked with)."""
        if grant is None or grant.expires_at is None:
            return
        self._deadlines.add(client, grant, grant.expires_at + self.settings.auth_leeway_s)
        if len(self._deadlines) > 2 * len(self._clients) + 1000:  # many refreshes: drop the stale entries
            self._deadlines.compact(_current_grant)

    def _close_expired(self) -> None:
        for client in self._deadlines.due(time.time(), _current_grant):
            if not client.closing:
                self.counters.add("closed_expired")
                client.close(POLICY_VIOLATION, "token expired")

    def _leave(self, client: WebSocketConnection) -> None:
        members = self._groups.get(client.subscription)
        if members is not None:
            members.discard(client)
            if not members:
                del self._groups[client.subscription]
                self._regex_groups -= client.subscription.regex is not None

    # -- what connections tell the hub (ws_transport.Owner) ------------------------------

    def connection_closed(self, client: WebSocketConnection) -> None:
        if client.had_backlog:
            self._freed_backlogs = True
        self._clients.discard(client)
        if not self._clients:
            self.listening_since = None
        self._leave(client)
        metrics.CLIENTS.set(len(self._clients))

    def batch_dropped(self, client: WebSocketConnection) -> None:
        """A slow or paused client lost a batch. Counted here and added to Prometheus once
        per fan-out (:meth:`_report_drops`): a client that lags for good drops a batch for
        every batch sent, and a multiprocess ``Counter.inc`` (an mmap write) per drop cost
        more than the rest of that client's share of the fan-out."""
        self._drops_unreported += 1

    def caught_up(self, client: WebSocketConnection, lost: int) -> None:
        """A client wrote all it had queued after losing batches: tell it how many."""
        client.send(_message_frame({"type": "dropped", "count": lost}), droppable=False)

    def _report_drops(self) -> None:
        if self._drops_unreported:
            metrics.DROPPED_BATCHES.inc(self._drops_unreported)
            self._drops_unreported = 0

    def message_received(self, client: WebSocketConnection, text: str) -> None:
        # Runs in gevent's hub (an I/O callback): answer with non-blocking sends only.
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "subscribe":
            try:
                wanted = Filter.from_message(message)
                if client.grant is not None:
                    wanted = wanted.narrowed_by(client.grant.scope)
            except FilterError as exc:
                return self._reply(client, {"type": "error", "error": str(exc)})
            if not self._room_for(wanted, client):
                return self._reply(client, {"type": "error", "error": self._no_room})
            self._join(client, wanted)
            return self._reply(client, {"type": "subscribed", "filter": wanted.describe(), **_auth_of(client)})
        if kind == "auth":
            return self._refresh_auth(client, message.get("token"))
        if kind == "pause":
            client.pause()
            return self._reply(client, {"type": "paused"})
        if kind == "resume":
            self._reply(client, {"type": "resumed"})
            return client.resume()
        if kind == "ping":
            return self._reply(client, {"type": "pong"})
        error = f"unknown message type {kind!r}" if isinstance(kind, str) else \
            "messages must be JSON objects with a type"
        self._reply(client, {"type": "error", "error": error})

    @staticmethod
    def _reply(client: WebSocketConnection, message: dict[str, Any]) -> None:
        client.send(_message_frame(message), droppable=False)

    def _refresh_auth(self, client: WebSocketConnection, token: Any) -> None:
        """``{"type":"auth","token":…}``: checked in a greenlet (the JWKS may need a refresh),
        at most one at a time per client, so a flood of them costs one check at a time."""
        if self.authorize is None or client.grant is None:
            return self._reply(client, {"type": "error", "error": "authentication is off on this server"})
        if not isinstance(token, str) or not token:
            return self._reply(client, {"type": "error", "error": "auth needs a token (a string)"})
        if client in self._authorizing:
            return self._reply(client, {"type": "error", "error": "the previous auth message is still being checked"})
        self._authorizing.add(client)
        gevent.spawn(self._reauthorize, client, token)

    def _reauthorize(self, client: WebSocketConnection, token: str) -> None:
        """Swap the client's grant for the fresh token's, which may not widen its scope;
        on any refusal the connection keeps its old grant and deadline."""
        try:
            # authorize() gets what an upgrade carrying only this token would: the default
            # verifier reads it, and a custom authorize can tell with "logger.auth_refresh".
            grant = self.authorize({"REQUEST_METHOD": "GET", "PATH_INFO": WS_PATH,  # type: ignore[misc]
                                    "HTTP_AUTHORIZATION": f"Bearer {token}", "logger.auth_refresh": True})
            current = client.grant
            assert current is not None  # checked by _refresh_auth; grants are never removed
            if grant.subject != current.subject:
                raise AuthError.forbidden("the new token is for another subject")
            if not grant.scope.within(current.scope):
                raise AuthError.forbidden("the new token's scope is wider than this connection's")
            wanted = client.subscription.narrowed_by(grant.scope)
            if not self._room_for(wanted, client):
                raise FilterError(self._no_room)
        except (AuthError, FilterError) as exc:
            return self._reply(client, {"type": "error", "error": f"auth refused: {exc}"})
        except Exception:
            log.exception("checking an auth message failed")
            return self._reply(client, {"type": "error", "error": "auth refused: the token could not be checked"})
        finally:
            self._authorizing.discard(client)
        if client.closing:
            return
        if wanted != client.subscription:
            self._join(client, wanted)
        client.grant = grant
        self._expire_at(client, grant)
        self._reply(client, {"type": "authenticated", "subject": grant.subject, "expires_at": grant.expires_at,
                             "scope": describe_scope(grant.scope)})

    # -- fan-out --------------------------------------------------------------------

    def broadcast(self, records: Sequence[LogRecord]) -> None:
        """Send one batch to every client: one encoding per filter, one non-blocking send each."""
        if not records:
            return
        records = list(records)
        self.ring.add(records)
        self.counters.add("batches")
        metrics.observe_delay(records[0].time_unix_nano)  # the batch's oldest: its worst delay
        as_dicts: list[dict[str, Any]] | None = None
        for wanted, members in tuple(self._groups.items()):
            chosen = None if wanted.everything else [i for i, r in enumerate(records) if wanted.matches(r)]
            if chosen == []:
                continue
            if as_dicts is None:
                as_dicts = [r.to_client() for r in records]
            frame = _logs_frame(as_dicts if chosen is None else [as_dicts[i] for i in chosen])
            for client in tuple(members):
                client.send(frame)
            delivered = len(records if chosen is None else chosen) * len(members)
            self.counters.add("records_delivered", delivered)
            self.counters.add("batches_sent", len(members))
            self.counters.add("bytes_sent", len(frame) * len(members))
        self._report_drops()

    def announce_gap(self, gap: Gap) -> None:
        """The tail skipped records it could not read: tell every client where and why
        (whatever its filter: it cannot know what it missed), and remember it for resumes."""
        self.ring.skip(gap)
        self.counters.add("gaps_announced")
        frame = _message_frame({"type": "gap", "partitions": [gap.as_dict()]})
        for client in tuple(self._clients):
            client.send(frame, droppable=False)

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
            self._close_expired()
            for client in tuple(self._clients):
                if client.last_seen < silent_since and not client.closing:
                    self.counters.add("closed_unresponsive")
                    client.close(INTERNAL_ERROR, "keepalive ping timeout")
                elif pinging:
                    client.send(ping, droppable=False)
                else:
                    client.check_stall()
            self._report_drops()  # those of paused clients, which no fan-out reports
            if self._freed_backlogs:  # see logger.memory: give their frames' pages back
                self._freed_backlogs = False
                release_freed_memory()

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



DEFAULT_PORTS = {"http": 80, "https": 443}
REPLAY_FRAME_RECORDS = 200  # records per replay message: at most this many encoded at once per client
REPLAY_FRAME_BYTES = 64 << 10  # …or about this many bytes of record values


def own_page(origin: str, environ: dict[str, Any], allowed_hosts: Sequence[str]) -> bool:
    """A page served by this very service (its viewer): the Origin's scheme, host and
    port are those this request came in on, and the host is one of ``ALLOWED_HOSTS``.

    ``Host`` alone proves nothing: a DNS-rebinding page at
    ``http://attacker.example:6006`` reaches us with ``Host: attacker.example:6006``
    and that very Origin. So the name must be listed, and the scheme must be the
    request's (``X-Forwarded-Proto`` counts only from ``TRUSTED_PROXIES``; see
    ``gunicorn_worker``). A ``Host`` without a port (nginx's ``$host``) means the
    scheme's default port.
    """
    try:
        page, served = urlsplit(origin), urlsplit("//" + environ.get("HTTP_HOST", ""))
        page_port, served_port = page.port, served.port
    except ValueError:  # a port that is not a number
        return False
    scheme = environ.get("wsgi.url_scheme", "http")
    if page.scheme != scheme or page.path not in ("", "/") or not page.hostname or page.username is not None:
        return False
    name = page.netloc.lower().rpartition(":")[0] if page_port is not None else page.netloc.lower()
    if name.rstrip(".") not in allowed_hosts:
        return False
    default = DEFAULT_PORTS[scheme] if scheme in DEFAULT_PORTS else None
    return served.hostname == page.hostname and (served_port or default) == (page_port or default)


def _current_grant(client: WebSocketConnection) -> Grant | None:
    return client.grant


def _auth_of(client: WebSocketConnection) -> dict[str, Any]:
    """The ``auth`` member of ``hello`` and ``subscribed`` (none when auth is off)."""
    return {"auth": client.grant.describe()} if client.grant is not None else {}


def _replay_frames(records: list[LogRecord]) -> Iterator[bytes]:
    """The replay as several ``logs`` messages, encoded one at a time as the client drains them."""
    start = 0
    while start < len(records):
        end, size = start, 0
        while end < len(records) and end - start < REPLAY_FRAME_RECORDS and size < REPLAY_FRAME_BYTES:
            size += records[end].size
            end += 1
        yield _logs_frame([r.to_client() for r in records[start:end]], replay=True)
        start = end


def _logs_frame(records: list[dict[str, Any]], replay: bool = False) -> bytes:
    message: dict[str, Any] = {"type": "logs", "records": records}
    if replay:
        message["replay"] = True
    return _message_frame(message)


def _message_frame(message: dict[str, Any]) -> bytes:
    """One protocol message as a text frame, ready to share between clients."""
    return encode_frame(orjson.dumps(message))
