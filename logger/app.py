"""``create_app(settings)``: the Flask app with ``/``, ``/health`` and ``/ws``.

Building the app starts nothing; Gunicorn's ``post_worker_init`` starts the
pipeline (``logger.gunicorn_hooks``). Teams add their own routes the usual
way: ``app = create_app(settings); app.register_blueprint(bp)``.

CORS (flask-cors) covers the HTTP routes for exactly the configured front-end
origins. ``/ws`` is served below Flask, as a plain WSGI branch that hands the
connection to the hub and returns: a WebSocket lives for hours, and holding a
request context, a handler greenlet and its buffers for each one costs
memory and buys nothing. Its ``Origin`` is checked before the upgrade, in
``logger.gunicorn_worker``, because CORS does not apply to WebSockets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, jsonify
from flask_cors import CORS

import logger
from logger import metrics
from logger.config import Settings
from logger.hub import SUBSCRIPTION_KEY, WS_PATH
from logger.ingest import ingest_blueprint
from logger.service import LogService
from logger.ws_transport import WebSocketConnection

EXTENSION = "logger_service"
MAX_BODY_BYTES = 1 << 20


def create_app(settings: Settings | None = None, service: LogService | None = None) -> Flask:
    settings = settings or Settings()
    service = service or LogService(settings)
    app = Flask("logger")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # larger request bodies get 413
    app.extensions[EXTENSION] = service
    CORS(app, origins=list(settings.cors_origins))

    @app.get("/")
    def index() -> Any:
        return jsonify(service="logger-service", version=logger.__version__, status="ok",
                       websocket=WS_PATH, health="/health")

    @app.get("/health")
    def health() -> Any:
        return jsonify(service.health())

    @app.get("/ready")
    def ready() -> Any:
        is_ready, waiting = service.readiness()
        return jsonify(ready=is_ready, waiting=waiting), 200 if is_ready else 503

    @app.get("/metrics")
    def prometheus() -> Any:
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @app.get(WS_PATH)
    def websocket_without_upgrade() -> Any:
        # Reached only by a plain GET: upgrades are taken below Flask.
        return jsonify(error="this endpoint speaks WebSocket: send an Upgrade request"), 426, {
            "Upgrade": "websocket"}

    if settings.ingest_token:
        app.register_blueprint(ingest_blueprint(settings.ingest_token))
    from logger.viewer import viewer_blueprint
    app.register_blueprint(viewer_blueprint())
    app.wsgi_app = WebSocketRoute(app.wsgi_app, service)  # type: ignore[method-assign]
    return app


def service_of(app: Flask) -> LogService:
    """The LogService behind an app made by create_app."""
    return app.extensions[EXTENSION]


class WebSocketRoute:
    """WSGI middleware: an upgraded ``/ws`` request goes to the hub, anything else to Flask."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], service: LogService) -> None:
        self.wsgi_app = wsgi_app
        self.service = service

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        websocket = environ.get("wsgi.websocket")
        if websocket is None or environ.get("PATH_INFO") != WS_PATH:
            return self.wsgi_app(environ, start_response)
        sock, initial = _take_connection(websocket)
        settings = self.service.settings
        client = WebSocketConnection(sock, environ.get("REMOTE_ADDR", ""), max_pending=settings.client_buffer_bytes,
                                 max_message_bytes=settings.max_message_bytes,
                                 max_fragments=settings.max_fragments,
                                 stall_timeout_s=settings.client_stall_timeout_s)
        self.service.hub.attach(client, environ.get(SUBSCRIPTION_KEY), initial)
        return []


def _take_connection(websocket: Any) -> tuple[Any, bytes]:
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
