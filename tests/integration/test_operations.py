"""What operators rely on: /metrics across workers, /ready through start and drain, the log lines."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import time
from contextlib import ExitStack

import pytest
import requests

from devstack.collector import OtlpReceiver
from devstack.waiting import wait_until
from tests.conftest import metric as value
from tests.conftest import produce, scrape


def test_metrics_add_up_over_workers_and_move_by_the_right_amounts(kafka, topic, service, ws_client, receiver,
                                                                  run_id):
    name = topic(2)
    proc = service(name, workers=2)
    clients = [ws_client(proc.ws_url) for _ in range(3)]
    before = scrape(proc)
    n = 40
    produce(kafka, name, [json.dumps({"run": run_id, "seq": i, "message": "m"}).encode() for i in range(n)],
            partition_of=lambda i: i % 2)
    for client in clients:
        client.wait_records(n)
    receiver.wait_for_matching(lambda r: r["attributes"].get("run") == run_id, n)

    def moved():  # exported, and tailed by both workers (the clients may all sit on one of them)
        after = scrape(proc)
        exported = value(after, "logger_records_exported_total") - value(before, "logger_records_exported_total")
        tailed = value(after, "logger_records_consumed_total", path="tail") - \
            value(before, "logger_records_consumed_total", path="tail")
        return after if exported >= n and tailed >= 2 * n else None
    after = proc.wait_until(moved, 15, "the export and tail counters to move")
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    assert value(delta, "logger_records_consumed_total", path="tail") == 2 * n, "every worker tails everything"
    assert value(delta, "logger_records_consumed_total", path="forward") == n, "the group splits the forward path"
    assert value(delta, "logger_records_exported_total") == n
    assert value(delta, "logger_records_delivered_total") == 3 * n
    assert value(after, "logger_ws_clients") == 3
    assert value(delta, "logger_export_duration_seconds_count") >= 1
    assert value(delta, "logger_end_to_end_delay_seconds_count") >= 1
    up = [v for (metric, labels), v in after.items() if metric == "logger_reader_up"]
    assert up == [1.0] * 4, "two readers in each of two workers"

    def lags():
        found = {labels: v for (metric, labels), v in scrape(proc).items() if metric == "logger_consumer_lag_records"}
        return found if len(found) == 2 else None
    assert set(proc.wait_until(lags, 15, "a lag per partition").values()) == {0.0}, "caught up"


METRICS_TOKEN = "integration-metrics-token-0123"


def test_a_metrics_token_keeps_metrics_from_anyone_without_it(kafka, topic, service, ws_client):
    proc = service(topic(1), workers=2, METRICS_TOKEN=METRICS_TOKEN, ACCESS_LOG="true", LOG_FORMAT="json")
    url = proc.url + "/metrics"
    for headers, error in (({}, False), ({"Authorization": "Bearer not-the-metrics-token"}, True),
                           ({"Authorization": f"Basic {METRICS_TOKEN}"}, False)):
        refused = requests.get(url, headers=headers, timeout=5)
        assert refused.status_code == 401, headers
        challenge = refused.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="logger-service"') and ('error="invalid_token"' in challenge) == error
        assert "logger_" not in refused.text and refused.json()["error"]
    ws_client(proc.ws_url)
    # Whichever worker answers, the token opens the whole server's metrics.
    for _ in range(4):
        assert value(scrape(proc, METRICS_TOKEN), "logger_ws_clients") == 1
    assert requests.get(proc.url + "/health", timeout=5).status_code == 200, "only /metrics is guarded"
    proc.wait_until(lambda: '"path":"/metrics","status":200' in proc.log_text(), 10, "the access lines")
    assert METRICS_TOKEN not in proc.log_text()


def test_readiness_flips_during_start_and_drain(kafka, topic, service):
    proc = service(topic(1), wait_ready=False)
    proc.launch()
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and 200 not in seen:
        try:
            seen.add(requests.get(proc.url + "/ready", timeout=2).status_code)
        except requests.ConnectionError:
            pass
        time.sleep(0.02)
    assert seen == {503, 200}, "not ready while the readers join, ready after"
    assert requests.get(proc.url + "/", timeout=2).status_code == 200

    connection = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=5)  # kept alive across the signal

    def ready() -> tuple[int, dict]:
        connection.request("GET", "/ready")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    assert ready()[0] == 200
    proc.signal(signal.SIGTERM)
    def draining() -> tuple[int, dict] | None:
        answer = ready()
        return answer if answer[0] != 200 else None
    # The worker answers on the open connection until it has drained; wait for the flip.
    status, body = wait_until(draining, 10, "/ready to answer 503")
    assert status == 503 and body["waiting"]["service"] == "draining"
    connection.close()
    assert proc.wait(20) == 0


def test_a_websocket_upgrade_during_the_drain_is_answered_503(kafka, topic, service):
    name = topic(1)
    with OtlpReceiver() as hanging:
        hanging.delay = 60.0  # the export in flight holds the drain open (GRACEFUL_TIMEOUT 6: ~3 s)
        proc = service(name, OTLP_ENDPOINT=hanging.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="60",
                       GRACEFUL_TIMEOUT="6")
        connection = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=5)  # kept alive across the signal
        connection.request("GET", "/ready")
        ready = connection.getresponse()
        ready.read()
        assert ready.status == 200
        produce(kafka, name, [b'{"message": "in flight"}'])
        hanging.wait_started(1, timeout=20)
        proc.signal(signal.SIGTERM)

        def draining() -> bool:
            connection.request("GET", "/ready")
            response = connection.getresponse()
            response.read()
            return response.status == 503
        wait_until(draining, 10, "/ready to answer 503")  # the listener is closed: only this connection is served
        connection.request("GET", "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                  "Sec-WebSocket-Version": "13"})
        refused = connection.getresponse()
        body = refused.read().decode()
        assert refused.status == 503, (refused.status, body)
        assert "shutting down" in body
        connection.close()
        assert proc.wait(20) == 0
        assert "refused a WebSocket upgrade from 127.0.0.1: server is shutting down" in proc.log_text()


def test_log_lines_are_json_with_the_client_address_seen_through_trusted_proxies(kafka, topic, service):
    trusting = service(topic(1), TRUSTED_PROXIES="127.0.0.0/8", ACCESS_LOG="true", LOG_FORMAT="json")
    requests.get(trusting.url + "/health", headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.5"}, timeout=5)
    distrusting = service(topic(1), ACCESS_LOG="true", LOG_FORMAT="json")
    requests.get(distrusting.url + "/health", headers={"X-Forwarded-For": "203.0.113.8"}, timeout=5)

    def access_lines(proc):
        lines = [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line["logger"] == "gunicorn.access" and line.get("path") == "/health"
                and line.get("user_agent", "").startswith("python-requests")]
    trusted = trusting.wait_until(lambda: access_lines(trusting), 10, "the access line")
    assert trusted[-1]["client"] == "203.0.113.7" and trusted[-1]["status"] == 200
    untrusted = distrusting.wait_until(lambda: access_lines(distrusting), 10, "the access line")
    assert untrusted[-1]["client"] == "127.0.0.1", "a header from an untrusted peer is ignored"
    for proc in (trusting, distrusting):
        for line in proc.log_text().splitlines():
            if line.startswith("{"):
                assert {"time", "level", "logger", "pid", "message"} <= set(json.loads(line))


@pytest.mark.parametrize("level, shown", [("debug", {"debug", "info"}), ("info", {"info"}), ("warning", set())])
def test_log_level_decides_which_lines_are_written(kafka, topic, service, ws_client, level, shown):
    proc = service(topic(1), LOG_LEVEL=level, LOG_FORMAT="json")
    client = ws_client(proc.ws_url)
    # The hub logs "opened WebSocket" (debug) before it sends hello: once hello is here,
    # the line was written if the level lets it through.
    wait_until(lambda: client.messages, 10, "hello")
    lines = [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]
    ours = [line for line in lines if line["logger"].startswith(("logger.", "gunicorn.error"))]
    assert {line["level"] for line in ours} & {"debug", "info"} == shown, ours
    opened = [line for line in ours if line["message"].startswith("opened WebSocket")]
    assert bool(opened) == ("debug" in shown)
    started = [line for line in ours if line["message"].startswith("pipeline started")]
    assert bool(started) == ("info" in shown)


def held_connections(port: int, count: int, stack: ExitStack, head: bytes = b"") -> list[socket.socket]:
    """``count`` connections to the service, each having sent ``head``; closed with ``stack``."""
    socks = []
    for _ in range(count):
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        if head:
            sock.sendall(head)
        socks.append(sock)
    return socks


def answered(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""


PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # never finished: holds a pool slot
FULL_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def test_worker_connections_is_ws_max_clients_plus_1000_requests_in_progress(kafka, topic, service):
    # WS_MAX_CLIENTS=1: gevent's pool serves 1001 connections at once (Gunicorn's default is
    # 1000). Connections are accepted in order, so a request answered after N held heads
    # means those N were taken first and are still held.
    proc = service(topic(1), WS_MAX_CLIENTS="1", HTTP_HEAD_TIMEOUT_S="60")
    with ExitStack() as stack:
        held_connections(proc.port, 1000, stack, PARTIAL_HEAD)
        probe = held_connections(proc.port, 1, stack, FULL_REQUEST)[0]
        assert answered(probe, 10).startswith(b"HTTP/1.1 200"), "a 1001st request is served"
        held = held_connections(proc.port, 1, stack, PARTIAL_HEAD)  # now all 1001 slots are taken
        waiting = held_connections(proc.port, 1, stack, FULL_REQUEST)[0]
        assert answered(waiting, 1.0) == b"", "a 1002nd waits for a free slot"
        held[0].close()
        assert answered(waiting, 10).startswith(b"HTTP/1.1 200"), "and is served once one is free"


def test_the_listen_backlog_takes_a_reconnect_storm_while_the_worker_is_busy(kafka, topic, service):
    # While the worker accepts nothing (stopped here), the kernel completes handshakes for
    # up to the listen backlog (4096, capped by net.core.somaxconn) and drops further SYNs;
    # with Gunicorn's default of 2048, 3000 connections would not all get through.
    storm = 3000
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
    assert somaxconn >= storm, f"net.core.somaxconn={somaxconn} caps the backlog below this test's storm"
    proc = service(topic(1))
    worker = proc.health()["worker"]
    with ExitStack() as stack:
        os.kill(worker, signal.SIGSTOP)
        stack.callback(os.kill, worker, signal.SIGCONT)
        pending = {}
        for _ in range(storm):
            sock = stack.enter_context(socket.socket())
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", proc.port))
            pending[sock.fileno()] = sock
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        deadline = time.monotonic() + 5  # well under Gunicorn's 30 s worker timeout
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                poller.unregister(fd)
                assert pending.pop(fd).getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert len(pending) == 0, f"{len(pending)} of {storm} connections not established while the worker was busy"
        os.kill(worker, signal.SIGCONT)
    assert proc.health()["worker"] == worker, "the worker went on"
