"""Bearer tokens on the plain HTTP routes (issue 14): ``/metrics`` behind ``METRICS_TOKEN``."""

from __future__ import annotations

import hmac

import pytest

from logger import bearer
from logger.app import create_app
from logger.auth import AuthError
from logger.bearer import bearer_token
from logger.config import Settings

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
