"""Replicas fail over without loss: three instances behind the shipped nginx.conf.

Three service instances (two Gunicorn workers each) read one topic; nginx
balances /ws over them. A thousand clients resume the way the viewer does:
they remember the last offset seen per partition and reconnect with
``?since=``. One instance is killed mid-stream (SIGKILL, then in a second test
SIGTERM); its clients reconnect through nginx to the others, and every client
must end with every numbered record exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from devstack.kafka import KafkaBroker
from devstack.nginx import Nginx, nginx_binary
from devstack.service import ServiceProcess
from devstack.waiting import wait_until
from tests.conftest import readers_ok

pytestmark = [
    pytest.mark.skipif(nginx_binary() is None, reason="nginx binary not found (CI installs it)"),
    pytest.mark.timeout(240),
]

CLIENTS = 1000
RECORDS = 600
RATE = 100  # records per second: the kill lands mid-stream


@dataclass
class ResumingClient:
    """What one client saw, across reconnects."""

    positions: dict[int, int] | None = None  # partition → last offset seen
    seen: Counter[int] = field(default_factory=Counter)  # seq → times received
    gaps: list[dict[str, Any]] = field(default_factory=list)
    connects: int = 0
    closes: Counter[int | None] = field(default_factory=Counter)


class Swarm:
    """Many resuming /ws clients on one asyncio loop in a background thread."""

    def __init__(self, url: str, topic: str, count: int) -> None:
        self.url, self.topic = url, topic
        self.clients = [ResumingClient() for _ in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Swarm:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._run(client)) for client in self.clients]
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, client: ResumingClient) -> None:
        await asyncio.sleep(random.random() * 2)  # do not all knock at once
        while not self._stop.is_set():
            url = self.url
            if client.positions is not None:
                url += "?since=" + ",".join(f"{self.topic}:{p}:{o}" for p, o in sorted(client.positions.items()))
            try:
                async with connect(url, open_timeout=20, ping_interval=None, max_size=None) as ws:
                    client.connects += 1
                    async for raw in ws:
                        self._receive(client, orjson.loads(raw))
                    client.closes[ws.close_code] += 1
            except ConnectionClosed as closed:
                client.closes[closed.rcvd.code if closed.rcvd else None] += 1
            except (InvalidStatus, InvalidHandshake, OSError, TimeoutError):
                client.closes[None] += 1
            await asyncio.sleep(0.05 + random.random() * 0.2)

    @staticmethod
    def _receive(client: ResumingClient, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "hello" and client.positions is None:
            client.positions = {int(p.split(":")[1]): int(p.split(":")[2]) for p in message["positions"]}
        elif kind == "logs":
            for record in message["records"]:
                client.seen[record["attributes"]["seq"]] += 1
                assert client.positions is not None
                client.positions[record["partition"]] = max(client.positions[record["partition"]], record["offset"])
        elif kind == "gap":
            client.gaps.append(message)

    def complete(self, total: int) -> int:
        return sum(1 for c in self.clients if len(c.seen) == total)


@pytest.fixture
def replicas(kafka: KafkaBroker, topic: Callable[..., str], tmp_path: Any) -> Iterator[Callable[[], tuple]]:
    with ExitStack() as stack:
        def start() -> tuple[str, list[ServiceProcess], Nginx]:
            name = topic(3)
            services = [ServiceProcess({"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": name,
                                        "FORWARD_ENABLED": "false", "ACCESS_LOG": "false"},
                                       workers=2, log_dir=tmp_path, graceful_timeout=10) for _ in range(3)]
            for service in services:
                stack.callback(service.stop)
                service.launch()
            for service in services:
                service.wait_until(lambda s=service: s._all_workers_ready(readers_ok), 60, "a replica to be ready")
            nginx = stack.enter_context(Nginx([s.port for s in services]))
            nginx.start()
            return name, services, nginx
        yield start


def produce_numbered(kafka: KafkaBroker, name: str, kill_at: int, kill: Callable[[], None]) -> None:
    producer = kafka.producer(linger_ms=5)
    try:
        for seq in range(RECORDS):
            if seq == kill_at:
                kill()
            producer.send(name, orjson.dumps({"message": f"record {seq}", "seq": seq}), partition=seq % 3)
            if seq % 10 == 9:
                producer.flush()
                threading.Event().wait(10 / RATE)  # a steady stream, not a burst
        producer.flush()
    finally:
        producer.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_replica_dies_mid_stream_and_every_client_still_gets_every_record_once(kafka, replicas, how):
    name, services, nginx = replicas()
    swarm = Swarm(nginx.ws_url, name, CLIENTS).start()
    try:
        wait_until(lambda: all(c.positions is not None for c in swarm.clients), 90, "every client connected",
                   lambda: f"{sum(c.positions is not None for c in swarm.clients)} of {CLIENTS}")
        victim = services[0]
        on_victim = victim.health()["clients"]
        assert on_victim > 0, "nginx spread the clients over every replica"

        def kill() -> None:
            assert victim.proc is not None
            os.killpg(victim.proc.pid, how)

        produce_numbered(kafka, name, RECORDS // 2, kill)
        wait_until(lambda: swarm.complete(RECORDS) == CLIENTS, 120, "every client to have every record",
                   lambda: f"{swarm.complete(RECORDS)} of {CLIENTS} complete")
    finally:
        swarm.stop()
    duplicates = sum(count - 1 for c in swarm.clients for count in c.seen.values())
    assert duplicates == 0
    assert all(set(c.seen) == set(range(RECORDS)) for c in swarm.clients)
    assert not [g for c in swarm.clients for g in c.gaps], "the replay ring covered every reconnect"
    reconnected = sum(1 for c in swarm.clients if c.connects > 1)
    assert reconnected >= on_victim  # the victim's clients came back through nginx
    if how == signal.SIGTERM:  # a graceful stop says goodbye with 1001
        assert sum(c.closes[1001] for c in swarm.clients) >= on_victim
