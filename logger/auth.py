"""Who may read which logs: JSON Web Tokens checked once per connection (issue 14).

A :class:`TokenVerifier` turns a token into a :class:`Grant` (who, until when,
and the scope: a :class:`~logger.filters.Filter` the hub ANDs with whatever the
client asks for) or raises :class:`AuthError` (401 or 403, with a reason fit
for ``WWW-Authenticate``). Verification is PyJWT's (``jwt.decode``: signature,
``exp``, ``nbf``, ``iat``, ``iss``, ``aud``, with a leeway); this module
chooses the key, so that:

* ``alg: none`` and any algorithm not configured are refused before a key is
  looked at;
* HS256 is checked only against ``AUTH_JWT_SECRET``, never against a key from
  the JWKS: a token "signed" HS256 with the public key (algorithm confusion)
  fails like any wrong MAC;
* a JWKS key is used only with an algorithm of its own type (and its own
  ``alg`` when the key names one).

JWKS keys are fetched by a background greenlet (at start, every
``AUTH_JWKS_REFRESH_S``, and on an unknown ``kid``, at most once per
``JWKS_MIN_INTERVAL_S``); a failed fetch keeps the keys already known. The
fan-out never waits for it; at worst an upgrade (or an ``auth`` message) whose
``kid`` is unknown waits up to ``JWKS_FETCH_TIMEOUT_S`` for the refresh it
triggered.

Tokens arrive three ways (:func:`token_from_environ`): ``Authorization:
Bearer``, the subprotocol ``bearer.<JWT>`` next to ``logger.v1`` (browsers
cannot set headers on a WebSocket), or ``?access_token=``; :func:`scrubbed`
removes them from what the access log sees.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import time
import urllib.request
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import gevent
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from gevent.event import Event

from logger.config import Settings
from logger.errors import LoggerServiceError
from logger.filters import EVERYTHING, Filter
from logger.records import LEVELS, LEVEL_NAMES

log = logging.getLogger(__name__)

REALM = "logger-service"
SUBPROTOCOL = "logger.v1"  # what the server answers when a browser offers it (with or without a token)
BEARER_PREFIX = "bearer."  # the subprotocol that carries the token: bearer.<JWT>
JWKS_FETCH_TIMEOUT_S = 5.0
JWKS_MIN_INTERVAL_S = 10.0  # unknown kids trigger at most one fetch per this (jose's cooldown is 30 s)
JWKS_MAX_BYTES = 1 << 20
MAX_TOKEN_BYTES = 16 << 10
HMAC_ALGORITHMS = ("HS256",)
# Each asymmetric algorithm with the key type it needs.
KEY_TYPES: dict[str, tuple[type, ...]] = {
    **{alg: (rsa.RSAPublicKey,) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    **{alg: (ec.EllipticCurvePublicKey,) for alg in ("ES256", "ES384", "ES512")},
    "EdDSA": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


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


class TokenVerifier:
    """Checks tokens against ``AUTH_JWT_SECRET`` and/or the keys of ``AUTH_JWKS_URL``.

    :meth:`start` runs the JWKS refresh greenlet; :meth:`authorize` is the
    default ``authorize`` of ``create_app``.
    """

    def __init__(self, settings: Settings, fetch: Callable[[], bytes] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._scope_of = ScopeMapping.from_settings(settings)
        self._algorithms = (HMAC_ALGORITHMS if settings.auth_jwt_secret else ()) + \
            (tuple(KEY_TYPES) if settings.auth_jwks_url else ())
        self._fetch = fetch or (lambda: _http_get(settings.auth_jwks_url or "", JWKS_FETCH_TIMEOUT_S))
        self._clock = clock
        self._keys: dict[str | None, Any] = {}  # kid → public key (cryptography object); None: no kid
        self._key_algs: dict[str | None, str | None] = {}  # kid → the key's own "alg", if it names one
        self._wake = Event()
        self._fetched = Event()  # replaced after each fetch: waiters hold the one of "the next fetch"
        self._last_fetch = float("-inf")  # monotonic
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None
        self.fetches = 0
        self.fetch_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._settings.auth_jwks_url and self._greenlet is None:
            self._greenlet = gevent.spawn(self._refresh_keys)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _refresh_keys(self) -> None:
        """Fetch at start, then every ``AUTH_JWKS_REFRESH_S`` or when an unknown kid asks,
        never twice within ``JWKS_MIN_INTERVAL_S``."""
        while not self._stopping:
            self._fetch_once()
            self._wake.wait(self._settings.auth_jwks_refresh_s)
            self._wake.clear()
            too_soon = self._last_fetch + JWKS_MIN_INTERVAL_S - time.monotonic()
            if too_soon > 0 and not self._stopping:
                gevent.sleep(too_soon)

    def _fetch_once(self) -> None:
        self._wake.clear()  # whoever asked for a refresh before now is answered by this one
        self._last_fetch = time.monotonic()
        self.fetches += 1
        try:
            # The whole fetch has one deadline: urllib's timeout is per socket operation,
            # and a server trickling a byte at a time would pass it for ever.
            with gevent.Timeout(JWKS_FETCH_TIMEOUT_S, TimeoutError(f"no JWKS within {JWKS_FETCH_TIMEOUT_S:g} s")):
                body = self._fetch()
            self.load_jwks(orjson.loads(body))
            self.fetch_error = None
        except Exception as exc:  # the keys already known stay; the next refresh tries again
            self.fetch_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("could not refresh the JWKS from %s: %s (keeping %d known keys)",
                        self._settings.auth_jwks_url, self.fetch_error, len(self._keys))
        finally:
            done, self._fetched = self._fetched, Event()
            done.set()

    def load_jwks(self, jwks: Any) -> None:
        """Replace the known keys with a JWK Set's signing keys (``use`` absent or ``sig``)."""
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("not a JWK Set (no keys list)")
        keys, algs = {}, {}
        for entry in jwks["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                jwk = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type or curve PyJWT cannot use: skip it, as PyJWKSet does
            kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
            keys[kid], algs[kid] = jwk.key, entry.get("alg")
        if not keys:
            raise ValueError("the JWK Set holds no usable signing key")
        self._keys, self._key_algs = keys, algs

    # -- verification ---------------------------------------------------------------------

    def authorize(self, environ: dict[str, Any]) -> Grant:
        """The default ``authorize``: the request's token, verified."""
        return self.verify(token_from_environ(environ))

    def verify(self, token: str | None, wait_for_keys: bool = True) -> Grant:
        """The grant of a valid token; AuthError otherwise. May wait (this greenlet only) for
        a JWKS refresh when the token names a key not seen yet."""
        if not token:
            raise AuthError.missing()
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if alg not in self._algorithms:  # "none" never is
            raise AuthError(f"algorithm {str(alg)[:20]!r} not allowed")
        key = self._settings.auth_jwt_secret if alg in HMAC_ALGORITHMS else \
            self._public_key(header.get("kid"), alg, wait_for_keys)
        try:
            claims = jwt.decode(token, key, algorithms=[alg], issuer=self._settings.auth_issuer,
                                audience=list(self._settings.auth_audience) or None,
                                leeway=self._settings.auth_leeway_s,
                                options={"verify_aud": bool(self._settings.auth_audience)})
        except jwt.PyJWTError as exc:
            raise AuthError(_reason(exc)) from None
        expires_at = claims.get("exp")
        subject = claims.get("sub")
        return Grant(subject=subject if isinstance(subject, str) else None,
                     expires_at=float(expires_at) if expires_at is not None else None,
                     scope=self._scope_of(claims), claims=claims)

    def _public_key(self, kid: Any, alg: str, wait: bool) -> Any:
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed token: kid must be a string")
        key = self._find_key(kid)
        if key is None and wait and self._refresh_soon():
            fetched = self._fetched
            self._wake.set()
            fetched.wait(JWKS_FETCH_TIMEOUT_S)
            key = self._find_key(kid)
        if key is None:
            raise AuthError("unknown key id" if kid is not None else "token has no kid and the JWKS has "
                            "several keys")
        if not isinstance(key, KEY_TYPES[alg]) or self._key_algs.get(kid) not in (None, alg) or \
                (alg in _CURVES and key.curve.name != _CURVES[alg]):
            raise AuthError(f"key {kid!r} is not a key for {alg}")
        return key

    def _find_key(self, kid: str | None) -> Any:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _refresh_soon(self) -> bool:
        """A fetch can start within the wait (the JWKS refresh is rate-limited)."""
        return (self._greenlet is not None and not self._stopping
                and self._last_fetch + JWKS_MIN_INTERVAL_S - time.monotonic() < JWKS_FETCH_TIMEOUT_S)


# A fixed, short reason per PyJWT error, most specific first (their messages can quote the token).
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token has no {exc.claim} claim"
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "invalid token")


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


def _http_get(url: str, timeout: float) -> bytes:
    # urllib under gevent's monkey-patching: this greenlet waits, the others run.
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "logger-service"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (config)
        body = response.read(JWKS_MAX_BYTES + 1)
    if len(body) > JWKS_MAX_BYTES:
        raise ValueError(f"JWKS larger than {JWKS_MAX_BYTES} bytes")
    return body
