"""Coming from the Go service: its settings and its README's commands (issue 17).

Against the real things: the shared Kafka broker, Rotel (which listens on both
OTLP/HTTP and OTLP/gRPC, ``--otlp-http-endpoint`` and ``--otlp-grpc-endpoint``)
forwarding to the decoding receiver, and the service under real Gunicorn.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from typing import Any

from devstack.ports import free_ports
from devstack.service import ServiceProcess
from tests.conftest import LiveClient, produce, readers_ok


def values(run_id: str, count: int) -> list[bytes]:
    return [json.dumps({"run": run_id, "seq": i, "level": "warn", "service": "orders",
                        "message": f"slow query {i}"}).encode() for i in range(count)]


def of_run(run_id: str):
    return lambda record: record["attributes"].get("run") == run_id


def test_the_go_readmes_otlp_endpoint_is_explained_at_start_up(topic, service):
    # localhost:4317 as the Go README has it. Nothing is produced, so no export runs: what
    # /health shows is the start-up check of the port alone, whatever listens there.
    proc = service(topic(1), OTLP_ENDPOINT="localhost:4317")
    expected = ("OTLP_ENDPOINT=localhost:4317 is the OTLP/gRPC port, but this service sends OTLP/HTTP: use the "
                "collector's OTLP/HTTP endpoint (usually :4318), e.g. OTLP_ENDPOINT=localhost:4318")
    collector = proc.health()["collector"]
    assert (collector["state"], collector["error"]) == ("degraded", expected)
    assert collector["endpoint"] == "http://localhost:4317/v1/logs", "kept as given, not rewritten"
    assert proc.log_text().count(expected) == 1


def test_pointed_at_the_grpc_port_it_says_so_and_commits_nothing_until_fixed(kafka, topic, service, collector,
                                                                            receiver, run_id):
    name, group = topic(1), f"group-{run_id}"
    # The Go service's documented value, on the test collector's gRPC port: a free port, not
    # 4317 itself (the port rule is unit-tested), so what recognises it here is the probe.
    wrong = service(name, group=group, OTLP_ENDPOINT=f"127.0.0.1:{collector.grpc_port}",
                    EXPORT_RETRY_MAX_S="1", GRACEFUL_TIMEOUT="3")
    produce(kafka, name, values(run_id, 50))

    def grpc_named() -> dict[str, Any] | None:
        health = wrong.health()
        return health if health and "OTLP/gRPC" in health["collector"].get("error", "") else None
    health = wrong.wait_until(grpc_named, 30, "/health to name the OTLP/gRPC endpoint")
    error = health["collector"]["error"]
    assert health["collector"]["state"] == "degraded" and health["status"] == "degraded"
    assert error.startswith(f"OTLP_ENDPOINT=127.0.0.1:{collector.grpc_port} answers like an OTLP/gRPC server")
    assert "this service sends OTLP/HTTP" in error and "usually :4318" in error
    assert error.endswith("e.g. OTLP_ENDPOINT=127.0.0.1:4318")
    assert "Connection aborted" not in error and "reset by peer" not in error

    # An outage like any other: retried, the offsets wait, nothing reaches the collector.
    wrong.wait_until(lambda: wrong.health()["kafka"]["forward"].get("export_retries", 0) >= 3, 30,
                     "three export retries")
    forward = wrong.health()["kafka"]["forward"]
    assert forward.get("records_in", 0) > 0, "records were read (how many batches: up to the reader's timing)"
    assert forward.get("records_committed", 0) == 0
    assert not [r for r in receiver.records() if of_run(run_id)(r)]
    assert wrong.log_text().count("answers like an OTLP/gRPC server") == 1, "one log line, not one per retry"
    assert wrong.stop() == 0
    assert "offsets left uncommitted" in wrong.log_text()

    # Fixed: the same group on the OTLP/HTTP port gets every record, once committed.
    right = service(name, group=group, OTLP_ENDPOINT=f"127.0.0.1:{collector.port}")
    records = receiver.wait_for_matching(of_run(run_id), 50, timeout=30)
    assert sorted(r["attributes"]["seq"] for r in records) == list(range(50))
    right.wait_until(lambda: right.health()["kafka"]["forward"].get("records_committed") == 50, 20,
                     "all 50 offsets committed")
    assert right.health()["collector"]["state"] == "ok"


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """``curl URL`` as the Go README runs it (urllib where there is no curl)."""
    if shutil.which("curl"):
        done = subprocess.run(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", url],
                              capture_output=True, text=True, timeout=20, check=True)
        body, _, status = done.stdout.rpartition("\n")
        return int(status), json.loads(body)
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_the_go_readmes_curl_and_wscat_commands_work_with_its_environment(kafka, topic, collector, receiver,
                                                                          tmp_path, run_id):
    name = topic(1)
    port = free_ports(1)[0]
    # The Go README's variables and no others. PORT is a free port, not 6006: the machine is
    # shared and 6006 may be taken (`make run`). KAFKA_API_KEY/KAFKA_API_SECRET are left
    # out because this broker listener is PLAINTEXT; test_tls.py runs them against SASL_SSL.
    # ServiceProcess adds only HOST=127.0.0.1 (tests bind to loopback), the worker count and
    # the graceful timeout.
    go_env = {
        "PORT": str(port),
        "KAFKA_BROKER_URL": kafka.bootstrap,
        "KAFKA_TOPIC": name,
        "KAFKA_GROUP_ID": f"group-{run_id}",
        "OTLP_ENDPOINT": f"localhost:{collector.port}",  # the Go form, host:port, on the OTLP/HTTP port
        "FRONTEND_URL": "http://localhost:3000",
        "FRONTEND_SELLER_URL": "http://localhost:3001",
        "FRONTEND_ADMIN_URL": "http://localhost:3002",
    }
    base = f"http://localhost:{port}"
    with ServiceProcess(go_env, port=port, log_dir=tmp_path) as proc:
        proc.start(ready=readers_ok)

        status, body = get_json(base + "/")  # curl http://localhost:6006/
        assert status == 200 and body["status"] == "ok" and body["service"] == "logger-service"
        status, health = get_json(base + "/health")  # curl http://localhost:6006/health
        assert status == 200 and health["status"] == "ok" and health["clients"] == 0

        # wscat -c ws://localhost:6006/ws: a plain RFC 6455 upgrade without an Origin header
        # (wscat sends one only with -o), every text frame printed. websocket-client does the
        # same here; wscat is an npm package and CI installs nothing beyond the dev requirements.
        client = LiveClient(f"ws://localhost:{port}/ws")
        try:
            proc.wait_until(lambda: get_json(base + "/health")[1]["clients"] == 1, 10, "/health to count the client")
            produce(kafka, name, values(run_id, 1))
            [record] = client.wait_records(1)
            assert client.messages[0]["type"] == "hello"
            assert (record["message"], record["level"], record["service"]) == ("slow query 0", "warn", "orders")
        finally:
            client.close()
        proc.wait_until(lambda: get_json(base + "/health")[1]["clients"] == 0, 10, "the client to be gone")
        receiver.wait_for_matching(of_run(run_id), 1, timeout=20)  # and OTLP_ENDPOINT=host:port forwards
