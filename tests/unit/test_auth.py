"""Token verification with real keys (RS256, ES256, EdDSA, HS256), the scope claims map to,
the token transports, log scrubbing, expiry bookkeeping and the JWKS refresh (issue 14)."""

from __future__ import annotations

import time

import gevent
import orjson
import pytest

from logger import auth, tokens
from logger.auth import AuthError, Deadlines, Grant, scrubbed, token_from_environ
from logger.tokens import TokenVerifier
from logger.config import Settings
from logger.errors import ConfigError
from logger.filters import EVERYTHING, Filter
from tests.auth_keys import (
    AUDIENCE,
    ISSUER,
    SECRET,
    KeyPair,
    hs256,
    hs256_with_public_key,
    tampered,
    unsigned,
)

SELLER = {"logs.services": ["orders", "payments"], "seller_id": "s-42"}


def settings(**overrides) -> Settings:
    env = {"AUTH_JWKS_URL": "http://127.0.0.1:9/jwks", "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE,
           "AUTH_ATTRIBUTE_CLAIMS": "seller.id=seller_id", "AUTH_LEEWAY_S": "5"}
    env.update(overrides)
    return Settings.from_env({k: v for k, v in env.items() if v is not None})


@pytest.fixture(scope="module")
def pairs() -> dict[str, KeyPair]:
    return {alg: KeyPair.make(alg, f"key-{alg}") for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture
def verifier(pairs) -> TokenVerifier:
    v = TokenVerifier(settings(AUTH_JWT_SECRET=SECRET))
    v.load_jwks({"keys": [p.jwk for p in pairs.values()]})
    return v


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_asymmetric_tokens_from_the_jwks_are_accepted_with_their_scope(verifier, pairs, alg):
    grant = verifier.verify(pairs[alg].token(sub="seller-42", **SELLER))
    assert grant.subject == "seller-42"
    assert grant.expires_at == pytest.approx(time.time() + 300, abs=5)
    assert grant.scope == Filter(services=frozenset({"orders", "payments"}), attributes=(("seller.id", "s-42"),))
    assert grant.describe()["scope"] == {"service": ["orders", "payments"], "attributes": {"seller.id": "s-42"}}


def test_hs256_with_the_shared_secret(verifier):
    assert verifier.verify(hs256(**{"logs.all": True})).scope == EVERYTHING


def test_admin_claim_sees_everything_and_says_all(verifier, pairs):
    grant = verifier.verify(pairs["RS256"].token(**{"logs.all": True}))
    assert grant.scope.everything and grant.describe()["scope"] == "all"


@pytest.mark.parametrize("make, reason", [
    (lambda p: p["RS256"].token(ttl=-60, **SELLER), "token expired"),
    (lambda p: p["RS256"].token(nbf=int(time.time()) + 60, **SELLER), "token not yet valid"),
    (lambda p: p["RS256"].token(iss="https://other.test/", **SELLER), "wrong issuer"),
    (lambda p: p["RS256"].token(aud="another-app", **SELLER), "wrong audience"),
    (lambda p: p["RS256"].token(aud=None, **SELLER), "token has no aud claim"),
    (lambda p: p["RS256"].token(iss=None, **SELLER), "token has no iss claim"),
    (lambda p: unsigned(**SELLER), "algorithm 'none' not allowed"),
    (lambda p: p["RS256"].token(kid="never-published", **SELLER), "unknown key id"),
    (lambda p: tampered(p["RS256"].token(**SELLER), seller_id="s-1"), "bad signature"),
    (lambda p: tampered(p["ES256"].token(**SELLER), **{"logs.all": True}), "bad signature"),
    (lambda p: tampered(p["EdDSA"].token(**SELLER), exp=int(time.time()) + 10**6), "bad signature"),
    (lambda p: hs256("another-secret-of-at-least-32-characters", **SELLER), "bad signature"),
    (lambda p: "not-a-jwt", "malformed token"),
    (lambda p: "a.b.c", "malformed token"),
])
def test_refusals_are_401_with_a_reason(verifier, pairs, make, reason):
    with pytest.raises(AuthError) as caught:
        verifier.verify(make(pairs))
    assert (caught.value.status, caught.value.reason) == (401, reason)
    assert caught.value.www_authenticate == \
        f'Bearer realm="logger-service", error="invalid_token", error_description="{reason.replace(chr(39), chr(39))}"'


def test_expiry_and_not_before_get_the_leeway(verifier, pairs):
    assert verifier.verify(pairs["RS256"].token(ttl=-3, **SELLER))  # leeway 5 s
    assert verifier.verify(pairs["RS256"].token(nbf=int(time.time()) + 3, **SELLER))


def test_algorithm_confusion_hs256_signed_with_the_public_key_is_refused(pairs):
    rsa = pairs["RS256"]
    token = hs256_with_public_key(rsa, **SELLER)
    jwks_only = TokenVerifier(settings())
    jwks_only.load_jwks({"keys": [rsa.jwk]})
    with pytest.raises(AuthError, match="algorithm 'HS256' not allowed"):
        jwks_only.verify(token)
    both = TokenVerifier(settings(AUTH_JWT_SECRET=SECRET))  # HS256 allowed, but only with the secret
    both.load_jwks({"keys": [rsa.jwk]})
    with pytest.raises(AuthError, match="bad signature"):
        both.verify(token)


def test_a_jwks_key_is_used_only_with_an_algorithm_of_its_type(pairs):
    v = TokenVerifier(settings())
    # The EC key published under the RSA key's kid: an RS256 token naming it is refused.
    v.load_jwks({"keys": [{**pairs["ES256"].jwk, "kid": "key-RS256"}]})
    with pytest.raises(AuthError, match="not a key for RS256"):
        v.verify(pairs["RS256"].token(**SELLER))
    # A key that names its alg is used with that alg only.
    pinned = KeyPair.make("RS256", "pinned", {"alg": "PS256"})
    v.load_jwks({"keys": [pinned.jwk]})
    with pytest.raises(AuthError, match="not a key for RS256"):
        v.verify(pinned.token(**SELLER))


def test_jwks_keys_for_encryption_and_unusable_keys_are_skipped(pairs):
    v = TokenVerifier(settings())
    v.load_jwks({"keys": [{**pairs["RS256"].jwk, "use": "enc"}, {"kty": "nope", "kid": "x"}, pairs["ES256"].jwk]})
    with pytest.raises(AuthError, match="unknown key id"):
        v.verify(pairs["RS256"].token(**SELLER))
    assert v.verify(pairs["ES256"].token(**SELLER))
    with pytest.raises(ValueError, match="no usable signing key"):
        v.load_jwks({"keys": [{"kty": "nope"}]})
    assert v.verify(pairs["ES256"].token(**SELLER)), "a bad JWK Set must not drop the keys known"


def test_a_token_without_kid_uses_the_only_key(pairs):
    v = TokenVerifier(settings())
    v.load_jwks({"keys": [pairs["EdDSA"].jwk]})
    assert v.verify(pairs["EdDSA"].token(kid=None, **SELLER))
    v.load_jwks({"keys": [pairs["EdDSA"].jwk, pairs["RS256"].jwk]})
    with pytest.raises(AuthError, match="no kid"):
        v.verify(pairs["EdDSA"].token(kid=None, **SELLER))


@pytest.mark.parametrize("claims, reason", [
    ({}, "token grants no logs"),
    ({"logs.services": []}, "lists no service"),
    ({"logs.services": [1]}, "must be a list of service names"),
    ({"logs.min_level": "loud"}, "must be one of"),
    ({"seller_id": {"nested": 1}}, "must be a string or a number"),
    ({"logs.all": "yes"}, "token grants no logs"),  # only a real true means everything
])
def test_a_valid_token_that_grants_nothing_is_403(verifier, pairs, claims, reason):
    with pytest.raises(AuthError, match=reason) as caught:
        verifier.verify(pairs["RS256"].token(**claims))
    assert caught.value.status == 403
    assert 'error="insufficient_scope"' in caught.value.www_authenticate


def test_scope_claims_nested_or_flat_level_and_attributes(verifier, pairs):
    grant = verifier.verify(pairs["RS256"].token(logs={"services": "orders", "min_level": "WARN"}, seller_id=7))
    assert grant.scope == Filter(min_severity=13, services=frozenset({"orders"}), attributes=(("seller.id", "7"),))


def test_missing_token_is_401_without_error_attribute(verifier):
    with pytest.raises(AuthError) as caught:
        verifier.authorize({})
    assert caught.value.status == 401
    assert caught.value.www_authenticate == 'Bearer realm="logger-service"'


def test_token_transports_in_order():
    assert token_from_environ({"HTTP_AUTHORIZATION": "Bearer abc", "QUERY_STRING": "access_token=q"}) == "abc"
    assert token_from_environ({"HTTP_SEC_WEBSOCKET_PROTOCOL": "logger.v1, bearer.x.y.z"}) == "x.y.z"
    assert token_from_environ({"HTTP_SEC_WEBSOCKET_PROTOCOL": "bearer.x.y.z"}, subprotocol=False) is None
    assert token_from_environ({"QUERY_STRING": "level=warn&access_token=t.o.k"}) == "t.o.k"
    assert token_from_environ({}) is None
    with pytest.raises(AuthError, match="Bearer"):
        token_from_environ({"HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz"})


def test_scrubbed_environ_and_headers_hold_no_token():
    environ = {"QUERY_STRING": "service=a&access_token=SECRET1&x=1", "RAW_URI": "/ws?access_token=SECRET1",
               "HTTP_AUTHORIZATION": "Bearer SECRET2", "HTTP_SEC_WEBSOCKET_PROTOCOL": "logger.v1, bearer.SECRET3"}
    clean = scrubbed(environ)
    assert "SECRET" not in repr(clean)
    assert clean["QUERY_STRING"] == "service=a&access_token=<redacted>&x=1"
    assert clean["HTTP_SEC_WEBSOCKET_PROTOCOL"] == "logger.v1, bearer.<redacted>"
    assert environ["RAW_URI"].endswith("SECRET1"), "the request's own environ is left alone"
    headers = auth.scrubbed_headers([("Authorization", "Bearer SECRET2"), ("Sec-WebSocket-Protocol", "bearer.S3"),
                                     ("Host", "h")])
    assert headers == [("Authorization", "Bearer <redacted>"), ("Sec-WebSocket-Protocol", "bearer.<redacted>"),
                       ("Host", "h")]


def test_deadlines_report_only_current_grants_of_live_connections():
    class Conn:
        def __init__(self, grant):
            self.grant = grant

    old, new = Grant("a", 10.0), Grant("a", 50.0)
    refreshed, expired, gone = Conn(old), Conn(Grant("b", 20.0)), Conn(Grant("c", 5.0))
    deadlines = Deadlines()
    for conn in (refreshed, expired, gone):
        deadlines.add(conn, conn.grant, conn.grant.expires_at)
    refreshed.grant = new
    deadlines.add(refreshed, new, 50.0)
    del gone, conn  # the loop variable held it too
    current = lambda conn: conn.grant  # noqa: E731
    assert deadlines.due(4.0, current) == []
    assert deadlines.due(30.0, current) == [expired]
    deadlines.compact(current)
    assert len(deadlines) == 1
    assert deadlines.due(60.0, current) == [refreshed]


class FakeJwks:
    """A fetch function for the refresh greenlet: counts calls, can fail or hang."""

    def __init__(self, *pairs):
        self.keys = list(pairs)
        self.calls = 0
        self.fail = False
        self.hang = False

    def __call__(self) -> bytes:
        self.calls += 1
        if self.fail:
            raise OSError("connection refused")
        while self.hang:
            gevent.sleep(0.01)
        return orjson.dumps({"keys": [p.jwk for p in self.keys]})


@pytest.fixture
def refreshing(pairs, monkeypatch):
    """Factory: a started verifier whose JWKS is a FakeJwks with the RS256 key (stopped after)."""
    started = []

    def make(min_interval_s: float) -> tuple[TokenVerifier, FakeJwks]:
        monkeypatch.setattr(tokens, "JWKS_MIN_INTERVAL_S", min_interval_s)
        monkeypatch.setattr(tokens, "JWKS_FETCH_TIMEOUT_S", 5.0)  # a wait for a fetch shows as seconds
        fetch = FakeJwks(pairs["RS256"])
        verifier = TokenVerifier(settings(), fetch=fetch)
        verifier.start()
        started.append((verifier, fetch))
        return verifier, fetch
    yield make
    for verifier, fetch in started:
        fetch.hang = False
        verifier.stop()


def test_a_new_kid_waits_for_the_rate_limited_refresh_and_a_burst_costs_one_fetch(pairs, refreshing):
    v, fetch = refreshing(0.5)
    assert v.verify(pairs["RS256"].token(**SELLER))  # waits for the first fetch
    assert fetch.calls == 1
    # A rotation: the new kid is unknown until a refresh, at most one per 0.5 s here.
    fetch.keys.append(pairs["ES256"])
    started = time.monotonic()
    assert v.verify(pairs["ES256"].token(**SELLER))
    assert fetch.calls == 2 and time.monotonic() - started >= 0.4, "the refresh waited for the interval"
    # Ten unknown kids at once: they wait for one and the same fetch.
    burst = [gevent.spawn(v.verify, pairs["EdDSA"].token(**SELLER)) for _ in range(10)]
    gevent.joinall(burst, timeout=3)
    assert all(isinstance(g.exception, AuthError) and g.exception.reason == "unknown key id" for g in burst)
    assert fetch.calls == 3
    # The provider fails: the keys known keep working.
    fetch.fail = True
    with pytest.raises(AuthError, match="unknown key id"):
        v.verify(pairs["EdDSA"].token(**SELLER))
    assert fetch.calls == 4 and v.fetch_error == "OSError: connection refused"
    assert v.verify(pairs["ES256"].token(**SELLER))


def test_an_unknown_kid_is_refused_at_once_when_no_refresh_can_come_in_time(pairs, refreshing):
    v, fetch = refreshing(10.0)  # the next fetch is 10 s away, more than a wait may last (5 s)
    assert v.verify(pairs["RS256"].token(**SELLER))
    fetch.keys.append(pairs["ES256"])
    started = time.monotonic()
    with pytest.raises(AuthError, match="unknown key id"):
        v.verify(pairs["ES256"].token(**SELLER))
    assert fetch.calls == 1 and time.monotonic() - started < 1


def test_a_hanging_jwks_never_delays_tokens_of_known_keys(pairs, refreshing):
    v, fetch = refreshing(0.1)
    assert v.verify(pairs["RS256"].token(**SELLER))
    fetch.hang = True
    fetch.keys.append(pairs["ES256"])
    gevent.sleep(0.15)
    waiting = gevent.spawn(v.verify, pairs["ES256"].token(**SELLER))  # its kid starts a fetch, which hangs
    gevent.sleep(0.05)
    assert not waiting.ready() and fetch.calls == 2
    started = time.monotonic()
    for _ in range(20):  # a wait for the hanging fetch would take its 5 s timeout
        assert v.verify(pairs["RS256"].token(**SELLER))
    assert time.monotonic() - started < 2
    fetch.hang = False  # the provider answers at last: the waiting token gets its key
    assert waiting.get(timeout=2).subject == "user-1"


def test_a_fetch_that_never_ends_is_cut_at_its_deadline_and_the_keys_stay(pairs, monkeypatch):
    monkeypatch.setattr(tokens, "JWKS_FETCH_TIMEOUT_S", 0.2)
    fetch = FakeJwks(pairs["RS256"])
    v = TokenVerifier(settings(), fetch=fetch)
    v.load_jwks({"keys": [pairs["RS256"].jwk]})
    fetch.hang = True
    try:
        v._fetch_once()  # what the refresh greenlet runs
    finally:
        fetch.hang = False
    assert v.fetch_error == "TimeoutError: no JWKS within 0.2 s"
    assert v.verify(pairs["RS256"].token(**SELLER))


@pytest.mark.parametrize("env, names", [
    ({"AUTH_JWKS_URL": "ftp://idp/jwks", "AUTH_ISSUER": "i", "AUTH_AUDIENCE": "a"}, "AUTH_JWKS_URL"),
    ({"AUTH_JWKS_URL": "https://idp/jwks", "AUTH_AUDIENCE": "a"}, "AUTH_ISSUER"),
    ({"AUTH_JWKS_URL": "https://idp/jwks", "AUTH_ISSUER": "i"}, "AUTH_AUDIENCE"),
    ({"AUTH_AUDIENCE": "a"}, "AUTH_AUDIENCE"),
    ({"AUTH_JWT_SECRET": "too short"}, "AUTH_JWT_SECRET"),
    ({"AUTH_JWT_SECRET": SECRET, "AUTH_LEEWAY_S": "-1"}, "AUTH_LEEWAY_S"),
    ({"AUTH_JWT_SECRET": SECRET, "AUTH_JWKS_REFRESH_S": "1"}, "AUTH_JWKS_REFRESH_S"),
    ({"AUTH_JWT_SECRET": SECRET, "AUTH_SERVICES_CLAIM": "has space"}, "AUTH_SERVICES_CLAIM"),
    ({"AUTH_JWT_SECRET": SECRET, "AUTH_ATTRIBUTE_CLAIMS": "seller.id"}, "AUTH_ATTRIBUTE_CLAIMS"),
    ({"AUTH_JWT_SECRET": SECRET, "AUTH_ATTRIBUTE_CLAIMS": "a=b,a=c"}, "AUTH_ATTRIBUTE_CLAIMS"),
    ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN"),
])
def test_bad_auth_settings_stop_start_up_naming_the_variable(env, names):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert message.startswith(names) and "\n" not in message
    assert SECRET not in message and "too short" not in message


def test_auth_settings_defaults_and_secrets_out_of_repr():
    off = Settings.from_env({})
    assert not off.auth_enabled and off.auth_leeway_s == 30 and off.auth_jwks_refresh_s == 300
    assert (off.auth_services_claim, off.auth_min_level_claim, off.auth_all_logs_claim, off.auth_write_claim) == \
        ("logs.services", "logs.min_level", "logs.all", "logs.write")
    on = Settings.from_env({"AUTH_JWT_SECRET": SECRET, "METRICS_TOKEN": "metrics-token-0123456789",
                            "AUTH_ATTRIBUTE_CLAIMS": "seller.id=seller_id, region = tenant.region"})
    assert on.auth_enabled
    assert on.auth_attribute_claims == (("seller.id", "seller_id"), ("region", "tenant.region"))
    assert SECRET not in repr(on) and "metrics-token" not in repr(on)
