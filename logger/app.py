"""``create_app(settings, authorize=None)``: the Flask app with ``/``, ``/health``,
``/api/session`` and ``/ws``.

Building the app starts nothing; Gunicorn's ``post_worker_init`` hook
(``logger.gunicorn_worker.post_worker_init``) starts the pipeline. Teams add
their own routes the usual way: ``app = create_app(settings);
app.register_blueprint(bp)``.

CORS (flask-cors) covers the HTTP routes for exactly the configured front-end
origins. An upgraded ``/ws`` never reaches Flask: the upgrade handler in
``logger.gunicorn_worker`` checks it (``Origin`` included, because CORS does
not apply to WebSockets), answers the 101 and hands the connection to the
hub. A WebSocket lives for hours, and holding a request context, a handler
greenlet and its buffers for each one costs memory and buys nothing. A plain
``GET /ws`` gets 426 from Flask.

``authorize(environ) -> Grant`` decides who may open ``/ws`` and what they see
(raise ``logger.auth.AuthError`` to refuse); it runs in the upgrade handler,
before the 101, with the upgrade's WSGI environ. By default it is the JWT
verifier (``AUTH_JWKS_URL`` / ``AUTH_JWT_SECRET``), or nothing (open) when
neither is set. ``GET /api/session`` answers with what it grants.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from flask_cors import CORS

import logger
from logger import metrics
from logger.auth import AuthError, Authorize
from logger.config import Settings
from logger.hub import WS_PATH
from logger.ingest import ingest_blueprint
from logger.service import LogService
from logger.viewer import viewer_blueprint

EXTENSION = "logger_service"
MAX_BODY_BYTES = 1 << 20


def create_app(settings: Settings | None = None, service: LogService | None = None,
               authorize: Authorize | None = None) -> Flask:
    settings = settings or Settings()
    if service is None:
        service = LogService(settings, authorize)
    elif authorize is not None:
        service.hub.authorize = authorize
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

    @app.get("/api/session")
    def session() -> Any:
        """What a token (or the team's authorize) grants: for the viewer and for scripts.
        Its token comes as for /ws, but not as a subprotocol (this is no WebSocket)."""
        authorize = service.hub.authorize
        if authorize is None:
            return _no_store(jsonify(auth="off"))
        environ = {k: v for k, v in request.environ.items() if k != "HTTP_SEC_WEBSOCKET_PROTOCOL"}
        try:
            grant = authorize(environ)
        except AuthError as error:
            return _no_store(jsonify(error=error.reason)), error.status, error.headers()
        return _no_store(jsonify(auth=service.auth_mode, **grant.describe()))

    @app.get(WS_PATH)
    def websocket_without_upgrade() -> Any:
        # Reached only by a plain GET: upgrades are taken below Flask.
        return jsonify(error="this endpoint speaks WebSocket: send an Upgrade request"), 426, {
            "Upgrade": "websocket"}

    if settings.ingest_token:
        app.register_blueprint(ingest_blueprint(settings.ingest_token, service.publish))
    app.register_blueprint(viewer_blueprint())
    return app


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"  # who is signed in is nothing to cache
    return response


def service_of(app: Flask) -> LogService:
    """The LogService behind an app made by create_app."""
    return app.extensions[EXTENSION]
