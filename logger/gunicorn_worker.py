"""Gunicorn integration: the gevent-websocket worker, its upgrade handler, the hooks.

* :class:`UpgradeHandler` decides about a ``/ws`` upgrade *before* the 101:
  gevent-websocket answers 101 before the WSGI app runs, so a refusal
  (a handshake RFC 6455 does not allow, foreign ``Origin``, worker full,
  shutting down) must happen here to be an HTTP status (4xx/503) rather than
  a WebSocket that opens and closes. It also bounds what any request may
  cost (issue 12): pywsgi waits for the request line only, then reads up to
  100 header lines of 64 KiB each for as long as the peer likes, and discards
  a body as slowly as it comes. Here the whole head has one deadline
  (``HTTP_HEAD_TIMEOUT_S``, 408) and a size cap (``HTTP_MAX_HEADER_BYTES``,
  431), and the body another deadline (``HTTP_BODY_TIMEOUT_S``).
* :class:`Worker` is gevent-websocket's worker with that handler and with a
  drain on SIGTERM and SIGINT: Gunicorn's gevent worker waits for open
  connections until ``graceful_timeout``, and WebSockets never end on their
  own, so the service closes them (1001) after flushing its pipeline.
* :func:`post_worker_init` and :func:`worker_exit` are the hooks
  ``gunicorn.conf.py`` calls.

The master imports this module (it loads the worker class), before any fork
and without gevent's monkey-patching: nothing here may import kafka-python,
requests or OpenTelemetry at module level. kafka-python captures
``selectors.DefaultSelector`` at import; imported unpatched, its blocking
epoll froze the whole worker. The app (``wsgi.py``) is imported in the worker,
after the patch.
"""

from __future__ import annotations

import gc
import importlib.metadata
import io
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import gevent
import orjson
from gevent.pywsgi import MAX_REQUEST_LINE, Input
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from gunicorn.workers.ggevent import PyWSGIHandler

from logger import metrics
from logger.auth import SUBPROTOCOL, AuthError, scrub_text, scrubbed, scrubbed_headers
from logger.config import Settings
from logger.handshake import HandshakeError, check_upgrade, wants_websocket
from logger.hub import WS_PATH, Refusal, Subscription

if TYPE_CHECKING:
    from logger.service import LogService

_DEFAULT_SETTINGS = Settings()  # the bounds of a worker whose app is not create_app's

log = logging.getLogger(__name__)


class RequestRefused(ValueError):
    """A request head the handler will not read further (a ValueError: pywsgi logs no traceback)."""

    def __init__(self, status: str, reason: str, counted_as: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.counted_as = counted_as


class BodyWithDeadline(Input):
    """pywsgi's request body, ending (as if the peer closed) at ``deadline``.

    A body announced as 1 GB and sent a byte a second would otherwise hold its
    connection for ever: the app reads it, and pywsgi discards what the app left
    (``Input._discard``) at whatever pace it comes. Past the deadline reads
    return ``b""``; Werkzeug then answers 400 (the body is short), and the
    handler closes the connection.
    """

    __slots__ = ("deadline", "expired")

    def __init__(self, original: Input, deadline: float) -> None:
        super().__init__(original.rfile, original.content_length, socket=original.socket,
                         chunked_input=original.chunked_input)
        self.deadline = deadline
        self.expired = False

    def read(self, length: int | None = None) -> bytes:
        return self._in_time(Input.read, length)

    def readline(self, size: int | None = None) -> bytes:
        return self._in_time(Input.readline, size)

    def _in_time(self, method: Callable[[Input, int | None], bytes], size: int | None) -> bytes:
        remaining = self.deadline - time.monotonic()
        if not self.expired and remaining > 0:
            with gevent.Timeout(remaining, False):
                return method(self, size)
        self.expired = True
        return b""


class UpgradeHandler(WebSocketHandler):
    """Upgrades only ``/ws``, and only when the handshake is valid and the hub admits it;
    then hands the connection to the hub, without running the WSGI app for it.

    Its service is the one behind the app Gunicorn serves (``create_app``'s); its
    bounds are that service's settings (defaults until the app is known).
    """

    _head_deadline: float = 0.0
    _subscription: Subscription | None = None  # what admit() made of this upgrade

    @property
    def service(self) -> LogService | None:
        # The server's: pywsgi sets self.application only after reading a request's head.
        return _service_of(self.server.application)

    @property
    def settings(self) -> Settings:
        service = self.service
        return service.settings if service is not None else _DEFAULT_SETTINGS

    def log_request(self) -> None:
        """Gunicorn's access log (not gevent-websocket's own logger), with no token in it:
        Gunicorn's atoms include the request line, the query, every request header and the
        whole environ, and ``?access_token=`` or ``Authorization`` would land in all of them."""
        environ, headers = self.environ, getattr(self, "headers", None)
        if environ is not None:
            self.environ = scrubbed(environ)
        if headers is not None:
            self.headers = dict(scrubbed_headers(list(headers.items())))
        try:
            PyWSGIHandler.log_request(self)
        finally:
            self.environ = environ
            if headers is not None:
                self.headers = headers

    def log_error(self, msg: str, *args: Any) -> None:
        # pywsgi quotes a bad request line, query string included, in its error lines.
        super().log_error(scrub_text(msg % args if args else msg))

    def read_requestline(self) -> str:
        # pywsgi waits for the next request on a keep-alive connection forever
        # (Gunicorn's ``keepalive`` setting is not applied to this worker), so an
        # idle client could hold a connection slot indefinitely. Give up after
        # ``idle_timeout_s``: an empty request line makes pywsgi close quietly.
        # Once a request has begun, its whole head has ``head_timeout_s``.
        first = b""
        settings = self.settings
        with gevent.Timeout(settings.http_keepalive_s, False):
            first = self.rfile.peek(1)
        if not first:
            return ""
        self._head_deadline = time.monotonic() + settings.http_head_timeout_s
        with gevent.Timeout(settings.http_head_timeout_s, False):
            return self.rfile.readline(MAX_REQUEST_LINE).decode("latin-1")
        _count_refusal("head_timeout")
        return ""  # a request line trickled for longer than the deadline: close quietly

    def read_request(self, raw_requestline: str) -> bool:
        """Read the header block within the deadline and the byte cap, then let pywsgi parse it."""
        head: bytes | None = None
        with gevent.Timeout(max(self._head_deadline - time.monotonic(), 0.001), False):
            head = self._read_header_block()
        if head is None:
            raise RequestRefused("408 Request Timeout",
                                 f"request head not complete in {self.settings.http_head_timeout_s:g} s",
                                 "head_timeout")
        rfile, self.rfile = self.rfile, io.BytesIO(head)
        try:
            return super().read_request(raw_requestline)
        finally:
            self.rfile = rfile

    def _read_header_block(self) -> bytes:
        head = bytearray()
        most = self.settings.http_max_header_bytes
        while True:
            line = self.rfile.readline(most - len(head) + 1)
            head += line
            if len(head) > most:
                raise RequestRefused("431 Request Header Fields Too Large",
                                     f"request headers larger than {most} bytes", "headers_too_large")
            if line in (b"\r\n", b"\n", b""):
                return bytes(head)

    def _handle_client_error(self, ex: BaseException) -> Any:
        if not isinstance(ex, RequestRefused):
            return super()._handle_client_error(ex)
        _count_refusal(ex.counted_as)
        log.info("refused a request from %s: %s", self.client_address, ex.reason)
        body = ex.reason.encode() + b"\n"
        return ex.status[:3], (f"HTTP/1.1 {ex.status}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()  # the extras gunicorn's PyWSGIHandler adds
        environ["gunicorn.sock"] = self.socket
        environ["RAW_URI"] = self.path
        settings = self.settings
        timed = BodyWithDeadline(self.wsgi_input, time.monotonic() + settings.http_body_timeout_s)
        if environ["wsgi.input"] is self.wsgi_input:
            environ["wsgi.input"] = timed
        self.wsgi_input = timed
        _client_address_behind_proxies(environ, settings.trusted_proxies)
        return environ

    def handle_one_response(self) -> None:
        super().handle_one_response()
        if isinstance(self.wsgi_input, BodyWithDeadline) and self.wsgi_input.expired:
            # What is left of the body is unknown: this connection cannot carry another request.
            self.close_connection = True
            _count_refusal("body_timeout")
            log.info("closed a request from %s: body not complete in %g s", self.client_address,
                     self.settings.http_body_timeout_s)

    def upgrade_websocket(self) -> Any:
        if self.environ.get("PATH_INFO") != WS_PATH or not wants_websocket(self.environ):
            return None  # not ours: Flask answers it as plain HTTP
        try:
            check_upgrade(self.environ, self.request_version)
        except HandshakeError as error:
            _count_refusal("handshake")
            return self._refuse(error.status, error.reason, error.headers)
        service = self.service
        if service is None:
            return self._refuse("503 Service Unavailable", "the pipeline has not started")
        try:
            self._subscription = service.hub.admit(self.environ)
        except Refusal as refusal:
            return self._refuse(refusal.status, refusal.reason)
        except AuthError as error:
            _count_refusal("auth")
            return self._refuse(error.status_line, error.reason, tuple(error.headers()), as_json=True)
        # gevent-websocket 0.10.1 compares the whole header with "websocket", not its tokens.
        self.environ["HTTP_UPGRADE"] = "websocket"
        if self._subscription.subprotocol:
            self._answer_subprotocol()
        return super().upgrade_websocket()

    def _answer_subprotocol(self) -> None:
        """Answer ``Sec-WebSocket-Protocol: logger.v1`` with the 101, never the ``bearer.``
        value beside it. (gevent-websocket would answer only an ``app_protocol`` of the app,
        found by a substring test on the header.)"""
        start_response = self.start_response

        def with_subprotocol(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status.startswith("101"):
                headers = [*headers, ("Sec-WebSocket-Protocol", SUBPROTOCOL)]
            return start_response(status, headers, exc_info)
        self.start_response = with_subprotocol

    def run_websocket(self) -> None:
        """After the 101: the hub takes the connection, and this handler (its greenlet,
        the environ, the read buffer) ends. gevent-websocket would run the WSGI app."""
        service = self.service
        assert service is not None and self._subscription is not None  # admitted by upgrade_websocket
        sock, initial = take_connection(self.websocket)
        self.websocket = None
        self.environ["wsgi.websocket"] = None
        service.hub.connect(sock, self.environ.get("REMOTE_ADDR", ""), self._subscription, initial)

    def _refuse(self, status: str, reason: str, headers: tuple[tuple[str, str], ...] = (),
                as_json: bool = False) -> list[bytes]:
        # One line, never the query string (it may carry a token).
        log.info("refused a WebSocket upgrade from %s: %s (%s)", self.environ.get("REMOTE_ADDR"), reason,
                 status[:3])
        if as_json:  # what /api/session answers too: {"error": ...}
            body, content_type = orjson.dumps({"error": reason}) + b"\n", "application/json"
        else:
            body, content_type = reason.encode() + b"\n", "text/plain; charset=utf-8"
        self.start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                     *headers])
        return [body]


def _count_refusal(reason: str) -> None:
    metrics.HTTP_REFUSED.labels(reason).inc()


class Worker(GeventWebSocketWorker):
    """gevent-websocket's Gunicorn worker, draining the service on SIGTERM/SIGINT."""

    wsgi_handler = UpgradeHandler

    def patch(self) -> None:
        # gevent's monkey-patching looks up its plugins' entry points once per event, 25 times
        # in patch_all (the extension points of gevent/gevent#1169), and each lookup reads the
        # metadata of every installed distribution: ~75 ms of each worker's start with this
        # venv's 86 (the whole patch took ~105 ms; 25 ms with one lookup). Nothing is
        # installed during the patch, so one lookup serves them all.
        with entry_points_read_once():
            super().patch()

    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM from the master (graceful stop): stop accepting, then drain in
        # a greenlet so that the open WebSockets are closed well before
        # graceful_timeout instead of holding the worker for all of it.
        super().handle_exit(sig, frame)
        gevent.spawn(drain, self)

    def handle_quit(self, sig: int, frame: Any) -> None:
        # SIGINT/SIGQUIT: Gunicorn's quick stop. Drain first anyway (bounded),
        # so Ctrl-C loses nothing either; the base class then exits.
        def drain_then_quit() -> None:
            drain(self)
            super(GeventWebSocketWorker, self).handle_quit(sig, frame)
        gevent.spawn(drain_then_quit)


@contextmanager
def entry_points_read_once() -> Iterator[None]:
    """Within the block, ``importlib.metadata.entry_points`` answers from one reading."""
    read = importlib.metadata.entry_points
    everything = read()
    importlib.metadata.entry_points = lambda **params: everything.select(**params) if params else everything
    try:
        yield
    finally:
        importlib.metadata.entry_points = read


def _client_address_behind_proxies(environ: dict[str, Any], trusted: tuple[Any, ...]) -> None:
    """Behind trusted proxies, ``REMOTE_ADDR`` becomes the client they saw.

    ``X-Forwarded-For`` is read right to left, skipping trusted hops; the first
    address that is not a trusted proxy is the client. From anyone else the
    header is ignored: it is whatever the client chose to write.
    """
    if not trusted or not _is_trusted(environ.get("REMOTE_ADDR", ""), trusted):
        return
    proto = environ.get("HTTP_X_FORWARDED_PROTO", "").strip().lower()
    if proto in ("http", "https"):  # how the browser reached the proxy: the viewer's Origin has this scheme
        environ["wsgi.url_scheme"] = proto
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            environ["REMOTE_ADDR"] = hop
            return


def _is_trusted(address: str, trusted: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def take_connection(websocket: Any) -> tuple[Any, bytes]:
    """Take an upgraded connection away from pywsgi and gevent-websocket.

    Their handler greenlet then ends, and with it its stack, the handler
    object, the WSGI environ and the 8 KB read buffer: an idle client costs
    only what ``WebSocketConnection`` holds. pywsgi closes its socket object when
    the handler returns, so we keep a duplicate of the descriptor. Bytes the
    HTTP reader already buffered past the request are handed on.
    """
    handler = websocket.handler
    websocket.closed = True  # or it writes a second, code-less close frame
    sock, handler.socket = handler.socket, None  # pywsgi neither drains nor closes it now
    own = sock.dup()
    sock.setblocking(False)
    try:
        initial = handler.rfile.read1(1 << 16) or b""
    except (OSError, ValueError):
        initial = b""
    return own, initial


def _service_of(app: Any) -> LogService | None:
    """The pipeline of an app made by ``create_app`` (None for any other WSGI app)."""
    from logger.app import service_of  # Flask and the pipeline: imported in the worker, after the patch
    try:
        return service_of(app)
    except (AttributeError, KeyError):
        return None


def post_worker_init(worker: Any) -> None:
    """After monkey-patching: start this worker's pipeline."""
    service = _service_of(getattr(worker, "wsgi", None))
    if service is None:
        worker.log.warning("the WSGI app was not made by logger.app.create_app: pipeline not started")
        return
    service.start()
    # Everything loaded so far (Flask, kafka-python, OpenTelemetry, protobuf...) lives
    # as long as the worker: move it out of the cyclic GC's reach. A full collection
    # then walks only what came later; with 1,000 clients connected one took up to
    # 99 ms before (a stall every client sees as latency) and 14 ms after.
    gc.freeze()


def drain(worker: Any) -> None:
    """Flush and close the pipeline inside graceful_timeout (leaving time to exit)."""
    service = _service_of(getattr(worker, "wsgi", None))  # none if the app failed to load
    if service is not None:
        service.stop(timeout=max(worker.cfg.graceful_timeout - 3, 1))


def worker_exit(server: Any, worker: Any) -> None:
    """Last chance (e.g. the worker's run loop ended for another reason)."""
    drain(worker)
