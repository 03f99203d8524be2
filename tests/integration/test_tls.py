"""The service over TLS: SASL_SSL with PLAIN against a real broker with a throwaway CA,
and OTLP/HTTPS to a collector whose certificate that CA signed.

This module has its own broker with the SASL_SSL listener on
(``KafkaBroker(tls=True)``); it overrides the session ``kafka`` fixture, so
``topic`` creates topics there and ``service`` starts the service against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from devstack.collector import OtlpReceiver
from devstack.kafka import KafkaBroker
from devstack.ports import free_port
from devstack.service import ROOT, ServiceProcess
from tests.conftest import _ENV_PREFIXES as ENV_PREFIXES
from tests.conftest import produce, readers_ok

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tls_kafka() -> Iterator[KafkaBroker]:
    with KafkaBroker(tls=True) as broker:
        yield broker


@pytest.fixture(scope="module")
def kafka(tls_kafka: KafkaBroker) -> KafkaBroker:
    """For ``topic`` and ``service``: this module's TLS broker instead of the session one."""
    return tls_kafka


def tls_env(kafka: KafkaBroker, ca_file: str) -> dict[str, str]:
    # No KAFKA_SECURITY_PROTOCOL: an API key selects SASL_SSL, as with Confluent Cloud.
    return {"KAFKA_BROKER_URL": kafka.sasl_ssl_bootstrap, "KAFKA_API_KEY": kafka.username,
            "KAFKA_API_SECRET": kafka.password, "KAFKA_SSL_CA_FILE": ca_file}


def produce_over_tls(kafka: KafkaBroker, topic: str, values: list[bytes]) -> None:
    producer = kafka.producer(**kafka.client_config(tls=True), linger_ms=5)
    try:
        for future in [producer.send(topic, v) for v in values]:
            future.get(timeout=30)
    finally:
        producer.close()


def test_sasl_ssl_with_the_right_ca_streams_and_exports(kafka, topic, service, ws_client, receiver, run_id):
    name = topic(2)
    proc = service(name, **tls_env(kafka, kafka.ca_file))
    health = proc.health()
    assert health is not None and readers_ok(health), health
    client = ws_client(proc.ws_url)

    values = [json.dumps({"run": run_id, "seq": i, "level": "info", "service": "tls",
                          "message": f"over TLS {i}"}).encode() for i in range(20)]
    produce_over_tls(kafka, name, values)

    mine = lambda r: r["attributes"].get("run") == run_id  # noqa: E731
    records = client.wait_records(20, where=mine)
    assert sorted(r["attributes"]["seq"] for r in records) == list(range(20))
    assert {r["message"] for r in records} == {f"over TLS {i}" for i in range(20)}
    exported = receiver.wait_for_matching(mine, 20, timeout=30)
    assert sorted(r["attributes"]["seq"] for r in exported) == list(range(20))
    assert {r["resource"]["service.name"] for r in exported} == {"tls"}
    log = proc.log_text()
    assert kafka.password not in log, "the secret must never be logged"
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def wrong_ca_service(tls_kafka: KafkaBroker, collector, tmp_path_factory) -> Iterator[ServiceProcess]:
    """The service trusting a CA that did not sign the broker's certificate; shared by
    the tests below, which look at it at different ages."""
    tls_kafka.create_topic("logs-wrong-ca")
    env = {**tls_env(tls_kafka, tls_kafka.wrong_ca_file), "KAFKA_TOPIC": "logs-wrong-ca",
           "OTLP_ENDPOINT": collector.endpoint, "ACCESS_LOG": "false"}
    proc = ServiceProcess(env, log_dir=tmp_path_factory.mktemp("wrong-ca"))
    for name in list(proc.env):  # a module fixture runs outside clean_environment
        if name.startswith(ENV_PREFIXES) and name not in env and name not in ("PORT", "HOST"):
            del proc.env[name]
    with proc:
        proc.launch()
        yield proc


def reported_tls_error(proc: ServiceProcess, paths: tuple[str, ...] = ("tail",)) -> dict | None:
    """/health once each reader in ``paths`` reports the TLS error."""
    health = proc.health() or {}
    errors = [health.get("kafka", {}).get(path, {}).get("error", "") for path in paths]
    return health if all("KAFKA_SSL_CA_FILE" in error for error in errors) else None


def test_a_ca_that_did_not_sign_the_broker_certificate_is_reported_clearly(kafka, wrong_ca_service):
    proc = wrong_ca_service
    health = proc.wait_until(lambda: reported_tls_error(proc, ("tail", "forward")), 40,
                             "a TLS error from both readers in /health")
    assert health["status"] == "degraded"
    for path in ("tail", "forward"):
        error = health["kafka"][path]["error"]
        assert health["kafka"][path]["state"] == "degraded"
        assert "TLS" in error and "certificate" in error.lower(), error
        assert "KAFKA_SSL_CA_FILE" in error and kafka.sasl_ssl_bootstrap in error, error
    proc.wait_until(lambda: "KAFKA_SSL_CA_FILE" in proc.log_text(), 10, "the error in the service log")

    # Still alive a while later: serving HTTP, retrying without tracebacks.
    time.sleep(3)
    assert proc.proc.poll() is None
    later = proc.health()
    assert later is not None and later["kafka"]["tail"]["state"] == "degraded"
    log = proc.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert kafka.password not in log and kafka.password not in json.dumps(later)


def test_a_lasting_tls_failure_is_logged_once_per_reader(wrong_ca_service):
    proc = wrong_ca_service
    proc.wait_until(lambda: reported_tls_error(proc), 40, "a TLS error in /health")
    # Each attempt takes bootstrap_timeout_ms (10 s) plus a backoff: by 35 s after launch
    # the readers have failed at least three times.
    time.sleep(max(0.0, 35 - (time.monotonic() - proc.launched_at)))
    assert proc.proc.poll() is None
    log = proc.log_text()
    assert "Traceback" not in log
    for reader in ("tail reader", "forward reader"):
        reports = [line for line in log.splitlines() if reader in line and "KAFKA_SSL_CA_FILE" in line]
        assert len(reports) == 1, "\n".join(reports)


def test_sigterm_while_tls_fails_exits_cleanly(wrong_ca_service):
    proc = wrong_ca_service
    proc.wait_until(lambda: reported_tls_error(proc), 40, "a TLS error in /health")
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    elapsed = time.monotonic() - signalled
    assert code == 0, proc.log_tail()
    # A reader inside kafka-python's bootstrap (bootstrap_timeout_ms, 10 s) stops when it returns.
    assert elapsed < 15, f"shutdown took {elapsed:.1f}s"
    assert "Traceback" not in proc.log_text()


def not_pem(tmp_path) -> str:
    path = tmp_path / "not-a-ca.pem"
    path.write_text("this is not a certificate\n")
    return str(path)


@pytest.mark.parametrize("ca_file", [
    pytest.param(lambda tmp_path: str(tmp_path / "no-such-ca.pem"), id="missing"),
    pytest.param(not_pem, id="not-pem"),
])
def test_a_bad_ca_file_stops_start_up_with_one_line(kafka, tmp_path, ca_file):
    path = ca_file(tmp_path)
    # Loopback and a free port: with a file that passes the check, the service does start.
    env = {"PATH": "/usr/bin:/bin", "HOST": "127.0.0.1", "PORT": str(free_port()), **tls_env(kafka, path)}
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        stdout, stderr = gunicorn.communicate(timeout=10)  # a configuration error comes within a second
    except subprocess.TimeoutExpired:
        os.killpg(gunicorn.pid, signal.SIGKILL)
        gunicorn.communicate()
        pytest.fail("the service started with a bad KAFKA_SSL_CA_FILE")
    assert gunicorn.returncode != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"logger-service: configuration error: KAFKA_SSL_CA_FILE={path!r} is invalid: "
                               "expected a readable PEM file"), lines[0]
    assert kafka.password not in stderr + stdout


COLLECTOR_TOKEN = "Bearer collector-t0ken"


@pytest.fixture
def https_collector(tls_kafka: KafkaBroker) -> Iterator[OtlpReceiver]:
    """A collector on HTTPS (certificate for 127.0.0.1 from the broker's throwaway CA) that
    answers 401 to a request without its token and tenant headers."""
    with OtlpReceiver(tls=tls_kafka.tls_files,
                      required_headers={"Authorization": COLLECTOR_TOKEN, "X-Scope-OrgID": "tenant-1"}) as rx:
        yield rx


def otlp_env(collector: OtlpReceiver, ca_file: str, other_ca_file: str) -> dict[str, str]:
    # Values are URL-encoded in OTEL_EXPORTER_OTLP_HEADERS (the space of "Bearer …").
    # REQUESTS_CA_BUNDLE set as many base images do: requests would let it override the
    # exporter's CA file (logger.otlp.SessionKeepingItsCa).
    return {"OTLP_ENDPOINT": collector.endpoint, "OTEL_EXPORTER_OTLP_CERTIFICATE": ca_file,
            "REQUESTS_CA_BUNDLE": other_ca_file,
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization={COLLECTOR_TOKEN.replace(' ', '%20')},"
                                          "x-scope-orgid=tenant-1",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}


def test_the_otlp_exporter_sends_its_headers_gzipped_over_tls_trusting_the_given_ca(kafka, topic, service,
                                                                                    https_collector, run_id):
    # Each setting is needed: without the headers the collector answers 401 (refused for
    # good), without the CA the handshake fails, and the encoding is checked on the wire.
    name = topic(1)
    proc = service(name, **otlp_env(https_collector, kafka.ca_file, kafka.wrong_ca_file))
    assert https_collector.endpoint.startswith("https://127.0.0.1:")
    produce(kafka, name, [json.dumps({"run": run_id, "seq": i, "message": f"m{i}"}).encode() for i in range(20)])
    records = https_collector.wait_for(20, timeout=30)
    assert sorted(r["attributes"]["seq"] for r in records) == list(range(20))
    requests_seen = https_collector.request_log
    assert [r.status for r in requests_seen] == [200] * len(requests_seen)
    for request in requests_seen:
        assert request.headers["content-encoding"] == "gzip"
        assert request.headers["authorization"] == COLLECTOR_TOKEN
        assert request.headers["x-scope-orgid"] == "tenant-1"
    assert https_collector.tls_errors == []
    assert "collector-t0ken" not in proc.log_text(), "a header's value is a credential: never logged"


def test_a_collector_certificate_the_given_ca_did_not_sign_is_reported_and_nothing_is_committed(
        kafka, topic, service, https_collector, run_id):
    name = topic(1)
    proc = service(name, **otlp_env(https_collector, kafka.wrong_ca_file, kafka.ca_file), EXPORT_RETRY_MAX_S="1")
    produce(kafka, name, [json.dumps({"run": run_id, "message": "never exported"}).encode()])

    def degraded():
        collector = proc.health()["collector"]
        return collector if collector["state"] == "degraded" else None
    collector = proc.wait_until(degraded, 20, "the collector to be reported degraded")
    assert "certificate verify failed" in collector["error"], collector["error"]
    assert https_collector.tls_errors and https_collector.request_log == []
    assert proc.health()["kafka"]["forward"].get("records_committed", 0) == 0
    assert proc.health()["kafka"]["forward"]["export_retries"] >= 1, "retried, as any outage"
