"""Authenticated, scoped /ws against the real service (issue 14): real Gunicorn, a JWKS served
over HTTP on 127.0.0.1, keys made with ``cryptography``.

Every refusal the issue names, before the 101; the three token transports and the
``logger.v1`` answer; the scope ANDed at connect, on subscribe and in replay; expiry
(1008 "token expired") and the ``auth`` refresh that keeps a connection, or is refused
when it would widen; a key rotation in the middle of a test; a hanging JWKS that must
not stall connected clients; tokens kept out of every log line.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
import requests
import websocket

from devstack.service import ServiceProcess
from tests.auth_keys import AUDIENCE, ISSUER, SECRET, JwksServer, KeyPair, hs256, hs256_with_public_key, tampered, \
    unsigned
from tests.conftest import LiveClient, metric, produce, readers_ok, scrape

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "ws-protocol.schema.json").read_text())
SELLER_42 = {"logs.services": ["orders"], "seller_id": "s-42"}
SELLER_7 = {"logs.services": ["orders"], "seller_id": "s-7"}
ADMIN = {"logs.all": True}


@pytest.fixture(scope="module")
def keys() -> dict[str, KeyPair]:
    return {alg: KeyPair.make(alg, f"{alg}-{uuid.uuid4().hex[:6]}") for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture(scope="module")
def jwks(keys):
    with JwksServer(*keys.values()) as server:
        yield server


def auth_env(jwks: JwksServer, **extra: str) -> dict[str, str]:
    return {"AUTH_JWKS_URL": jwks.url, "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE,
            "AUTH_JWT_SECRET": SECRET, "AUTH_ATTRIBUTE_CLAIMS": "seller.id=seller_id", "AUTH_LEEWAY_S": "0",
            "FORWARD_ENABLED": "false", "ACCESS_LOG": "true", **extra}


@pytest.fixture(scope="module")
def secured(kafka, jwks, tmp_path_factory):
    """One service for the module (starting Gunicorn per test would dominate its time)."""
    topic = f"logs-auth-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 1)
    proc = ServiceProcess({"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": topic,
                           "KAFKA_GROUP_ID": f"group-{topic}", **auth_env(jwks)},
                          log_dir=tmp_path_factory.mktemp("auth"))
    try:
        proc.start(ready=readers_ok)
        proc.topic = topic  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.stop()


def records_for(run: str, sellers: list[str], start: int = 0, service: str = "orders") -> list[bytes]:
    return [json.dumps({"run": run, "seq": start + i, "service": service, "level": "info",
                        "message": f"order {start + i}", "seller": {"id": seller}}).encode()
            for i, seller in enumerate(sellers)]


def bearer(token: str) -> dict:
    return {"header": [f"Authorization: Bearer {token}"]}


def refused(url: str, **options) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as caught:
        websocket.create_connection(url, timeout=10, suppress_origin=True, **options)
    return caught.value


def wait_message(client: LiveClient, kind: str, after: int = 0, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in list(client.messages)[after:]:
            if message["type"] == kind:
                return message
        time.sleep(0.02)
    raise TimeoutError(f"no {kind!r} message; got {[m['type'] for m in client.messages]}")


def assert_valid(*clients: LiveClient) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for client in clients:
        for message in client.messages:
            validator.validate(message)


def test_every_refusal_comes_before_the_101_with_www_authenticate(secured, keys):
    rsa, ec = keys["RS256"], keys["ES256"]
    cases = [
        ({}, 401, None, "no token: send Authorization: Bearer <token>"),
        (bearer(rsa.token(ttl=-30, **SELLER_42)), 401, "invalid_token", "token expired"),
        (bearer(rsa.token(nbf=int(time.time()) + 300, **SELLER_42)), 401, "invalid_token", "token not yet valid"),
        (bearer(rsa.token(iss="https://evil.test/", **SELLER_42)), 401, "invalid_token", "wrong issuer"),
        (bearer(ec.token(aud="another-app", **SELLER_42)), 401, "invalid_token", "wrong audience"),
        (bearer(unsigned(**ADMIN)), 401, "invalid_token", "algorithm 'none' not allowed"),
        (bearer(hs256_with_public_key(rsa, **ADMIN)), 401, "invalid_token", "bad signature"),
        (bearer(rsa.token(kid="no-such-key", **SELLER_42)), 401, "invalid_token", "unknown key id"),
        (bearer(tampered(ec.token(**SELLER_42), seller_id="s-7")), 401, "invalid_token", "bad signature"),
        (bearer(tampered(rsa.token(**SELLER_42), **ADMIN)), 401, "invalid_token", "bad signature"),
        (bearer(hs256("a-different-secret-of-32-characters-or-more", **ADMIN)), 401, "invalid_token",
         "bad signature"),
        ({"header": ["Authorization: Basic dXNlcjpwYXNz"]}, 401, "invalid_token",
         "Authorization must be: Bearer <token>"),
        (bearer(rsa.token()), 403, "insufficient_scope", "token grants no logs (no scope claim)"),
    ]
    for options, status, error, reason in cases:
        exc = refused(secured.ws_url, **options)
        assert exc.status_code == status, reason
        challenge = exc.resp_headers["www-authenticate"]
        if error is None:
            assert challenge == 'Bearer realm="logger-service"'
        else:
            assert challenge == f'Bearer realm="logger-service", error="{error}", error_description="{reason}"'
        assert exc.resp_headers["content-type"] == "application/json"
        assert json.loads(exc.resp_body) == {"error": reason}
    # Asking for what the scope excludes: 403 too.
    exc = refused(secured.ws_url + "?service=billing", **bearer(rsa.token(**SELLER_42)))
    assert exc.status_code == 403 and "none of the services" in json.loads(exc.resp_body)["error"]
    assert metric(scrape(secured), "logger_http_refused_total", reason="auth") >= len(cases) + 1
    assert secured.health()["hub"]["refused_auth"] >= len(cases) + 1


def test_three_transports_and_the_subprotocol_answer(secured, keys, ws_client, kafka):
    token = keys["EdDSA"].token(sub="seller-42", **SELLER_42)
    by_header = ws_client(secured.ws_url, **bearer(token))
    by_protocol = ws_client(secured.ws_url, subprotocols=["logger.v1", f"bearer.{token}"])
    by_query = ws_client(f"{secured.ws_url}?access_token={token}")
    assert by_protocol.ws.getsubprotocol() == "logger.v1"
    assert by_protocol.ws.getheaders()["sec-websocket-protocol"] == "logger.v1", "never the token"
    assert by_header.ws.getsubprotocol() is None
    for client in (by_header, by_protocol, by_query):
        hello = wait_message(client, "hello")
        assert hello["auth"]["subject"] == "seller-42"
        assert hello["filter"] == {"service": ["orders"], "attributes": {"seller.id": "s-42"}}
    # Auth off or on, a browser that offers logger.v1 without a token gets it answered; with auth on, 401.
    assert refused(secured.ws_url, subprotocols=["logger.v1"]).status_code == 401
    run = uuid.uuid4().hex[:8]
    produce(kafka, secured.topic, records_for(run, ["s-42", "s-7", "s-42"]))
    for client in (by_header, by_protocol, by_query):
        got = client.wait_records(2, where=lambda r: r["attributes"].get("run") == run)
        assert [r["attributes"]["seq"] for r in got] == [0, 2]
    assert_valid(by_header, by_protocol, by_query)


def test_scope_holds_at_connect_on_subscribe_and_in_tail_and_since_replay(secured, keys, ws_client, kafka):
    rsa = keys["RS256"]
    run = uuid.uuid4().hex[:8]
    mine = lambda r: r["attributes"].get("run") == run  # noqa: E731
    admin = ws_client(secured.ws_url, **bearer(rsa.token(sub="admin", **ADMIN)))
    seller = ws_client(secured.ws_url, **bearer(rsa.token(sub="s42", **SELLER_42)))
    other = ws_client(secured.ws_url, **bearer(rsa.token(sub="s7", **SELLER_7)))
    assert wait_message(admin, "hello")["auth"]["scope"] == "all"
    sellers = ["s-42", "s-7"] * 10
    produce(kafka, secured.topic, records_for(run, sellers) + records_for(run, ["s-42"], 20, service="billing"))
    assert len(admin.wait_records(21, where=mine)) == 21
    assert [r["attributes"]["seq"] for r in seller.wait_records(10, where=mine)] == list(range(0, 20, 2))
    assert [r["attributes"]["seq"] for r in other.wait_records(10, where=mine)] == list(range(1, 20, 2))

    # subscribe to "everything", to another seller, to another service: never wider than the scope.
    before = len(seller.messages)
    seller.ws.send(json.dumps({"type": "subscribe"}))
    assert wait_message(seller, "subscribed", before)["filter"] == \
        {"service": ["orders"], "attributes": {"seller.id": "s-42"}}
    for ask in ({"type": "subscribe", "attributes": {"seller.id": "s-7"}},
                {"type": "subscribe", "service": "billing"}):
        before = len(seller.messages)
        seller.ws.send(json.dumps(ask))
        assert wait_message(seller, "error", before)
    # ?tail= and ?since= replay only what the scope allows.
    tail = ws_client(secured.ws_url + "?tail=1000", **bearer(rsa.token(**SELLER_42)))
    position = wait_message(admin, "hello")["positions"][0]
    topic, partition, _ = position.split(":")
    since = ws_client(f"{secured.ws_url}?since={topic}:{partition}:0", **bearer(rsa.token(**SELLER_7)))
    assert [r["attributes"]["seq"] for r in tail.wait_records(10, where=mine)] == list(range(0, 20, 2))
    assert [r["attributes"]["seq"] for r in since.wait_records(10, where=mine)] == list(range(1, 20, 2))
    # Nothing else arrived. One partition, in order, and a client's frames come in the order
    # the hub sends them: once a client has a record produced after the others' records, any
    # of theirs sent to it would be there already. An s-7 record (100) closes the s-7 clients'
    # stream, an s-42 one (101) the s-42 clients'.
    produce(kafka, secured.topic, records_for(run, ["s-7", "s-42"], 100))
    admin.wait_records(23, where=mine)
    for clients, last in (((seller, tail), 101), ((other, since), 100)):
        for client in clients:
            client.wait_records(1, where=lambda r, last=last: mine(r) and r["attributes"]["seq"] == last)
    assert all(r["attributes"]["seller"]["id"] == "s-42" and r["service"] == "orders"
               for r in seller.records() + tail.records() if mine(r))
    assert all(r["attributes"]["seller"]["id"] == "s-7" for r in other.records() + since.records() if mine(r))
    assert_valid(admin, seller, other, tail, since)


def test_expiry_closes_1008_unless_refreshed_and_a_widening_refresh_is_refused(secured, keys, ws_client, kafka):
    ec = keys["ES256"]
    ttl = 3
    lapsing = ws_client(secured.ws_url, **bearer(ec.token(sub="s42", ttl=ttl, **SELLER_42)))
    refreshed = ws_client(secured.ws_url, **bearer(ec.token(sub="s42", ttl=ttl, **SELLER_42)))
    hello = wait_message(refreshed, "hello")
    # A wider token (admin) is refused, and the connection keeps its old token.
    before = len(refreshed.messages)
    refreshed.ws.send(json.dumps({"type": "auth", "token": ec.token(sub="s42", **ADMIN)}))
    assert wait_message(refreshed, "error", before)["error"] == \
        "auth refused: the new token's scope is wider than this connection's"
    before = len(refreshed.messages)
    refreshed.ws.send(json.dumps({"type": "auth", "token": ec.token(sub="s42", ttl=600, **SELLER_42)}))
    answer = wait_message(refreshed, "authenticated", before)
    assert answer["expires_at"] > hello["auth"]["expires_at"] + 500
    assert answer["scope"] == {"service": ["orders"], "attributes": {"seller.id": "s-42"}}
    assert lapsing.wait_closed(timeout=ttl + 5) == 1008 and lapsing.close_reason == "token expired"
    assert metric(scrape(secured), "logger_ws_closed_total", reason="token_expired") >= 1
    run = uuid.uuid4().hex[:8]
    produce(kafka, secured.topic, records_for(run, ["s-42", "s-7"]))
    assert [r["attributes"]["seq"] for r in
            refreshed.wait_records(1, where=lambda r: r["attributes"].get("run") == run)] == [0]
    assert refreshed.close_code is None
    assert_valid(refreshed, lapsing)


def test_a_key_rotation_in_the_middle_is_picked_up_by_a_rate_limited_refresh(secured, jwks, keys, ws_client):
    old = keys["RS256"]
    before_rotation = ws_client(secured.ws_url, **bearer(old.token(**SELLER_42)))
    wait_message(before_rotation, "hello")
    new = KeyPair.make("RS256", f"rotated-{uuid.uuid4().hex[:6]}")
    jwks.keys = [*jwks.keys, new]  # the identity provider publishes its next key
    fetches = jwks.fetches
    deadline = time.monotonic() + 30
    attempts = 0
    while True:
        attempts += 1
        try:
            client = ws_client(secured.ws_url, **bearer(new.token(sub="rotated", **SELLER_42)))
            break
        except websocket.WebSocketBadStatusException as exc:
            assert exc.status_code == 401 and json.loads(exc.resp_body) == {"error": "unknown key id"}
            assert time.monotonic() < deadline, "the new key was never fetched"
            time.sleep(0.5)
    assert wait_message(client, "hello")["auth"]["subject"] == "rotated"
    # However many unknown-kid upgrades there were, the JWKS was fetched at most once per 10 s.
    assert jwks.fetches - fetches <= 2, (attempts, jwks.fetches - fetches)
    assert refused(secured.ws_url, **bearer(KeyPair.make("ES256", "never").token(**SELLER_42))).status_code == 401
    assert before_rotation.close_code is None, "connected clients are untouched by a rotation"


def test_no_token_in_any_log_line_and_session_and_health(secured, keys, ws_client):
    token = keys["RS256"].token(sub="logged", **SELLER_42)
    ws_client(f"{secured.ws_url}?access_token={token}&level=info")
    ws_client(secured.ws_url, subprotocols=["logger.v1", f"bearer.{token}"])
    ws_client(secured.ws_url, **bearer(token))
    refused(f"{secured.ws_url}?access_token={token}x")  # a refused one is logged too
    session = requests.get(f"{secured.url}/api/session?access_token={token}", timeout=5)
    assert session.status_code == 200 and session.json()["subject"] == "logged"
    assert session.json()["scope"] == {"service": ["orders"], "attributes": {"seller.id": "s-42"}}
    assert requests.get(f"{secured.url}/api/session", timeout=5).status_code == 401
    health = requests.get(f"{secured.url}/health?access_token={token}", timeout=5).json()
    assert health["auth"] == "jwt" and token not in json.dumps(health)
    # pywsgi quotes a bad request line in its error log: scrubbed too.
    with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as raw:
        raw.sendall(f"POST /x?access_token={token}\r\n\r\n".encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    signature = token.rsplit(".", 1)[1]
    secured.wait_until(lambda: "Expected GET method" in secured.log_text(), 10, "the error line")
    secured.wait_until(lambda: secured.log_text().count("access_token=<redacted>") >= 4, 10, "the access lines")
    text = secured.log_text()
    assert signature not in text and token.split(".")[1] not in text


def test_a_hanging_jwks_never_stalls_connected_clients(kafka, keys, tmp_path, ws_client):
    topic = f"logs-auth-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 1)
    with JwksServer(keys["RS256"]) as slow:
        proc = ServiceProcess({"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": topic,
                               "KAFKA_GROUP_ID": f"group-{topic}", "LOG_FORMAT": "text",
                               **auth_env(slow, AUTH_JWKS_REFRESH_S="10")},
                              log_dir=tmp_path)
        with proc:
            proc.start(ready=readers_ok)
            connected = ws_client(proc.ws_url, **bearer(keys["RS256"].token(**ADMIN)))
            wait_message(connected, "hello")
            slow.hang.set()  # from now on every fetch hangs (periodic and on unknown kid)
            try:
                time.sleep(0.2)
                started = time.monotonic()
                exc = refused(proc.ws_url, **bearer(keys["ES256"].token(**ADMIN)))  # its kid triggers a fetch
                assert exc.status_code == 401 and time.monotonic() - started < 8
                # Meanwhile and after: the connected client keeps receiving, promptly.
                run = uuid.uuid4().hex[:8]
                for batch in range(5):
                    sent = time.time()
                    produce(kafka, topic, records_for(run, ["s-1"] * 10, batch * 10))
                    connected.wait_records((batch + 1) * 10, timeout=5,
                                           where=lambda r: r["attributes"].get("run") == run)
                    assert connected.received_at[-1] - sent < 3
                # A new client whose key is known connects at once, the fetch still hanging.
                started = time.monotonic()
                token = keys["RS256"].token(**ADMIN)
                late = ws_client(f"{proc.ws_url}?access_token={token}")
                wait_message(late, "hello")
                assert time.monotonic() - started < 4  # a wait for the JWKS would take its 5 s deadline
                proc.wait_until(lambda: "could not refresh the JWKS" in proc.log_text(), 15, "the warning")
                assert slow.fetches >= 2
                # Gunicorn's text access line ("%(r)s": the request line) holds no token either.
                proc.wait_until(lambda: '"GET /ws?access_token=<redacted> HTTP/1.1" 101' in proc.log_text(), 10,
                                "the access line")
                assert token.rsplit(".", 1)[1] not in proc.log_text()
            finally:
                slow.hang.clear()


def test_auth_off_says_so_once_and_in_health(service, topic):
    proc = service(topic(), FORWARD_ENABLED="false")
    assert proc.health()["auth"] == "off"
    assert requests.get(proc.url + "/api/session", timeout=5).json() == {"auth": "off"}
    assert proc.log_text().count("authentication is off") == 1
