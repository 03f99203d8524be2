"""Bearer tokens on the plain HTTP routes: ``/metrics``, ``/health`` and ``POST /api/logs``.

``/ws`` is guarded below Flask (``gunicorn_worker``, ``logger.auth``); these
routes are ordinary Flask views and share what is here: reading the token of
an ``Authorization: Bearer …`` header (RFC 6750; these routes take no token in
the query string, which would reach access logs of proxies we do not
control), comparing it with a configured secret (``METRICS_TOKEN``,
``INGEST_TOKEN``) in constant time, so the answer's timing says nothing about
how much of a guess was right, and answering a refusal the way ``/ws`` does:
``{"error": …}`` with the status and ``WWW-Authenticate`` of an
:class:`~logger.auth.AuthError`.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import jsonify

from logger.auth import AuthError


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None.

    The scheme is matched case-insensitively (RFC 7235 §2.1); any other scheme
    (``Basic …``) or an empty token is no token.
    """
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def is_secret(token: str | None, secret: str) -> bool:
    """``token`` is ``secret``, compared in constant time (bytes: ``compare_digest`` refuses
    non-ASCII ``str``, and a header may carry any Latin-1 character)."""
    return token is not None and hmac.compare_digest(token.encode(), secret.encode())


def refused(error: AuthError) -> tuple[Any, int, list[tuple[str, str]]]:
    """The Flask answer to a refused request: 401 or 403 with its challenge."""
    return jsonify(error=error.reason), error.status, error.headers()
