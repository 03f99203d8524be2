"""Bearer tokens on the plain HTTP routes (issue 14): ``/metrics`` behind ``METRICS_TOKEN``,
``POST /api/logs`` for JWT writers."""

from __future__ import annotations

import hmac

import orjson
import pytest

from logger import bearer
from logger.app import create_app
from logger.auth import AuthError
from logger.bearer import bearer_token
from logger.config import Settings
from logger.filters import Filter
from logger.ingest import stamped
from logger.records import decode
from logger.service import LogService
from tests.auth_keys import SECRET, hs256, tampered, unsigned

METRICS_TOKEN = "unit-test-metrics-token-0123"


def metrics_client(**env: str):
    return create_app(Settings.from_env(env)).test_client()


def test_without_a_metrics_token_metrics_stay_open():
    response = metrics_client().get("/metrics")
    assert response.status_code == 200 and "logger_ws_clients" in response.get_data(as_text=True)


@pytest.mark.parametrize("authorization, described", [
    (None, None),
    ("Basic dXNlcjpwYXNz", None),  # another scheme is no bearer token at all
    ("Bearer ", None),
    ("Bearer wrong-token-0123456789", "wrong metrics token"),
    (f"Bearer {METRICS_TOKEN[:-1]}", "wrong metrics token"),  # a prefix is not the token
    (f"Bearer {METRICS_TOKEN}x", "wrong metrics token"),
    (f"Bearer {METRICS_TOKEN.upper()}", "wrong metrics token"),
    ("Bearer \u00e9t\u00e9-not-ascii-0123456789", "wrong metrics token"),  # compared as bytes, no TypeError
])
def test_with_a_metrics_token_anyone_without_it_gets_a_401_challenge(authorization, described):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = metrics_client(METRICS_TOKEN=METRICS_TOKEN).get("/metrics", headers=headers)
    assert response.status_code == 401
    expected = AuthError.missing() if described is None else AuthError(described)
    assert response.headers["WWW-Authenticate"] == expected.www_authenticate
    assert response.json["error"] == expected.reason and METRICS_TOKEN not in response.get_data(as_text=True)
    assert "logger_" not in response.get_data(as_text=True)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_metrics_token_opens_metrics_whatever_the_scheme_case(scheme):
    response = metrics_client(METRICS_TOKEN=METRICS_TOKEN).get(
        "/metrics", headers={"Authorization": f"{scheme} {METRICS_TOKEN}"})
    assert response.status_code == 200 and "logger_ws_clients" in response.get_data(as_text=True)


def test_the_metrics_token_is_compared_in_constant_time(monkeypatch):
    compared = []
    real = hmac.compare_digest

    def compare_digest(a, b):
        compared.append((a, b))
        return real(a, b)
    monkeypatch.setattr(bearer.hmac, "compare_digest", compare_digest)
    client = metrics_client(METRICS_TOKEN=METRICS_TOKEN)
    assert client.get("/metrics", headers={"Authorization": "Bearer guess-0123456789abcdef"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
    assert compared == [(b"guess-0123456789abcdef", METRICS_TOKEN.encode()),
                        (METRICS_TOKEN.encode(), METRICS_TOKEN.encode())]


def test_other_routes_do_not_need_the_metrics_token():
    client = metrics_client(METRICS_TOKEN=METRICS_TOKEN)
    assert client.get("/").status_code == 200 and client.get("/health").status_code == 200


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Bearer", None), ("Token abc", None), ("", None), (None, None),
])
def test_bearer_token_reads_only_the_bearer_scheme(header, token):
    assert bearer_token(header) == token


# -- POST /api/logs with a JWT writer ------------------------------------------------------------

INGEST_TOKEN = "unit-test-ingest-token-0123"


def ingest_client(monkeypatch, published: list, **env: str):
    settings = Settings.from_env({"AUTH_JWT_SECRET": SECRET, **env})
    service = LogService(settings)
    monkeypatch.setattr(service, "publish", lambda records: published.append(records) or len(records))
    return create_app(settings, service).test_client()


def post(client, body, token: str | None):
    return client.post("/api/logs", json=body, headers={"Authorization": f"Bearer {token}"} if token else {})


def test_a_jwt_writer_may_post_and_its_records_say_who_sent_them(monkeypatch):
    published: list = []
    client = ingest_client(monkeypatch, published, INGEST_TOKEN=INGEST_TOKEN)
    writer = hs256(sub="orders-service", **{"logs.write": True})  # no read scope: writing needs none
    response = post(client, [{"message": "paid", "order": 7}, "plain text",
                             {"message": "spoof", "enduser.id": "someone-else"},
                             {"message": "nested spoof", "enduser": {"id": "someone-else", "role": "x"}}], writer)
    assert (response.status_code, response.json) == (202, {"accepted": 4})
    assert published == [[{"message": "paid", "order": 7, "enduser.id": "orders-service"},
                          {"message": "plain text", "enduser.id": "orders-service"},
                          {"message": "spoof", "enduser.id": "orders-service"},
                          {"message": "nested spoof", "enduser": {"role": "x"}, "enduser.id": "orders-service"}]]
    assert stamped({"enduser": {"id": "x"}}, "w") == {"enduser.id": "w"}, "an emptied enduser object goes"
    # The INGEST_TOKEN still works, and its records are published as sent.
    assert post(client, {"message": "as is", "enduser.id": "kept"}, INGEST_TOKEN).status_code == 202
    assert published[-1] == [{"message": "as is", "enduser.id": "kept"}]


def test_the_stamp_is_what_clients_and_filters_see():
    record = decode(orjson.dumps(stamped({"message": "m", "service": "orders"}, "writer-1")), topic="t",
                    partition=0, offset=0)
    assert record.attributes == {"enduser.id": "writer-1"}
    assert Filter.from_query({"attr.enduser.id": ["writer-1"]}).matches(record)


@pytest.mark.parametrize("claims", [
    {"logs.write": True, "logs": {"write": False}},  # the flat claim wins, as for every claim
    {"logs": {"write": True}},  # nested, as identity providers often write it
])
def test_the_write_claim_is_read_flat_or_nested(monkeypatch, claims):
    published: list = []
    assert post(ingest_client(monkeypatch, published), {"message": "m"}, hs256(**claims)).status_code == 202


@pytest.mark.parametrize("claims, reason", [
    ({"seller_id": "s-1"}, "logs.write claim is not true"),  # a reader
    ({"logs.all": True}, "logs.write claim is not true"),  # even an admin reader
    ({"logs.write": "true"}, "logs.write claim is not true"),  # a string is not true
    ({"logs.write": 1}, "logs.write claim is not true"),
    ({"logs.write": True, "sub": None}, "no sub claim"),  # whose records would they be?
    ({"logs.write": True, "sub": ""}, "no sub claim"),
])
def test_a_valid_token_that_may_not_write_gets_403(monkeypatch, claims, reason):
    published: list = []
    response = post(ingest_client(monkeypatch, published, INGEST_TOKEN=INGEST_TOKEN), {"message": "m"},
                    hs256(**claims))
    assert response.status_code == 403 and reason in response.json["error"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert published == []


@pytest.mark.parametrize("token, reason", [
    (hs256(secret="another-secret-of-at-least-32-characters", **{"logs.write": True}), "bad signature"),
    (hs256(ttl=-120, **{"logs.write": True}), "token expired"),  # past the 30 s leeway
    (unsigned(**{"logs.write": True}), "not allowed"),
    (tampered(hs256(sub="reader", seller_id="s-1"), **{"logs.write": True}), "bad signature"),
    ("not-the-ingest-token-nor-a-jwt", "malformed token"),
])
def test_a_bad_token_gets_401(monkeypatch, token, reason):
    published: list = []
    response = post(ingest_client(monkeypatch, published, INGEST_TOKEN=INGEST_TOKEN), {"message": "m"}, token)
    assert response.status_code == 401 and reason in response.json["error"]
    assert response.headers["WWW-Authenticate"] == AuthError(response.json["error"]).www_authenticate
    assert published == []


def test_no_token_gets_a_401_challenge_without_an_error(monkeypatch):
    response = post(ingest_client(monkeypatch, []), {"message": "m"}, None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == AuthError.missing().www_authenticate


def test_the_write_claim_is_configurable(monkeypatch):
    client = ingest_client(monkeypatch, [], AUTH_WRITE_CLAIM="ingest:allowed")
    assert post(client, {"message": "m"}, hs256(**{"ingest:allowed": True})).status_code == 202
    refused = post(client, {"message": "m"}, hs256(**{"logs.write": True}))
    assert refused.status_code == 403 and "ingest:allowed" in refused.json["error"]


@pytest.mark.parametrize("env, mounted", [
    ({}, False),
    ({"INGEST_TOKEN": INGEST_TOKEN}, True),
    ({"AUTH_JWT_SECRET": SECRET}, True),  # JWT writers alone
    ({"INGEST_TOKEN": INGEST_TOKEN, "AUTH_JWT_SECRET": SECRET}, True),
])
def test_the_ingest_route_exists_when_either_kind_of_writer_is_configured(env, mounted):
    client = create_app(Settings.from_env(env)).test_client()
    status = client.post("/api/logs", json={"message": "m"}).status_code
    assert status == (401 if mounted else 404)


def test_with_only_an_ingest_token_a_wrong_one_is_refused_without_trying_a_jwt(monkeypatch):
    settings = Settings.from_env({"INGEST_TOKEN": INGEST_TOKEN})
    response = create_app(settings).test_client().post(
        "/api/logs", json={"message": "m"}, headers={"Authorization": f"Bearer {hs256(**{'logs.write': True})}"})
    assert response.status_code == 401 and response.json["error"] == "wrong ingest token"


# -- /health: no tenant data ---------------------------------------------------------------------

def test_health_shows_no_tenant_data_whatever_flowed_through(monkeypatch):
    """Audit of /health (issue 14): it is read by load balancers without a token, so no client
    filter, subject, token, scope value or record content may appear in it. Everything a tenant
    causes below goes through the service, then /health is searched for each of those strings."""
    from tests.unit.test_filters_replay import FakeClient
    published: list = []
    client = ingest_client(monkeypatch, published, AUTH_ATTRIBUTE_CLAIMS="seller.id=seller_id")
    service = client.application.extensions["logger_service"]
    token = hs256(sub="subject-alice", seller_id="seller-secret-7")
    environ = {"QUERY_STRING": "attr.seller.id=seller-secret-7&q=needle-word&tail=10",
               "HTTP_AUTHORIZATION": f"Bearer {token}"}
    viewer = FakeClient()
    service.hub.attach(viewer, service.hub.admit(environ))
    values = [orjson.dumps({"message": "card needle-word 4111-secret", "seller": {"id": "seller-secret-7"},
                            "customer": "customer-bob", "needle-word": 1}), b"not json: customer-carol"]
    records = [decode(v, topic="logs", partition=0, offset=i) for i, v in enumerate(values)]
    service.hub.broadcast(records)
    service.tail.count("records_in", 2)
    service.tail.count("records_malformed")
    viewer.on_text(viewer, '{"type":"subscribe","attributes":{"seller.id":"seller-secret-7"},"q":"needle-word"}')
    writer = hs256(sub="writer-dave", **{"logs.write": True})
    assert post(client, {"message": "from dave: order-secret-9"}, writer).status_code == 202
    assert viewer.offsets() == [0], "the client was there and got its record"

    body = client.get("/health").get_data(as_text=True)
    assert orjson.loads(body)["hub"]["connections"] == 1
    for tenant_data in ("seller-secret-7", "subject-alice", "needle-word", "4111-secret", "customer-bob",
                        "customer-carol", "writer-dave", "order-secret-9", token, writer):
        assert tenant_data not in body
