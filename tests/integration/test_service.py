"""The service as a process: security, CORS and Origin checks, bad settings, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
import websocket

from devstack.ports import free_port
from devstack.service import ROOT
from tests.conftest import produce


def sasl_env(kafka, secret: str, mechanism: str = "PLAIN") -> dict[str, str]:
    user = kafka.username if mechanism == "PLAIN" else kafka.scram_username(mechanism)
    return {"KAFKA_BROKER_URL": kafka.sasl_bootstrap, "KAFKA_API_KEY": user,
            "KAFKA_API_SECRET": secret, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": mechanism}


def test_sasl_plain_with_the_right_secret_streams(kafka, topic, service, ws_client):
    name = topic(1)
    proc = service(name, **sasl_env(kafka, kafka.password))
    client = ws_client(proc.ws_url)
    produce(kafka, name, [b'{"message": "over SASL"}'])
    assert client.wait_records(1)[0]["message"] == "over SASL"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_with_the_right_secret_streams_and_exports(kafka, topic, service, ws_client, receiver, run_id,
                                                         mechanism):
    # The user exists for this one mechanism only: logging in with PLAIN or the other SCRAM fails.
    name = topic(1)
    proc = service(name, **sasl_env(kafka, kafka.password, mechanism))
    client = ws_client(proc.ws_url)
    produce(kafka, name, [json.dumps({"run": run_id, "message": f"over {mechanism}"}).encode()])
    assert client.wait_records(1)[0]["message"] == f"over {mechanism}"
    exported = receiver.wait_for_matching(lambda r: r["attributes"].get("run") == run_id, 1, timeout=20)
    assert exported[0]["body"] == f"over {mechanism}"
    assert kafka.password not in proc.log_text()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_a_wrong_secret_is_reported_clearly_and_the_process_keeps_running(kafka, topic, service, mechanism):
    name = topic(1)
    wrong = "definitely-not-the-secret"
    proc = service(name, wait_ready=False, **sasl_env(kafka, wrong, mechanism))
    proc.launch()

    # The broker's "authentication failed" answer, or (kafka-python often loses it, see
    # kafka_client.describe_kafka_error) its hang-up during the login: either names the variables.
    def reported():
        health = proc.health()
        return health if health and "KAFKA_API_SECRET" in health["kafka"]["tail"].get("error", "") else None
    health = proc.wait_until(reported, 40, "an authentication error in /health")
    assert health["status"] == "degraded"
    error = health["kafka"]["tail"]["error"]
    assert f"API key {sasl_env(kafka, '', mechanism)['KAFKA_API_KEY']!r} ({mechanism})" in error, error
    assert "\n" not in error
    proc.wait_until(lambda: error in proc.log_text(), 10, "the error in the log")
    time.sleep(1)  # still alive a moment later, serving HTTP
    assert proc.proc.poll() is None and proc.health() is not None
    log = proc.log_text()
    assert wrong not in log and wrong not in json.dumps(health), "the secret must never be logged"
    assert "Traceback" not in log


def test_cors_and_the_websocket_origin_check(kafka, topic, service):
    proc = service(topic(1), FRONTEND_ADMIN_URL="https://admin.example.com")
    allowed = requests.get(proc.url + "/health", headers={"Origin": "https://admin.example.com"}, timeout=5)
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://admin.example.com"
    preflight = requests.options(proc.url + "/health", timeout=5, headers={
        "Origin": "http://localhost:3001", "Access-Control-Request-Method": "GET"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://localhost:3001"
    foreign = requests.get(proc.url + "/", headers={"Origin": "https://evil.example.com"}, timeout=5)
    assert foreign.status_code == 200 and "Access-Control-Allow-Origin" not in foreign.headers

    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(proc.ws_url, origin="https://evil.example.com", timeout=5)
    assert refused.value.status_code == 403
    for origin in ("https://admin.example.com", None):  # a listed page, and wscat (no Origin)
        options = {"origin": origin} if origin else {"suppress_origin": True}
        ws = websocket.create_connection(proc.ws_url, timeout=5, **options)
        assert json.loads(ws.recv())["type"] == "hello"
        ws.close()


def test_other_routes_are_not_upgraded(kafka, topic, service):
    proc = service(topic(1))
    assert requests.get(proc.url + "/ws", timeout=5).status_code == 426
    with pytest.raises(websocket.WebSocketBadStatusException) as caught:
        websocket.create_connection(proc.url.replace("http", "ws") + "/health", timeout=5, suppress_origin=True)
    # Answered by Flask as plain HTTP (Werkzeug refuses a WebSocket request on an HTTP route).
    assert caught.value.status_code == 400


@pytest.mark.parametrize("env, line", [
    ({"PORT": "abc"}, "PORT='abc' is invalid: expected an integer from 1 to 65535"),
    ({"KAFKA_API_KEY": "key-only"}, "KAFKA_API_SECRET is not set"),
    ({"OTLP_ENDPOINT": "not a url"}, "OTLP_ENDPOINT='not a url' is invalid"),
    # Gunicorn's own settings (gunicorn.conf.py), once a traceback or silently accepted.
    ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY='0' is invalid: expected an integer from 1 to 256"),
    ({"WEB_CONCURRENCY": "1000"}, "WEB_CONCURRENCY='1000' is invalid"),
    ({"GRACEFUL_TIMEOUT": "20s"}, "GRACEFUL_TIMEOUT='20s' is invalid: expected an integer from 1 to 3600"),
    ({"GRACEFUL_TIMEOUT": "-1"}, "GRACEFUL_TIMEOUT='-1' is invalid"),
    ({"ACCESS_LOG": "maybe"}, "ACCESS_LOG='maybe' is invalid: expected true or false"),
    # Once five seconds of Gunicorn's retries, then lines that did not name the variable.
    ({"HOST": "no-such-host.invalid"}, "HOST='no-such-host.invalid' is invalid: expected an IP address or a host "
                                       "name that resolves"),
])
def test_a_bad_setting_stops_start_up_with_one_line(env, line):
    returncode, stderr = start_gunicorn_expecting_failure(env)
    assert returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"logger-service: configuration error: {line}"), stderr


def test_a_web_concurrency_that_is_not_a_number_is_refused_by_gunicorn_itself():
    """Gunicorn reads WEB_CONCURRENCY when it is imported, before gunicorn.conf.py runs: a
    non-number stops it there, with its own traceback (the README says so)."""
    returncode, stderr = start_gunicorn_expecting_failure({"WEB_CONCURRENCY": "two"})
    assert returncode != 0
    assert 'int(os.environ.get("WEB_CONCURRENCY"' in stderr and "'two'" in stderr.splitlines()[-1], stderr


def start_gunicorn_expecting_failure(env: dict[str, str]) -> tuple[int, str]:
    """Run the real command with ``env``; its exit code and stderr. Loopback and a free port:
    a value that is wrongly accepted starts a server, which is killed and fails the test."""
    environ = {"PATH": "/usr/bin:/bin", "HOST": "127.0.0.1", "PORT": str(free_port()), **env}
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        _, stderr = gunicorn.communicate(timeout=20)  # a configuration error comes within a second or two
    except subprocess.TimeoutExpired:
        os.killpg(gunicorn.pid, signal.SIGKILL)
        gunicorn.communicate()
        pytest.fail(f"the service started with {env}")
    return gunicorn.returncode, stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_while_records_flow_loses_nothing(kafka, topic, service, ws_client, receiver, run_id, sig):
    name = topic(2)
    group = f"group-{run_id}"
    proc = service(name, group=group, FORWARD_BATCH_INTERVAL_MS="300")
    clients = [ws_client(proc.ws_url) for _ in range(3)]
    produced: list[int] = []
    stop_producing = threading.Event()

    def producer() -> None:
        producer = kafka.producer(linger_ms=2)
        seq = 0
        while not stop_producing.is_set() and seq < 20_000:
            producer.send(name, json.dumps({"run": run_id, "seq": seq, "message": f"m{seq}"}).encode(),
                          partition=seq % 2).get(timeout=10)
            produced.append(seq)
            seq += 1
        producer.close()
    thread = threading.Thread(target=producer)
    thread.start()
    try:
        clients[0].wait_records(50)
        signalled = time.monotonic()
        proc.signal(sig)
        code = proc.wait(timeout=20)
        elapsed = time.monotonic() - signalled
    finally:
        stop_producing.set()
        thread.join(30)
    assert code == 0, proc.log_tail()
    assert elapsed < 15, f"shutdown took {elapsed:.1f}s"
    for client in clients:
        assert client.wait_closed(5) == 1001

    # Whatever the first instance did not export is re-delivered by the next one.
    matching = lambda r: r["attributes"].get("run") == run_id  # noqa: E731
    service(name, group=group)
    exported = receiver.wait_for_matching(matching, len(produced), timeout=30)
    seqs = [r["attributes"]["seq"] for r in exported]
    assert set(produced) <= set(seqs), "every produced record reached the collector"
    assert len(seqs) == len(set(seqs)), "and none twice: exported offsets were committed before exit"
