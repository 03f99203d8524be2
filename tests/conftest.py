"""Fixtures: real servers, started once per session, torn down by themselves.

Integration tests share one Kafka broker and one collector (Rotel forwarding
to a decoding receiver); each test gets its own topic, consumer group and
run id, so tests never see each other's records.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, NoReturn

import pytest
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from devstack.collector import OtlpReceiver, RotelCollector
from devstack.kafka import KafkaBroker
from devstack.service import ServiceProcess

IN_CI = os.environ.get("CI", "").lower() == "true"  # .ci/run installs every tool the tests need


def tool_missing(reason: str) -> NoReturn:
    """A tool the test needs is not installed: skip here, but fail under ``CI=true``, where
    ``.ci/run`` installs it, so a broken install step cannot pass as a green run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required, not skipped)", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.requires(available, reason=...)``: :func:`tool_missing` unless available."""
    for mark in item.iter_markers("requires"):
        if not mark.args[0]:
            tool_missing(mark.kwargs["reason"])


_ENV_PREFIXES = ("KAFKA_", "OTLP_", "OTEL_", "FRONTEND_", "TAIL_", "FORWARD_", "WS_", "PORT", "LOG_LEVEL", "AUTH_",
                 "METRICS_TOKEN")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell settings must not leak into tests (Flask's conftest does the same)."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        tool_missing("java not found: the tests run a real Kafka broker (CI installs openjdk-17-jre-headless)")
    with KafkaBroker() as broker:
        broker.start()
        yield broker


@pytest.fixture(scope="session")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture(scope="session")
def collector(receiver: OtlpReceiver) -> Iterator[RotelCollector]:
    with RotelCollector(forward_to=receiver, debug_log=False) as rotel:
        rotel.start()
        yield rotel


@pytest.fixture
def run_id() -> str:
    """Tag for this test's records: the shared receiver holds everyone's."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def topic(kafka: KafkaBroker, run_id: str) -> Callable[..., str]:
    def make(partitions: int = 1) -> str:
        name = f"logs-{run_id}-{uuid.uuid4().hex[:6]}"
        kafka.create_topic(name, partitions)
        return name
    return make


@pytest.fixture
def service(kafka: KafkaBroker, collector: RotelCollector, tmp_path: Any) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: the real service under Gunicorn, wired to the test broker and collector."""
    with ExitStack() as stack:
        def start(topic: str, *, workers: int = 1, group: str | None = None, wait_ready: bool = True,
                  port: int | None = None, **env: str) -> ServiceProcess:
            environ = {"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": topic,
                       "KAFKA_GROUP_ID": group or f"group-{topic}", "OTLP_ENDPOINT": collector.endpoint,
                       "FORWARD_BATCH_INTERVAL_MS": "100", "ACCESS_LOG": "false", **env}
            proc = ServiceProcess(environ, workers=workers, port=port, log_dir=tmp_path)
            stack.callback(proc.stop)
            if wait_ready:
                proc.start(ready=readers_ok)
            return proc
        yield start


def readers_ok(health: dict[str, Any]) -> bool:
    """Both readers positioned: records produced from now on will be seen."""
    kafka = health["kafka"]
    return all(kafka[path]["state"] in ("ok", "disabled") for path in ("tail", "forward"))


class LiveClient:
    """A /ws client on a background thread that records every message and the close code."""

    def __init__(self, url: str, origin: str | None = None, timeout: float = 10.0, **options: Any) -> None:
        options.update({"origin": origin} if origin else {"suppress_origin": True})  # header=, subprotocols=
        self.ws = websocket.create_connection(url, timeout=timeout, **options)
        self.ws.settimeout(None)  # an idle stream is not an error; close() ends the reader
        self.messages: list[dict[str, Any]] = []
        self.received_at: list[float] = []  # time.time() of each message's arrival
        self.close_code: int | None = None
        self.close_reason = ""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    self.close_reason = data[2:].decode(errors="replace")
                    return
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.received_at.append(time.time())
                    self.messages.append(json.loads(data))
        except (websocket.WebSocketException, OSError):
            if self.close_code is None:
                self.close_code = 1006

    def records(self) -> list[dict[str, Any]]:
        return [r for m in list(self.messages) if m["type"] == "logs" for r in m["records"]]

    def wait_records(self, count: int, timeout: float = 20.0, where: Callable[[dict], bool] = lambda r: True
                     ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.records() if where(r)]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"got {len([r for r in self.records() if where(r)])} of {count} records")

    def wait_closed(self, timeout: float = 10.0) -> int | None:
        self._thread.join(timeout)
        return self.close_code

    def close(self) -> None:
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass


@pytest.fixture
def ws_client() -> Iterator[Callable[..., LiveClient]]:
    clients: list[LiveClient] = []

    def connect(url: str, origin: str | None = None, **options: Any) -> LiveClient:
        client = LiveClient(url, origin, **options)
        clients.append(client)
        return client
    yield connect
    for client in clients:
        client.close()


def produce(kafka: KafkaBroker, topic: str, values: list[bytes | None], partition_of: Callable[[int], int] | None
            = None) -> None:
    """Produce values in order and wait until the broker acknowledged all of them."""
    producer = kafka.producer(linger_ms=5)
    try:
        # A tombstone (value None) needs a key.
        futures = [producer.send(topic, value=v, key=None if v is not None else b"tombstone",
                                 partition=partition_of(i) if partition_of else None)
                   for i, v in enumerate(values)]
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


def scrape(proc: ServiceProcess) -> dict[tuple[str, tuple], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    text = requests.get(proc.url + "/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
