"""Gunicorn integration: the gevent-websocket worker, its upgrade handler, the hooks.

* :class:`UpgradeHandler` decides about a ``/ws`` upgrade *before* the 101:
  gevent-websocket answers 101 before the WSGI app runs, so a refusal
  (foreign ``Origin``, worker full, shutting down) must happen here to be an
  HTTP status (403/503) rather than a WebSocket that opens and closes.
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
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from gunicorn.workers.ggevent import PyWSGIHandler

from logger.hub import WS_PATH, Refusal

if TYPE_CHECKING:
    from logger.service import LogService

log = logging.getLogger(__name__)


class UpgradeHandler(WebSocketHandler):
    """Upgrades only ``/ws``, and only when the hub admits the request."""

    service: LogService | None = None  # bound per worker by post_worker_init
    idle_timeout_s: float = 5.0  # Gunicorn's ``keepalive``, bound by post_worker_init

    # Gunicorn's access log, not gevent-websocket's own logger.
    log_request = PyWSGIHandler.log_request

    def read_requestline(self) -> str:
        # pywsgi waits for the next request on a keep-alive connection forever
        # (Gunicorn's ``keepalive`` setting is not applied to this worker), so an
        # idle client could hold a connection slot indefinitely. Give up after
        # ``idle_timeout_s``: an empty request line makes pywsgi close quietly.
        with gevent.Timeout(self.idle_timeout_s, False):
            return super().read_requestline()
        return ""

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()  # the extras gunicorn's PyWSGIHandler adds
        environ["gunicorn.sock"] = self.socket
        environ["RAW_URI"] = self.path
        if self.service is not None:
            _client_address_behind_proxies(environ, self.service.settings.trusted_proxies)
        return environ

    def upgrade_websocket(self) -> Any:
        if self.environ.get("PATH_INFO") != WS_PATH:
            return None  # not ours: Flask answers it as plain HTTP
        if self.environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            return None
        if self.service is None:
            return self._refuse(Refusal("503 Service Unavailable", "the pipeline has not started"))
        try:
            self.service.hub.admit(self.environ)
        except Refusal as refusal:
            return self._refuse(refusal)
        return super().upgrade_websocket()

    def _refuse(self, refusal: Refusal) -> list[bytes]:
        body = refusal.reason.encode() + b"\n"
        self.start_response(refusal.status, [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(body)))])
        return [body]


class Worker(GeventWebSocketWorker):
    """gevent-websocket's Gunicorn worker, draining the service on SIGTERM/SIGINT."""

    wsgi_handler = UpgradeHandler

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


def _client_address_behind_proxies(environ: dict[str, Any], trusted: tuple[Any, ...]) -> None:
    """Behind trusted proxies, ``REMOTE_ADDR`` becomes the client they saw.

    ``X-Forwarded-For`` is read right to left, skipping trusted hops; the first
    address that is not a trusted proxy is the client. From anyone else the
    header is ignored: it is whatever the client chose to write.
    """
    if not trusted or not _is_trusted(environ.get("REMOTE_ADDR", ""), trusted):
        return
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            environ["logger.proxy_addr"], environ["REMOTE_ADDR"] = environ["REMOTE_ADDR"], hop
            return


def _is_trusted(address: str, trusted: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _service(worker: Any) -> LogService | None:
    from logger.app import service_of  # in the worker, after monkey-patching
    try:
        return service_of(worker.wsgi)
    except (AttributeError, KeyError):
        return None


def post_worker_init(worker: Any) -> None:
    """After monkey-patching: bind the upgrade handler to this worker's service and start it."""
    service = _service(worker)
    if service is None:
        worker.log.warning("the WSGI app was not made by logger.app.create_app: pipeline not started")
        return
    worker.wsgi_handler = type("BoundUpgradeHandler", (worker.wsgi_handler,),
                               {"service": service, "idle_timeout_s": max(worker.cfg.keepalive, 1)})
    service.start()
    # Everything loaded so far (Flask, kafka-python, OpenTelemetry, protobuf...) lives
    # as long as the worker: move it out of the cyclic GC's reach. A full collection
    # then walks only what came later; with 1,000 clients connected one took up to
    # 99 ms before (a stall every client sees as latency) and 14 ms after.
    gc.freeze()


def drain(worker: Any) -> None:
    """Flush and close the pipeline inside graceful_timeout (leaving time to exit)."""
    service = _service(worker)
    if service is not None:
        service.stop(timeout=max(worker.cfg.graceful_timeout - 3, 1))


def worker_exit(server: Any, worker: Any) -> None:
    """Last chance (e.g. the worker's run loop ended for another reason)."""
    drain(worker)
