"""Who may read which logs (issue 14): grants, where tokens travel, and when they expire.

A token becomes a :class:`Grant` (who, until when, and the scope: a
:class:`~logger.filters.Filter` the hub ANDs with whatever the client asks
for) or an :class:`AuthError` (401 or 403, with a reason fit for
``WWW-Authenticate``). The JWT check itself is :class:`logger.tokens.TokenVerifier`,
loaded only when authentication is on (PyJWT and cryptography add ~25 ms to a
worker's start and are not needed otherwise); a team's own ``authorize``
(``create_app(authorize=...)``) may replace it. :class:`ScopeMapping` turns
claims into a scope; :class:`Deadlines` closes connections whose token expired.

Tokens arrive three ways (:func:`token_from_environ`): ``Authorization:
Bearer``, the subprotocol ``bearer.<JWT>`` next to ``logger.v1`` (browsers
cannot set headers on a WebSocket), or ``?access_token=``; :func:`scrubbed`
removes them from what the access log sees.
"""

from __future__ import annotations

import heapq
import itertools
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs


from logger.config import Settings
from logger.errors import LoggerServiceError
from logger.filters import EVERYTHING, Filter
from logger.records import LEVELS, LEVEL_NAMES

REALM = "logger-service"
SUBPROTOCOL = "logger.v1"  # what the server answers when a browser offers it (with or without a token)
BEARER_PREFIX = "bearer."  # the subprotocol that carries the token: bearer.<JWT>
MAX_TOKEN_BYTES = 16 << 10


class AuthError(LoggerServiceError):
    """A request or message to refuse: ``status`` 401 (no token, or a bad one) or 403 (a good
    token that grants nothing, or a scope that excludes what was asked). ``str()`` is the
    reason, short and free of the token."""

    def __init__(self, reason: str, status: int = 401, error: str | None = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.error = error  # RFC 6750 §3.1: none when no token was sent at all

    @classmethod
    def missing(cls) -> AuthError:
        return cls("no token: send Authorization: Bearer <token>", 401, None)

    @classmethod
    def forbidden(cls, reason: str) -> AuthError:
        return cls(reason, 403, "insufficient_scope")

    @property
    def status_line(self) -> str:
        return "403 Forbidden" if self.status == 403 else "401 Unauthorized"

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` header of the refusal (RFC 6750 §3)."""
        value = f'Bearer realm="{REALM}"'
        if self.error:
            description = self.reason.replace("\\", "").replace('"', "'")
            value += f', error="{self.error}", error_description="{description}"'
        return value

    def headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", self.www_authenticate)]


@dataclass(frozen=True)
class Grant:
    """What a token allows: who, until when (epoch seconds, None: no ``exp``), which logs."""

    subject: str | None
    expires_at: float | None
    scope: Filter = EVERYTHING  # EVERYTHING: the admin's "sees everything"
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> dict[str, Any]:
        """The ``auth`` object of ``hello``/``subscribed`` and the body of ``/api/session``."""
        return {"subject": self.subject, "expires_at": self.expires_at, "scope": describe_scope(self.scope)}


def describe_scope(scope: Filter) -> dict[str, Any] | str:
    return "all" if scope.everything else scope.describe()


Authorize = Callable[[dict[str, Any]], Grant]  # create_app(authorize=...): the upgrade's environ → Grant


@dataclass(frozen=True)
class ScopeMapping:
    """Claims → scope, as configured (``AUTH_*_CLAIM``, ``AUTH_ATTRIBUTE_CLAIMS``).

    ``logs.all: true`` sees everything. Otherwise each scope claim present
    narrows: services (a list, or one name), a minimum level, and each
    configured attribute bound to its claim's value. A token with none of
    them grants nothing (403), and so does an empty services list: an empty
    list must not read as "no service condition".
    """

    services_claim: str
    min_level_claim: str
    attribute_claims: tuple[tuple[str, str], ...]
    all_logs_claim: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ScopeMapping:
        return cls(settings.auth_services_claim, settings.auth_min_level_claim,
                   settings.auth_attribute_claims, settings.auth_all_logs_claim)

    def __call__(self, claims: Mapping[str, Any]) -> Filter:
        if claim_value(claims, self.all_logs_claim) is True:
            return EVERYTHING
        found = False
        services: frozenset[str] = frozenset()
        raw = claim_value(claims, self.services_claim)
        if raw is not None:
            names = [raw] if isinstance(raw, str) else raw
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise AuthError.forbidden(f"claim {self.services_claim} must be a list of service names")
            if not names:
                raise AuthError.forbidden(f"claim {self.services_claim} lists no service")
            services, found = frozenset(names), True
        min_severity = 0
        level = claim_value(claims, self.min_level_claim)
        if level is not None:
            if not isinstance(level, str) or level.lower() not in LEVEL_NAMES:
                raise AuthError.forbidden(f"claim {self.min_level_claim} must be one of "
                                          + ", ".join(LEVEL_NAMES))
            min_severity, found = LEVELS[level.lower()][0], True
        attributes = []
        for path, claim in self.attribute_claims:
            value = claim_value(claims, claim)
            if value is None:
                continue
            if isinstance(value, (dict, list)):
                raise AuthError.forbidden(f"claim {claim} must be a string or a number")
            attributes.append((path, _scalar_text(value)))
            found = True
        if not found:
            raise AuthError.forbidden("token grants no logs (no scope claim)")
        return Filter(min_severity=min_severity, services=services, attributes=tuple(sorted(attributes)))


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """``logs.services`` finds a flat ``{"logs.services": …}`` or a nested ``{"logs": {"services": …}}``."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _scalar_text(value: Any) -> str:
    # As filters compare attributes: as text, true/false for booleans.
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


# -- transports -------------------------------------------------------------------------

def offered_protocols(environ: Mapping[str, Any]) -> list[str]:
    return [p.strip() for p in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",") if p.strip()]


def token_from_environ(environ: Mapping[str, Any], subprotocol: bool = True) -> str | None:
    """The token of a request: ``Authorization: Bearer``, else the ``bearer.<JWT>``
    subprotocol, else ``?access_token=`` (RFC 6750 §2.1, §2.3)."""
    header = environ.get("HTTP_AUTHORIZATION", "").strip()
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("Authorization must be: Bearer <token>")
        return value.strip()
    if subprotocol:
        for offered in offered_protocols(environ):
            if offered.lower().startswith(BEARER_PREFIX):
                return offered[len(BEARER_PREFIX):]
    values = parse_qs(environ.get("QUERY_STRING", "")).get("access_token")
    return values[-1] if values else None


REDACTED = "<redacted>"
_TOKEN_IN_QUERY = re.compile(r"(?i)(access_token=)[^&\s\"']*")
_TOKEN_IN_PROTOCOLS = re.compile(r"(?i)(bearer\.)[^,\s\"']*")


def scrub_text(text: str) -> str:
    """``access_token=…`` and ``bearer.…`` in a line of text (a request line, a query string)."""
    return _TOKEN_IN_PROTOCOLS.sub(r"\1" + REDACTED, _TOKEN_IN_QUERY.sub(r"\1" + REDACTED, text))


def scrubbed(environ: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a WSGI environ fit for a log line: no token in the query, the request URI,
    ``Authorization`` or ``Sec-WebSocket-Protocol``."""
    out = dict(environ)
    for name in ("QUERY_STRING", "RAW_URI", "REQUEST_URI", "HTTP_SEC_WEBSOCKET_PROTOCOL"):
        if isinstance(out.get(name), str):
            out[name] = scrub_text(out[name])
    if out.get("HTTP_AUTHORIZATION"):
        out["HTTP_AUTHORIZATION"] = out["HTTP_AUTHORIZATION"].split(" ", 1)[0] + " " + REDACTED
    return out


def scrubbed_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower == "authorization":
            value = value.split(" ", 1)[0] + " " + REDACTED
        elif lower == "sec-websocket-protocol":
            value = scrub_text(value)
        out.append((name, value))
    return out


# -- expiry -----------------------------------------------------------------------------

class Deadlines:
    """When each connection's token runs out: one heap, swept by the hub's keepalive tick
    (no timer per connection). Entries are (deadline, n, connection, grant); a connection
    whose grant changed since (an ``auth`` refresh) or that went away is skipped. Connections
    are held weakly: a closed client costs nothing here but its entry."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[Any], Grant]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, connection: Any, grant: Grant, deadline: float) -> None:
        heapq.heappush(self._heap, (deadline, next(self._order), weakref.ref(connection), grant))

    def due(self, now: float, current: Callable[[Any], Grant | None]) -> list[Any]:
        """Connections whose grant (still ``current(connection)``) ran out by ``now``."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, _, ref, grant = heapq.heappop(self._heap)
            connection = ref()
            if connection is not None and current(connection) is grant:
                out.append(connection)
        return out

    def compact(self, current: Callable[[Any], Grant | None]) -> None:
        """Drop entries of connections gone or refreshed (bounds the heap at many refreshes)."""
        self._heap = [entry for entry in self._heap
                      if (c := entry[2]()) is not None and current(c) is entry[3]]
        heapq.heapify(self._heap)
