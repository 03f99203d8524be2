"""Pure checks behind the hardening of issue 12: handshake, origins, query, regex, ingest, settings."""

from __future__ import annotations

import base64
import os
import threading

import pytest

from logger.app import create_app
from logger.config import Settings
from logger.errors import ConfigError
from logger.filters import Filter, FilterError
from logger.handshake import HandshakeError, check_upgrade, valid_key, wants_websocket
from logger.hub import Refusal, Subscription, own_page
from logger.memory import release_freed_memory

ALLOWED = ("localhost", "127.0.0.1", "[::1]")


def upgrade(**headers: str) -> dict[str, str]:
    environ = {"REQUEST_METHOD": "GET", "HTTP_HOST": "localhost:6006", "HTTP_UPGRADE": "websocket",
               "HTTP_CONNECTION": "Upgrade", "HTTP_SEC_WEBSOCKET_VERSION": "13",
               "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode()}
    environ.update(headers)
    return environ


def test_a_valid_handshake_passes_with_token_lists():
    check_upgrade(upgrade(HTTP_CONNECTION="keep-alive, Upgrade", HTTP_UPGRADE="WebSocket"), "HTTP/1.1")
    assert wants_websocket(upgrade(HTTP_UPGRADE="h2c, websocket"))
    assert not wants_websocket(upgrade(HTTP_UPGRADE="notwebsocket"))


@pytest.mark.parametrize("headers, version, status", [
    ({"HTTP_CONNECTION": "notupgradeatall"}, "HTTP/1.1", "400"),
    ({"HTTP_CONNECTION": ""}, "HTTP/1.1", "400"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, "HTTP/1.1", "426"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": ""}, "HTTP/1.1", "426"),
    ({"HTTP_SEC_WEBSOCKET_KEY": "not base64 at all!!!!!!!"}, "HTTP/1.1", "400"),
    ({"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"x" * 15).decode()}, "HTTP/1.1", "400"),
    ({"HTTP_SEC_WEBSOCKET_KEY": ""}, "HTTP/1.1", "400"),
    ({"HTTP_HOST": ""}, "HTTP/1.1", "400"),
    ({"REQUEST_METHOD": "POST"}, "HTTP/1.1", "400"),
    ({}, "HTTP/1.0", "400"),
])
def test_handshakes_rfc_6455_does_not_allow_are_refused_with_4xx(headers, version, status):
    with pytest.raises(HandshakeError) as refused:
        check_upgrade(upgrade(**headers), version)
    assert refused.value.status.startswith(status)
    if status == "426":
        assert ("Sec-WebSocket-Version", "13") in refused.value.headers


def test_keys_are_sixteen_bytes_of_strict_base64():
    assert valid_key(base64.b64encode(os.urandom(16)).decode())
    assert not valid_key("dGhlIHNhbXBsZSBub25jZQ")  # padding missing
    assert not valid_key("dGhlIHNhbXBsZSBub25jZQ=²")


@pytest.mark.parametrize("origin, host, scheme, allowed", [
    ("http://localhost:6006", "localhost:6006", "http", True),
    ("http://127.0.0.1:6006", "127.0.0.1:6006", "http", True),
    ("http://[::1]:6006", "[::1]:6006", "http", True),
    ("https://logs.example.com", "logs.example.com", "https", False),  # not listed
    ("http://attacker.example:6006", "attacker.example:6006", "http", False),  # DNS rebinding
    ("https://localhost:6006", "localhost:6006", "http", False),  # another scheme
    ("http://localhost:8080", "localhost:6006", "http", False),  # another port: another service
    ("http://localhost", "localhost:80", "http", True),  # default port either way
    ("http://localhost:6006", "", "http", False),
    ("http://localhost:notaport", "localhost:6006", "http", False),
    ("null", "localhost:6006", "http", False),
])
def test_only_pages_of_the_service_itself_under_an_allowed_name_count_as_its_own(origin, host, scheme, allowed):
    assert own_page(origin, {"HTTP_HOST": host, "wsgi.url_scheme": scheme}, ALLOWED) is allowed


def test_behind_a_tls_proxy_the_public_name_is_allowed():
    environ = {"HTTP_HOST": "logs.example.com", "wsgi.url_scheme": "https"}
    assert own_page("https://logs.example.com", environ, ("logs.example.com",))
    assert not own_page("http://logs.example.com", environ, ("logs.example.com",))


@pytest.mark.parametrize("tail", ["²", "1" * 5000, "-1", "1e3", "٣"])
def test_a_tail_that_is_not_a_small_ascii_number_is_a_400(tail):
    with pytest.raises(Refusal) as refused:
        Subscription.from_query_string(f"tail={tail}", 5000)
    assert refused.value.status.startswith("400")


def test_regex_runs_in_linear_time_and_backtracking_features_are_refused():
    catastrophic = Filter.build(level=None, services=[], text=None, regex="(a+)+$", attributes={})
    done = threading.Event()

    def search() -> None:
        catastrophic.regex.search("a" * 100_000 + "b")
        done.set()
    threading.Thread(target=search, daemon=True).start()
    assert done.wait(10), "a nested quantifier must not backtrack"
    for pattern in ("(a)\\1", "(?<=a)b", "(?=a)", "(x{1000}){1000}"):
        with pytest.raises(FilterError):
            Filter.build(level=None, services=[], text=None, regex=pattern, attributes={})


def test_a_pattern_re2_cannot_run_is_refused_before_the_upgrade():
    with pytest.raises(Refusal) as refused:
        Subscription.from_query_string("regex=(a)%5C1", 5000)
    assert refused.value.status.startswith("400")


def test_deeply_nested_json_to_ingest_is_a_400():
    app = create_app(Settings(ingest_token="t" * 20))
    response = app.test_client().post("/api/logs", data=b"[" * 100_000 + b"]" * 100_000,
                                      headers={"Authorization": "Bearer " + "t" * 20,
                                               "Content-Type": "application/json"})
    assert response.status_code == 400


@pytest.mark.parametrize("name, value", [
    ("ALLOWED_HOSTS", "logs.example.com:443"), ("WS_MAX_FRAGMENTS", "0"), ("HTTP_HEAD_TIMEOUT_S", "0"),
    ("HTTP_BODY_TIMEOUT_S", "nan"), ("HTTP_MAX_HEADER_BYTES", "10"),
])
def test_bad_bounds_stop_start_up_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_the_bounds_have_their_documented_defaults():
    settings = Settings.from_env({})
    assert settings.allowed_hosts == ALLOWED
    assert (settings.max_fragments, settings.http_head_timeout_s, settings.http_body_timeout_s,
            settings.http_max_header_bytes) == (128, 10, 30, 32 << 10)


def test_freed_memory_can_be_handed_back_on_glibc():
    assert release_freed_memory() in (True, False)
    if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or os.path.exists("/lib/aarch64-linux-gnu/libc.so.6"):
        assert release_freed_memory(), "glibc has malloc_trim"


def test_new_regexes_share_a_compile_budget_and_known_ones_are_cached(monkeypatch):
    from logger import filters
    compiler = filters._RegexCompiler()
    assert compiler.compile("a+") is compiler.compile("a+")
    monkeypatch.setattr(filters, "REGEX_COMPILE_BUDGET_S", 0.0)
    compiler._allowance = 0.0  # the budget is spent
    with pytest.raises(FilterError, match="try again"):
        compiler.compile("b+")
    assert compiler.compile("a+") is not None, "a cached pattern costs nothing"


def test_the_scheme_behind_a_proxy_comes_from_x_forwarded_proto_of_trusted_proxies_only():
    import ipaddress

    from logger.gunicorn_worker import _client_address_behind_proxies
    trusted = (ipaddress.ip_network("127.0.0.1/32"),)
    via_proxy = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_PROTO": "https", "wsgi.url_scheme": "http"}
    _client_address_behind_proxies(via_proxy, trusted)
    assert via_proxy["wsgi.url_scheme"] == "https"
    direct = {"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_PROTO": "https", "wsgi.url_scheme": "http"}
    _client_address_behind_proxies(direct, trusted)
    assert direct["wsgi.url_scheme"] == "http", "anyone can write the header: it counts from a trusted proxy only"


def test_distinct_regex_filters_per_worker_are_capped():
    from tests.unit.test_filters_replay import FakeClient

    from logger.hub import Hub
    hub = Hub(Settings(max_regex_filters=2))
    clients = []
    for pattern in ("a%2B", "b%2B"):  # a+, b+
        subscription = hub.admit({"QUERY_STRING": f"regex={pattern}"})
        clients.append(FakeClient())
        hub.attach(clients[-1], subscription)
    with pytest.raises(Refusal) as refused:
        hub.admit({"QUERY_STRING": "regex=c%2B"})
    assert refused.value.status.startswith("503")
    hub.admit({"QUERY_STRING": "regex=a%2B"})  # an existing one costs nothing more
    hub.admit({"QUERY_STRING": "level=warn"})  # no regex: no limit
    first = clients[0]
    first.on_text(first, '{"type":"subscribe","regex":"d+"}')  # alone in its group: it may move
    assert first.messages()[-1]["type"] == "subscribed"
    second = FakeClient()
    hub.attach(second)
    second.on_text(second, '{"type":"subscribe","regex":"e+"}')
    assert second.messages()[-1]["type"] == "error" and "regular expressions" in second.messages()[-1]["error"]
    first.on_close(first)  # its group goes, and with it the place
    second.on_text(second, '{"type":"subscribe","regex":"e+"}')
    assert second.messages()[-1]["type"] == "subscribed"
