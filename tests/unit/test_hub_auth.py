"""The hub with authentication on (issue 14), with fake clients and real HS256 tokens:
scope ANDed at connect, on subscribe and in replay; hello/subscribed show it; expiry
closes 1008; an auth refresh that would widen is refused; the Flask routes."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gevent
import pytest

from logger.app import create_app
from logger.auth import AuthError, Grant
from logger.tokens import TokenVerifier
from logger.config import Settings
from logger.filters import Filter
from logger.hub import Hub
from tests.auth_keys import SECRET, hs256
from tests.unit.test_filters_replay import FakeClient, SteppingStop, rec

SELLER = {"logs.services": ["orders"], "seller_id": "s-42"}
ADMIN = {"logs.all": True}


def auth_settings(**env) -> Settings:
    return Settings.from_env({"AUTH_JWT_SECRET": SECRET, "AUTH_ATTRIBUTE_CLAIMS": "seller.id=seller_id",
                              "AUTH_LEEWAY_S": "0", **env})


def make_hub(**env) -> Hub:
    settings = auth_settings(**env)
    return Hub(settings, TokenVerifier(settings).authorize)


def upgrade(token: str | None = None, query: str = "", **headers) -> dict:
    environ = {"HTTP_HOST": "localhost:6006", "QUERY_STRING": query, **headers}
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return environ


def connect(hub: Hub, token: str, query: str = "") -> FakeClient:
    client = FakeClient()
    hub.attach(client, hub.admit(upgrade(token, query)))
    return client


def seller_record(offset: int, seller: str, service: str = "orders", level: str = "info"):
    return rec(offset, level, service, f"order {offset}", seller={"id": seller})


def wait_for(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.01)


def test_no_token_or_a_bad_one_is_refused_before_anything_else_is_looked_at():
    hub = make_hub()
    with pytest.raises(AuthError) as missing:
        hub.admit(upgrade(None, "tail=999999999"))  # a bad query too: the token comes first
    assert missing.value.status == 401 and missing.value.error is None
    with pytest.raises(AuthError, match="token expired"):
        hub.admit(upgrade(hs256(ttl=-5, **SELLER)))
    with pytest.raises(AuthError, match="token grants no logs") as nothing:
        hub.admit(upgrade(hs256()))
    assert nothing.value.status == 403
    assert hub.counters["refused_auth"] == 3


def test_the_scope_is_anded_at_connect_and_hello_shows_the_effective_filter_and_auth():
    hub = make_hub()
    token = hs256(sub="seller-42", **SELLER)
    seller = connect(hub, token, "level=warn")
    hello = seller.messages()[0]
    assert hello["filter"] == {"level": "warn", "service": ["orders"], "attributes": {"seller.id": "s-42"}}
    assert hello["auth"]["subject"] == "seller-42"
    assert hello["auth"]["scope"] == {"service": ["orders"], "attributes": {"seller.id": "s-42"}}
    assert hello["auth"]["expires_at"] > time.time()
    admin = connect(hub, hs256(sub="admin", **ADMIN))
    assert admin.messages()[0]["filter"] == {} and admin.messages()[0]["auth"]["scope"] == "all"
    hub.broadcast([seller_record(0, "s-42", level="warn"), seller_record(1, "s-7", level="warn"),
                   seller_record(2, "s-42", "billing", "error"), seller_record(3, "s-42", level="info")])
    assert seller.offsets() == [0]
    assert admin.offsets() == [0, 1, 2, 3]


def test_asking_at_connect_for_what_the_scope_excludes_is_403():
    hub = make_hub()
    for query in ("service=billing", "attr.seller.id=s-7"):
        with pytest.raises(AuthError) as caught:
            hub.admit(upgrade(hs256(**SELLER), query))
        assert caught.value.status == 403


def test_clients_of_one_scope_asking_the_same_share_one_group_and_one_encoding():
    hub = make_hub()
    a, b = connect(hub, hs256(sub="a", **SELLER)), connect(hub, hs256(sub="b", **SELLER))
    other = connect(hub, hs256(sub="c", **{**SELLER, "seller_id": "s-7"}))
    hub.broadcast([seller_record(0, "s-42"), seller_record(1, "s-7")])
    assert a.frames[-1] is b.frames[-1]
    assert a.offsets() == [0] and other.offsets() == [1]


def test_subscribe_cannot_widen_the_scope():
    hub = make_hub()
    seller = connect(hub, hs256(**SELLER))
    seller.on_text(seller, '{"type":"subscribe"}')  # "everything" means everything in scope
    assert seller.messages()[-1]["filter"] == {"service": ["orders"], "attributes": {"seller.id": "s-42"}}
    assert seller.messages()[-1]["auth"]["scope"] == {"service": ["orders"], "attributes": {"seller.id": "s-42"}}
    for message, reason in [('{"type":"subscribe","service":"billing"}', "none of the services"),
                            ('{"type":"subscribe","attributes":{"seller.id":"s-7"}}', "bound to 's-42'")]:
        seller.on_text(seller, message)
        assert seller.messages()[-1]["type"] == "error" and reason in seller.messages()[-1]["error"]
    hub.broadcast([seller_record(0, "s-42"), seller_record(1, "s-7"), seller_record(2, "s-42", "billing")])
    assert seller.offsets() == [0]


def test_tail_and_since_replay_only_what_the_scope_allows():
    hub = make_hub()
    hub.broadcast([seller_record(i, "s-42" if i % 2 else "s-7") for i in range(10)])
    tail = connect(hub, hs256(**SELLER), "tail=100")
    assert tail.offsets() == [1, 3, 5, 7, 9]
    since = connect(hub, hs256(**SELLER), "since=logs:0:4")
    assert since.offsets() == [5, 7, 9]


def test_with_auth_off_nothing_changes_and_hello_has_no_auth():
    hub = Hub(Settings())
    client = FakeClient()
    hub.attach(client, hub.admit(upgrade(None, "level=warn")))
    assert "auth" not in client.messages()[0] and client.messages()[0]["filter"] == {"level": "warn"}
    client.on_text(client, '{"type":"auth","token":"x"}')
    assert client.messages()[-1] == {"type": "error", "error": "authentication is off on this server"}


def test_the_browser_subprotocol_is_noted_for_the_101_answer():
    hub = make_hub()
    token = hs256(**SELLER)
    subscription = hub.admit({"HTTP_SEC_WEBSOCKET_PROTOCOL": f"logger.v1, bearer.{token}"})
    assert subscription.subprotocol and subscription.grant is not None
    assert not hub.admit(upgrade(token)).subprotocol


def test_expired_connections_are_closed_1008_by_the_keepalive_sweep(monkeypatch):
    import logger.hub as hub_module
    clock = [time.time()]
    monkeypatch.setattr(hub_module, "time", SimpleNamespace(monotonic=lambda: clock[0], time=lambda: clock[0]))
    hub = make_hub(AUTH_LEEWAY_S="2")
    soon, later = connect(hub, hs256(ttl=5, **SELLER)), connect(hub, hs256(ttl=60, **SELLER))
    soon.last_seen = later.last_seen = clock[0] + 100  # not silent
    hub.keepalive(SteppingStop(clock, 6))  # exp + leeway not reached yet
    assert soon.closed_with is None
    hub.keepalive(SteppingStop(clock, 2))
    assert soon.closed_with == (1008, "token expired") and hub.counters["closed_expired"] == 1
    assert later.closed_with is None


def test_an_auth_refresh_moves_the_deadline_and_may_narrow_but_never_widen():
    hub = make_hub()
    seller = connect(hub, hs256(sub="s", ttl=5, **SELLER))
    first_deadline = seller.grant.expires_at
    seller.on_text(seller, '{"type":"auth","token":"%s"}' % hs256(sub="s", ttl=600, **SELLER))
    wait_for(lambda: seller.messages()[-1]["type"] == "authenticated")
    answer = seller.messages()[-1]
    assert answer["expires_at"] > first_deadline + 500 and answer["scope"]["service"] == ["orders"]
    assert seller.grant.expires_at == answer["expires_at"]

    wider = "the new token's scope is wider than this connection's"
    refused = [(hs256(sub="s", **{**SELLER, "logs.services": ["orders", "billing"]}), wider),
               (hs256(sub="s", **ADMIN), wider), (hs256(sub="s", **{"logs.services": ["orders"]}), wider),
               (hs256(sub="other", **SELLER), "the new token is for another subject"), (hs256(sub="s", ttl=-5, **SELLER), "token expired"),
               ("garbage", "malformed token")]
    for token, reason in refused:
        before = seller.grant
        seller.on_text(seller, '{"type":"auth","token":"%s"}' % token)
        wait_for(lambda: seller.messages() and seller.messages()[-1]["type"] == "error")
        assert seller.messages()[-1]["error"] == f"auth refused: {reason}"
        assert seller.grant is before, "a refused refresh keeps the old grant and deadline"
        seller.frames.clear()

    # Narrower: a minimum level on top. The effective filter follows.
    seller.on_text(seller, '{"type":"auth","token":"%s"}' % hs256(sub="s", **SELLER, **{"logs.min_level": "error"}))
    wait_for(lambda: seller.messages() and seller.messages()[-1]["type"] == "authenticated")
    hub.broadcast([seller_record(0, "s-42", level="warn"), seller_record(1, "s-42", level="error")])
    assert seller.offsets() == [1]


def test_one_auth_check_at_a_time_per_client():
    hub = make_hub()
    release = gevent.event.Event()
    real = hub.authorize

    def slow(environ):
        release.wait(2)
        return real(environ)
    hub.authorize = slow
    seller = connect(hub, hs256(sub="s", **SELLER))
    token = hs256(sub="s", **SELLER)
    seller.on_text(seller, '{"type":"auth","token":"%s"}' % token)
    seller.on_text(seller, '{"type":"auth","token":"%s"}' % token)
    assert seller.messages()[-1] == {"type": "error", "error": "the previous auth message is still being checked"}
    release.set()
    wait_for(lambda: seller.messages()[-1]["type"] == "authenticated")


def test_a_custom_authorize_gets_the_environ_and_its_grant_scopes_the_client():
    seen = []

    def by_cookie(environ):
        seen.append(environ)
        if environ.get("HTTP_COOKIE") != "session=ok":
            raise AuthError.forbidden("not signed in")
        return Grant("cookie-user", None, Filter(services=frozenset({"orders"})))
    hub = Hub(Settings(), by_cookie)
    client = FakeClient()
    hub.attach(client, hub.admit({"HTTP_COOKIE": "session=ok"}))
    assert client.messages()[0]["filter"] == {"service": ["orders"]}
    with pytest.raises(AuthError, match="not signed in"):
        hub.admit({})


def test_api_session_and_health_say_what_auth_does():
    off = create_app(Settings()).test_client()
    assert off.get("/api/session").json == {"auth": "off"}
    assert off.get("/health").json["auth"] == "off"
    client = create_app(auth_settings()).test_client()
    assert client.get("/health").json["auth"] == "jwt"
    missing = client.get("/api/session")
    assert missing.status_code == 401 and missing.json == {"error": "no token: send Authorization: Bearer <token>"}
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="logger-service"'
    token = hs256(sub="seller-42", **SELLER)
    ok = client.get("/api/session", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.headers["Cache-Control"] == "no-store"
    assert ok.json["auth"] == "jwt" and ok.json["subject"] == "seller-42"
    assert ok.json["scope"] == {"service": ["orders"], "attributes": {"seller.id": "s-42"}}
    assert client.get(f"/api/session?access_token={token}").json["subject"] == "seller-42"
    # The subprotocol is for WebSockets only.
    assert client.get("/api/session", headers={"Sec-WebSocket-Protocol": f"bearer.{token}"}).status_code == 401
    nothing = client.get("/api/session", headers={"Authorization": f"Bearer {hs256()}"})
    assert nothing.status_code == 403 and 'error="insufficient_scope"' in nothing.headers["WWW-Authenticate"]


def test_create_app_takes_a_custom_authorize():
    app = create_app(Settings(), authorize=lambda environ: Grant("u", None))
    client = app.test_client()
    assert client.get("/api/session").json == {"auth": "custom", "subject": "u", "expires_at": None, "scope": "all"}
    assert client.get("/health").json["auth"] == "custom"


def test_the_start_up_warning_when_auth_is_off(caplog):
    from logger.service import LogService
    service = LogService(Settings(tail_enabled=False, forward_enabled=False))
    with caplog.at_level("WARNING", logger="logger.service"):
        service.start()
    service.stop(timeout=1)
    lines = [r.getMessage() for r in caplog.records if "authentication is off" in r.getMessage()]
    assert len(lines) == 1
    assert LogService(auth_settings()).auth_mode == "jwt"


def test_the_readmes_flask_session_authorize_example_works_for_ws_and_api_session():
    """The README's create_app(authorize=...) example, as written there."""
    from flask import session

    from logger.app import service_of
    from logger.filters import EVERYTHING

    # -- as in the README --------------------------------------------------------------
    def authorize(environ):
        # Runs before the 101, below Flask: open the session from the upgrade's cookie.
        with app.request_context(environ):
            user = session.get("user")
        if user is None:
            raise AuthError("not signed in")  # 401; AuthError.forbidden(...) is a 403
        if user["role"] == "admin":
            return Grant(subject=user["id"], expires_at=None, scope=EVERYTHING)
        return Grant(subject=user["id"], expires_at=None,
                     scope=Filter(attributes=(("seller.id", str(user["seller_id"])),)))

    app = create_app(Settings.from_env({}), authorize=authorize)
    app.secret_key = "test-only-secret"
    # ------------------------------------------------------------------------------------
    client = app.test_client()
    assert client.get("/api/session").status_code == 401
    with client.session_transaction() as s:
        s["user"] = {"id": "seller-42", "role": "seller", "seller_id": 42}
    assert client.get("/api/session").json == {"auth": "custom", "subject": "seller-42", "expires_at": None,
                                                "scope": {"attributes": {"seller.id": "42"}}}
    cookie = client.get_cookie("session")
    hub = service_of(app).hub
    from werkzeug.test import EnvironBuilder
    environ = EnvironBuilder(path="/ws", headers={"Cookie": f"session={cookie.value}"}).get_environ()
    ws = FakeClient()
    hub.attach(ws, hub.admit(environ))
    assert ws.messages()[0]["filter"] == {"attributes": {"seller.id": "42"}}
    with pytest.raises(AuthError, match="not signed in"):
        hub.admit(EnvironBuilder(path="/ws").get_environ())
