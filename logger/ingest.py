"""``POST /api/logs``: accept log records over HTTP and publish them to the Kafka topic.

Mounted by ``create_app`` only when ``INGEST_TOKEN`` is set, and protected by
it as a bearer token. The body is one JSON object or an array of them (or of
strings); the answer is 202 once Kafka acknowledged every record. It is also
the worked example of the public API for teams that add their own routes:
``service_of(app).publish([...])``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import orjson
from flask import Blueprint, jsonify, request

from logger.errors import PublishError

MAX_RECORDS = 1000


def ingest_blueprint(token: str, publish: Callable[[list[Any]], int]) -> Blueprint:
    """``POST /api/logs`` guarded by ``token``; ``publish`` puts records on the topic
    (``LogService.publish``) and returns how many Kafka acknowledged."""
    blueprint = Blueprint("ingest", __name__)

    @blueprint.post("/api/logs")
    def post_logs() -> Any:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return jsonify(error="missing or wrong bearer token"), 401, {"WWW-Authenticate": "Bearer"}
        body = _json_body()
        records = body if isinstance(body, list) else [body]
        if body is None or not records or not all(isinstance(r, (dict, str)) for r in records):
            return jsonify(error="send a JSON object, or an array of objects or strings"), 400
        if len(records) > MAX_RECORDS:
            return jsonify(error=f"at most {MAX_RECORDS} records per request"), 413
        try:
            accepted = publish(records)
        except PublishError as exc:
            return jsonify(error=str(exc)), 503
        return jsonify(accepted=accepted), 202

    return blueprint


def _json_body() -> Any:
    """The request body as JSON, or None if it is not JSON.

    orjson, not Flask's ``get_json``: ``json.loads`` of a 100,000-deep array
    raises RecursionError, which ``silent=True`` does not catch (a 500); orjson
    refuses nesting past 1024 levels with an ordinary decode error.
    """
    if not request.is_json:
        return None
    try:
        return orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError:
        return None
