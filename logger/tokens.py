"""JSON Web Tokens checked once per connection: :class:`TokenVerifier` (issue 14).

It turns a token into a :class:`~logger.auth.Grant` or raises
:class:`~logger.auth.AuthError`. Verification is PyJWT's (``jwt.decode``:
signature, ``exp``, ``nbf``, ``iat``, ``iss``, ``aud``, with a leeway); this
module chooses the key, so that:

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

Imported only when authentication is on (:class:`logger.service.LogService`):
PyJWT and cryptography cost ~25 ms of a worker's start.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import gevent
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from gevent.event import Event

from logger.auth import MAX_TOKEN_BYTES, AuthError, Grant, ScopeMapping, token_from_environ
from logger.config import Settings

log = logging.getLogger(__name__)

JWKS_FETCH_TIMEOUT_S = 5.0
JWKS_MIN_INTERVAL_S = 10.0  # unknown kids trigger at most one fetch per this (jose's cooldown is 30 s)
JWKS_MAX_BYTES = 1 << 20
HMAC_ALGORITHMS = ("HS256",)
# Each asymmetric algorithm with the key type it needs.
KEY_TYPES: dict[str, tuple[type, ...]] = {
    **{alg: (rsa.RSAPublicKey,) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    **{alg: (ec.EllipticCurvePublicKey,) for alg in ("ES256", "ES384", "ES512")},
    "EdDSA": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


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
        claims = self.claims(token, wait_for_keys)
        expires_at = claims.get("exp")
        subject = claims.get("sub")
        return Grant(subject=subject if isinstance(subject, str) else None,
                     expires_at=float(expires_at) if expires_at is not None else None,
                     scope=self._scope_of(claims), claims=claims)

    def claims(self, token: str | None, wait_for_keys: bool = True) -> dict[str, Any]:
        """The claims of a valid token (signature, ``exp``, ``nbf``, ``iss``, ``aud``), with no
        read scope required: ``POST /api/logs`` takes write-only tokens. AuthError otherwise."""
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
        return claims

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


def _http_get(url: str, timeout: float) -> bytes:
    # urllib under gevent's monkey-patching: this greenlet waits, the others run.
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "logger-service"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (config)
        body = response.read(JWKS_MAX_BYTES + 1)
    if len(body) > JWKS_MAX_BYTES:
        raise ValueError(f"JWKS larger than {JWKS_MAX_BYTES} bytes")
    return body
