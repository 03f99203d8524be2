"""A soak through every fault in a row: 20,000 numbered records, none lost.

One stream of uniquely numbered records is produced at a steady rate while,
one after another, the collector goes down and comes back, the broker
restarts, a second instance joins the group (a rebalance) and the first one
is stopped with SIGTERM. At the end every number must be at the collector,
at most 1 % of them twice (issue 15), and the live clients must have seen every
number produced while they were connected.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

from tests.conftest import LiveClient

TOTAL = 20_000
RATE = 2_000  # records per second, bounded


class Producer(threading.Thread):
    """Produces 0..TOTAL-1 at a bounded rate; records each number the broker acknowledged."""

    def __init__(self, kafka, topic: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.kafka, self.topic, self.run_id = kafka, topic, run_id
        self.acked: list[int] = []
        self.failed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        # Generous timeouts: sends made while the broker restarts wait for it.
        producer = self.kafka.producer(linger_ms=5, acks="all", retries=1_000, request_timeout_ms=5_000,
                                       delivery_timeout_ms=120_000, max_block_ms=120_000)
        started = time.monotonic()
        for seq in range(TOTAL):
            if self.stop.is_set():
                break
            value = json.dumps({"run": self.run_id, "seq": seq, "level": "info", "message": f"soak {seq}"})
            future = producer.send(self.topic, value.encode(), partition=seq % 3)
            future.add_callback(lambda _m, seq=seq: self.acked.append(seq))
            future.add_errback(lambda _e, seq=seq: self.failed.append(seq))
            ahead = seq / RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(timeout=120)
        producer.close()

    def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acked) >= count, f"only {len(self.acked)} acknowledged"


def duplicates_once_all_arrived(proc, receiver, run_id: str, produced: set[int]) -> int:
    """Wait until every produced number reached the collector (none lost); return how many
    arrived more than once."""
    def at_collector() -> Counter[int]:
        return Counter(r["attributes"]["seq"] for r in receiver.records() if r["attributes"].get("run") == run_id)
    proc.wait_until(lambda: produced <= set(at_collector()), 120, "every number at the collector")
    return sum(n - 1 for n in at_collector().values() if n > 1)


def numbers(client: LiveClient) -> set[int]:
    return {r["attributes"]["seq"] for r in client.records() if "seq" in r["attributes"]}


def test_twenty_thousand_records_through_every_fault(kafka, topic, service, collector, receiver, ws_client,
                                                     run_id):
    name = topic(3)
    group = f"group-{run_id}"
    # The live clients must see every number, so the tail may not shed: behind a broker
    # restart it can fall more than TAIL_MAX_LAG_S behind (test_overload.py covers shedding).
    first = service(name, group=group, EXPORT_RETRY_MAX_S="1", KAFKA_SESSION_TIMEOUT_MS="6000", TAIL_MAX_LAG_S="0")
    clients = [ws_client(first.ws_url) for _ in range(3)]
    producer = Producer(kafka, name, run_id)
    producer.start()
    try:
        producer.wait_for(3_000)
        collector.stop()  # fault 1: the collector is down for a while
        producer.wait_for(6_000)
        collector.start()

        kafka.stop()  # fault 2: the broker restarts mid-stream (same ports, same data)
        time.sleep(1.0)  # a real outage, not just a blip
        kafka.start()
        producer.wait_for(10_000)

        second = service(name, group=group, EXPORT_RETRY_MAX_S="1", KAFKA_SESSION_TIMEOUT_MS="6000",
                         TAIL_MAX_LAG_S="0")  # fault 3
        producer.wait_for(14_000)

        # Before stopping the first instance, its clients catch up with all that was acknowledged.
        cutoff = set(producer.acked)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(cutoff <= numbers(c) for c in clients):
            time.sleep(0.1)
        first.signal(15)  # fault 4: SIGTERM while records flow; the second instance takes over
        assert first.wait(30) == 0
        producer.join(120)
    finally:
        producer.stop.set()
        if not collector.running():
            collector.start()
        if not kafka.running:
            kafka.start()

    assert not producer.failed, f"{len(producer.failed)} sends failed"
    produced = set(producer.acked)
    assert len(produced) == TOTAL

    duplicates = duplicates_once_all_arrived(second, receiver, run_id, produced)
    print(f"soak: {TOTAL} records, {duplicates} duplicates at the collector, 0 lost")
    assert duplicates <= TOTAL // 100, f"{duplicates} duplicates, more than 1 % of {TOTAL} (issue 15)"
    for client in clients:
        missing = cutoff - numbers(client)
        assert not missing, f"a live client missed {len(missing)} records, e.g. {sorted(missing)[:5]}"
        assert client.wait_closed(10) == 1001
