"""End to end behind nginx: the shipped ``deploy/nginx.conf`` in front of the real service.

nginx runs the shipped file with only ports, paths, the user and (for the
keepalive tests) the /ws ``proxy_read_timeout`` changed -- see
``devstack/nginx.py``. The service is the real one under Gunicorn, wired to
the session's real Kafka and collector (fixtures in ``tests/conftest.py``).
What nginx sends upstream (forwarded headers, keepalive) is checked against a
small recording upstream instead, which can show the raw request.
"""

from __future__ import annotations

import base64
import difflib
import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devstack.kafka import KafkaBroker
from devstack.nginx import (
    MARKERS,
    SHIPPED_CONFIG,
    Nginx,
    check_config,
    nginx_binary,
    path_replacements,
    render_config,
)
from devstack.ports import free_port
from devstack.service import ROOT, ServiceProcess
from devstack.waiting import wait_until
from tests.conftest import produce
from tests.wsload import handshake

pytestmark = pytest.mark.requires(
    nginx_binary() is not None,
    reason="nginx binary not found: these tests run the real nginx (CI installs it; apt-get install nginx)")

ALLOWED_ORIGIN = "http://localhost:3000"  # FRONTEND_URL's default
FOREIGN_ORIGIN = "http://evil.example"


@dataclass
class Stack:
    kafka: KafkaBroker
    topic: str
    service: ServiceProcess
    nginx: Nginx


@pytest.fixture
def behind_nginx(kafka: KafkaBroker, service: Callable[..., ServiceProcess], topic: Callable[..., str],
                 tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Factory: a fresh topic, the service on it (extra env as keywords), and nginx in front."""
    started: list[Nginx] = []

    def start(*, read_timeout: str = "60s", **env: str) -> Stack:
        name = topic()
        svc = service(name, **env)
        proxy = Nginx(svc.port, read_timeout=read_timeout, workdir=tmp_path / f"nginx-{len(started)}")
        started.append(proxy)
        proxy.start()
        return Stack(kafka, name, svc, proxy)

    yield start
    for proxy in started:  # before the service fixture stops Gunicorn
        proxy.stop()


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def logs(count: int, tag: str) -> list[bytes]:
    return [json.dumps({"level": "info", "service": "e2e", "message": f"{tag}-{i}"}).encode()
            for i in range(count)]


def ws_access_line(proxy: Nginx) -> str | None:
    """nginx's access-log line of the (ended) WebSocket, if any."""
    lines = [line for line in proxy.access_log_text().splitlines() if '"GET /ws HTTP/1.1" 101 ' in line]
    return lines[-1] if lines else None


wait_for = wait_until


# -- the shipped file ----------------------------------------------------------------


def test_shipped_config_is_valid(tmp_path: Path) -> None:
    """``nginx -t`` accepts deploy/nginx.conf with only pid, log and temp paths moved to a tmp folder.

    (``nginx -t`` binds no ports, so ``listen 80`` and the upstream stay as shipped.)
    """
    config = tmp_path / "nginx.conf"
    config.write_text(render_config(SHIPPED_CONFIG.read_text(), path_replacements(tmp_path)))
    result = check_config(config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr, result.stderr


def test_harness_changes_only_the_marker_lines(tmp_path: Path) -> None:
    """The e2e tests run the shipped config: every line the harness touches is one of its markers."""
    shipped = SHIPPED_CONFIG.read_text().splitlines()
    rendered = Nginx(6006, read_timeout="2s", workdir=tmp_path).render().splitlines()
    diff = list(difflib.ndiff(shipped, rendered))
    removed = [line[2:].strip() for line in diff if line.startswith("- ")]
    added = [line[2:].strip() for line in diff if line.startswith("+ ")]
    assert removed and set(removed) <= {m.line for m in MARKERS.values()}, removed
    for line in added:  # new values of the markers, and the temp paths after `http {`
        assert re.match(r"(user |# user |pid |error_log |access_log |\w+_temp_path |listen 127\.0\.0\.1:"
                        r"|server 127\.0\.0\.1:|proxy_read_timeout 2s;)", line), line


def test_shipped_timeouts_fit_the_service() -> None:
    """The /ws read timeout outlasts the default ping interval twice; nginx ends idle upstream
    connections before Gunicorn's ``keepalive`` would (its gevent worker does not apply it today)."""
    from logger.config import Settings
    text = SHIPPED_CONFIG.read_text()
    ws_block = text[text.index("location = /ws"):]
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", ws_block).group(1))
    assert read_timeout >= 2 * Settings().ping_interval_s
    upstream_idle = int(re.search(r"keepalive_timeout (\d+)s;", text).group(1))
    assert "keepalive = settings.http_keepalive_s" in (ROOT / "gunicorn.conf.py").read_text()
    assert upstream_idle < Settings().http_keepalive_s


# -- headers, with a recording upstream ------------------------------------------------


class RecordingUpstream:
    """A tiny HTTP/1.1 upstream that answers every request with what it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Gunicorn

            def do_GET(self) -> None:  # noqa: N802
                seen = {"path": self.path, "version": self.request_version, "peer": self.client_address,
                        "headers": {k.lower(): v for k, v in self.headers.items()}}
                owner.requests.append(seen)
                body = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_forwarded_headers_and_upstream_keepalive(tmp_path: Path) -> None:
    """What the shipped config sends upstream: forwarded headers, HTTP/1.1, reused connections."""
    upstream = RecordingUpstream()
    try:
        with Nginx(upstream.port, workdir=tmp_path) as proxy:
            proxy.start()
            upstream.requests.clear()  # start()'s readiness probe
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            try:  # one client connection: one nginx worker, so one upstream keepalive cache
                for path in ("/", "/health", "/ws"):
                    conn.request("GET", path, headers={"X-Forwarded-For": "203.0.113.7",
                                                       "Origin": ALLOWED_ORIGIN})
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200
                conn.request("GET", "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
                conn.getresponse().read()
            finally:
                conn.close()
    finally:
        upstream.close()

    plain, upgrade = upstream.requests[:3], upstream.requests[3]
    for seen in plain:
        headers = seen["headers"]
        assert seen["version"] == "HTTP/1.1"
        assert headers["host"] == "127.0.0.1"  # the client's name ($host: without the port), not "logger_service"
        assert headers["x-real-ip"] == "127.0.0.1"
        assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"  # appended, not replaced
        assert headers["x-forwarded-proto"] == "http"
        assert headers["origin"] == ALLOWED_ORIGIN  # passed through for the service's own checks
        assert "connection" not in headers and "upgrade" not in headers  # no `close`: keepalive works
    # All four requests reused one upstream connection (keepalive 16 in the upstream block).
    assert len({tuple(seen["peer"]) for seen in upstream.requests}) == 1, upstream.requests
    # An upgrade request gets its hop-by-hop headers set again.
    assert upgrade["headers"]["upgrade"] == "websocket"
    assert upgrade["headers"]["connection"] == "upgrade"


# -- the real service behind nginx ---------------------------------------------------------


def test_http_routes_and_cors_through_nginx(behind_nginx: Callable[..., Stack]) -> None:
    stack = behind_nginx()
    url = stack.nginx.url

    status, headers, body = get(url + "/")
    assert status == 200 and headers["Server"].startswith("nginx")
    assert json.loads(body)["service"] == "logger-service"

    status, _, body = get(url + "/health")
    assert status == 200
    assert json.loads(body)["status"] in ("ok", "degraded")

    status, headers, _ = get(url + "/health", {"Origin": ALLOWED_ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    status, headers, _ = get(url + "/health", {"Origin": FOREIGN_ORIGIN})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers

    # A CORS preflight passes through too.
    status, headers, _ = get(url + "/health", {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "GET"},
                             method="OPTIONS")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN

    # A plain GET of /ws (no upgrade) reaches the service through the /ws location: 426.
    status, headers, _ = get(url + "/ws")
    assert status == 426 and headers["Upgrade"] == "websocket"

    # A body over client_max_body_size (1m) is refused by nginx itself.
    conn = http.client.HTTPConnection("127.0.0.1", stack.nginx.port, timeout=10)
    try:
        conn.request("POST", "/api/logs", body=b"[" + b'"x",' * 300_000 + b'"x"]',
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 413

    # nginx writes the access log after the response has gone out: wait for the last line.
    wait_for(lambda: '"POST /api/logs HTTP/1.1" 413' in stack.nginx.access_log_text(), 5, "the access log")
    assert '"GET /ws HTTP/1.1" 426' in stack.nginx.access_log_text()
    assert '"GET /health HTTP/1.1" 200' in stack.nginx.access_log_text()


def test_websocket_through_nginx_streams_records(behind_nginx: Callable[..., Stack],
                                                 ws_client: Callable[..., Any]) -> None:
    stack = behind_nginx()
    tool = ws_client(stack.nginx.ws_url)  # no Origin, like wscat
    browser = ws_client(stack.nginx.ws_url, origin=ALLOWED_ORIGIN)
    for client in (tool, browser):
        wait_for(lambda: client.messages, 10, "hello")  # noqa: B023
        assert client.messages[0]["type"] == "hello" and client.messages[0]["topic"] == stack.topic

    produce(stack.kafka, stack.topic, logs(50, "via-nginx"))
    for client in (tool, browser):
        records = client.wait_records(50)
        assert [r["message"] for r in records] == [f"via-nginx-{i}" for i in range(50)]
        assert all(m["type"] in ("hello", "logs") for m in client.messages)

    # nginx relays frames untouched: the service's close code (1001 on SIGTERM) reaches the clients.
    stack.service.stop()
    assert tool.wait_closed(10) == 1001
    assert browser.wait_closed(10) == 1001


def test_foreign_origin_upgrade_is_refused_through_nginx(behind_nginx: Callable[..., Stack]) -> None:
    stack = behind_nginx()
    conn = http.client.HTTPConnection("127.0.0.1", stack.nginx.port, timeout=10)
    try:
        conn.request("GET", "/ws", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Origin": FOREIGN_ORIGIN})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 403
    assert FOREIGN_ORIGIN.encode() in body and b"not allowed" in body  # the service's refusal, passed on
    sock, status, _ = handshake("127.0.0.1", stack.nginx.port, origin=ALLOWED_ORIGIN)
    sock.close()
    assert status == 101


# -- idle WebSockets and proxy_read_timeout ----------------------------------------------

READ_TIMEOUT_S = 2  # nginx's proxy_read_timeout for these two tests
IDLE_S = 3 * READ_TIMEOUT_S  # how long the client stays quiet


def test_idle_websocket_outlives_read_timeout_thanks_to_pings(behind_nginx: Callable[..., Stack],
                                                             ws_client: Callable[..., Any]) -> None:
    stack = behind_nginx(read_timeout=f"{READ_TIMEOUT_S}s", WS_PING_INTERVAL_S="0.5")
    client = ws_client(stack.nginx.ws_url)
    wait_for(lambda: client.messages, 10, "hello")
    assert client.messages[0]["ping_interval_s"] == 0.5

    # Quiet for three read timeouts: no application messages either way, only
    # the server's pings and the client library's automatic pongs.
    assert client.wait_closed(IDLE_S) is None, f"closed with {client.close_code}:\n{stack.nginx.error_log_text()}"
    assert [m["type"] for m in client.messages] == ["hello"]

    produce(stack.kafka, stack.topic, logs(5, "after-idle"))
    assert [r["message"] for r in client.wait_records(5)] == [f"after-idle-{i}" for i in range(5)]
    assert ws_access_line(stack.nginx) is None  # still open: nginx logs a WebSocket when it ends


def test_idle_websocket_without_pings_is_closed_by_nginx(behind_nginx: Callable[..., Stack],
                                                         ws_client: Callable[..., Any]) -> None:
    """The control: the same idle client, with the service's pings effectively off, is cut by nginx."""
    stack = behind_nginx(read_timeout=f"{READ_TIMEOUT_S}s", WS_PING_INTERVAL_S="30")
    client = ws_client(stack.nginx.ws_url)
    wait_for(lambda: client.messages, 10, "hello")
    idle_since = time.monotonic()

    code = client.wait_closed(IDLE_S)
    elapsed = time.monotonic() - idle_since
    # nginx does not speak WebSocket: it just closes both TCP connections, no
    # close frame, so the client sees an abnormal closure (1006).
    assert code == 1006, f"still open after {IDLE_S}s (code {code})"
    assert READ_TIMEOUT_S - 0.5 <= elapsed < IDLE_S, elapsed
    # nginx logs the WebSocket when it ends, with its lifetime: the read timeout.
    # (Its "upstream timed out ... while proxying upgraded connection" is an
    # info-level message, below the shipped error_log level.)
    line = wait_for(lambda: ws_access_line(stack.nginx), 5, "nginx to log the /ws request")
    lifetime = float(re.search(r" rt=([\d.]+)", line).group(1))
    assert READ_TIMEOUT_S <= lifetime < READ_TIMEOUT_S + 1, line
    # The service notices its side was closed and forgets the client.
    wait_for(lambda: (stack.service.health() or {}).get("clients") == 0, 10, "the service to drop the client")


def test_the_service_logs_the_client_address_nginx_saw(behind_nginx: Callable[..., Stack]) -> None:
    """A client on 127.0.0.2 goes through nginx (which connects from 127.0.0.1): with nginx
    trusted, the service's access line and its WebSocket log name 127.0.0.2, not the proxy."""
    stack = behind_nginx(TRUSTED_PROXIES="127.0.0.1", ACCESS_LOG="true", LOG_FORMAT="json")
    port = int(stack.nginx.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    connection.request("GET", "/health", headers={"User-Agent": "client-ip-test"})
    assert connection.getresponse().status == 200
    connection.close()
    # nginx writes the access log after the response has gone out: wait for the line.
    wait_for(lambda: "127.0.0.2" in stack.nginx.access_log_text(), 5, "nginx to log the client's own address")

    def access_line() -> dict[str, Any] | None:
        for line in stack.service.log_text().splitlines():
            if line.startswith("{") and '"client-ip-test"' in line:
                return json.loads(line)
        return None
    line = wait_for(access_line, 10, "the service's access line")
    assert line["client"] == "127.0.0.2"
