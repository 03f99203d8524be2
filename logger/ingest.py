"""``POST /api/logs``: accept log records over HTTP and publish them to the Kafka topic.

Mounted by ``create_app`` when ``INGEST_TOKEN`` is set, or authentication is
on (issue 14). A caller sends ``Authorization: Bearer`` with either the
``INGEST_TOKEN`` (compared in constant time) or a JSON Web Token, verified by
the service's :class:`~logger.tokens.TokenVerifier`, whose ``AUTH_WRITE_CLAIM``
(``logs.write``) is true. A JWT writer's records carry who sent them: the
attribute ``enduser.id`` (OpenTelemetry's semantic convention) set to the
token's ``sub``, replacing whatever the body said, so one writer cannot pass
its records off as another's. A valid token without the claim gets 403, a bad
one 401.

The body is one JSON object or an array of them (or of strings); the answer is
202 once Kafka acknowledged every record. It is also the worked example of the
public API for teams that add their own routes: ``service_of(app).publish([...])``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from flask import Blueprint, jsonify, request

from logger.auth import AuthError, claim_value
from logger.bearer import bearer_token, is_secret, refused
from logger.errors import PublishError

MAX_RECORDS = 1000
WRITER_ATTRIBUTE = "enduser.id"

# A verified token's claims, or AuthError: the service's TokenVerifier.
VerifyClaims = Callable[[str], Mapping[str, Any]]


class JwtWriters:
    """Which JSON Web Tokens may write: valid ones whose write claim is ``true``."""

    def __init__(self, verify_claims: VerifyClaims, write_claim: str) -> None:
        self._verify_claims = verify_claims
        self.write_claim = write_claim

    def subject(self, token: str) -> str:
        """The writer's ``sub``; AuthError (401 bad token, 403 not a writer) otherwise."""
        claims = self._verify_claims(token)
        if claim_value(claims, self.write_claim) is not True:
            raise AuthError.forbidden(f"this token may not write logs: its {self.write_claim} claim is not true")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError.forbidden("this token has no sub claim: records must say who sent them")
        return subject


def ingest_blueprint(publish: Callable[[list[Any]], int], token: str | None = None,
                     writers: JwtWriters | None = None) -> Blueprint:
    """``POST /api/logs`` for holders of ``token`` (``INGEST_TOKEN``) or of a JWT ``writers``
    accepts; ``publish`` puts records on the topic (``LogService.publish``) and returns how
    many Kafka acknowledged."""
    blueprint = Blueprint("ingest", __name__)

    @blueprint.post("/api/logs")
    def post_logs() -> Any:
        given = bearer_token(request.headers.get("Authorization"))
        if given is None:
            return refused(AuthError.missing())
        writer = None
        if token is None or not is_secret(given, token):
            if writers is None:
                return refused(AuthError("wrong ingest token"))
            try:
                writer = writers.subject(given)
            except AuthError as exc:
                return refused(exc)
        body = _json_body()
        records = body if isinstance(body, list) else [body]
        if body is None or not records or not all(isinstance(r, (dict, str)) for r in records):
            return jsonify(error="send a JSON object, or an array of objects or strings"), 400
        if len(records) > MAX_RECORDS:
            return jsonify(error=f"at most {MAX_RECORDS} records per request"), 413
        if writer is not None:
            records = [stamped(record, writer) for record in records]
        try:
            accepted = publish(records)
        except PublishError as exc:
            return jsonify(error=str(exc)), 503
        return jsonify(accepted=accepted), 202

    return blueprint


def stamped(record: dict[str, Any] | str, writer: str) -> dict[str, Any]:
    """The record with ``enduser.id`` = ``writer``, whatever it claimed before.

    Text becomes ``{"message": text}`` (it needs a place for the attribute).
    The attribute is set as the flat key ``enduser.id``, the name OTLP exports
    and filters look up first; a nested ``{"enduser": {"id": …}}`` from the
    body is removed, or the export would carry two ``enduser.id`` values.
    """
    out = {"message": record} if isinstance(record, str) else dict(record)
    nested = out.get("enduser")
    if isinstance(nested, dict) and "id" in nested:
        rest = {key: value for key, value in nested.items() if key != "id"}
        if rest:
            out["enduser"] = rest
        else:
            del out["enduser"]
    out[WRITER_ATTRIBUTE] = writer
    return out


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
