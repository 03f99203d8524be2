"""Bearer tokens on the plain HTTP routes: ``/metrics``, ``/health`` and ``POST /api/logs``.

``/ws`` is guarded below Flask (``gunicorn_worker``, ``logger.auth``); these
routes are ordinary Flask views and share what is here: reading the token of
an ``Authorization: Bearer …`` header (RFC 6750), comparing it with a
configured secret (``METRICS_TOKEN``, ``INGEST_TOKEN``) in constant time, so
the answer's timing says nothing about how much of a guess was right, and the
401 with its ``WWW-Authenticate`` challenge in the form the ``/ws`` refusals
use.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import jsonify

REALM = "logger-service"


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


def challenge(description: str | None = None) -> str:
    """The ``WWW-Authenticate`` value: no ``error`` when no token was sent (RFC 6750 §3.1)."""
    if description is None:
        return f'Bearer realm="{REALM}"'
    return f'Bearer realm="{REALM}", error="invalid_token", error_description="{_quotable(description)}"'


def unauthorized(description: str | None, message: str) -> tuple[Any, int, dict[str, str]]:
    """A Flask 401: ``{"error": message}`` with the challenge (``description`` None: no token sent)."""
    return jsonify(error=message), 401, {"WWW-Authenticate": challenge(description)}


def _quotable(text: str) -> str:
    """A quoted-string may not hold ``"`` or ``\\`` unescaped, nor control characters."""
    return "".join(c for c in text if c.isprintable() and c not in '"\\')
