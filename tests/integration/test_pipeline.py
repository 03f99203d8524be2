"""Kafka → WebSocket clients and Kafka → collector, through the real service under Gunicorn."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from kafka import KafkaConsumer, TopicPartition

from devstack.waiting import wait_until
from tests.conftest import metric, produce, scrape

LEVELS = ["debug", "info", "WARNING", "err", "fatal"]
SEVERITY = {"debug": (5, "debug"), "info": (9, "info"), "WARNING": (13, "warn"), "err": (17, "error"),
            "fatal": (21, "fatal")}
T0 = 1_790_000_000_000  # ms


def log_values(run_id: str, count: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"timestamp": T0 + i, "level": LEVELS[i % 5], "service": f"svc-{i % 2}",
                        "message": f"message {i}", "run": run_id, "seq": i, "user": {"id": i}}).encode()
            for i in range(start, start + count)]


def of_run(run_id: str):
    return lambda record: record["attributes"].get("run") == run_id


def test_records_reach_every_client_in_order_and_the_collector(kafka, topic, service, ws_client, receiver, run_id):
    name = topic(1)
    proc = service(name)
    clients = [ws_client(proc.ws_url) for _ in range(2)]
    for client in clients:
        assert _hello(client)["type"] == "hello"

    produce(kafka, name, log_values(run_id, 60))

    for client in clients:
        records = client.wait_records(60, where=of_run(run_id))
        assert [r["attributes"]["seq"] for r in records] == list(range(60))
        assert [r["offset"] for r in records] == list(range(60))
        assert records[2] == {
            "time": "2026-09-21T14:13:20.002000000Z", "level": "warn", "severity": 13, "service": "svc-0",
            "message": "message 2", "attributes": {"run": run_id, "seq": 2, "user": {"id": 2}},
            "topic": name, "partition": 0, "offset": 2,
        }
        assert client.messages[0]["type"] == "hello"

    exported = receiver.wait_for_matching(lambda r: r["attributes"].get("run") == run_id, 60)
    by_seq = {r["attributes"]["seq"]: r for r in exported}
    assert sorted(by_seq) == list(range(60))
    for seq, record in by_seq.items():
        number, _ = SEVERITY[LEVELS[seq % 5]]
        assert record["body"] == f"message {seq}"
        assert record["severity_number"] == number
        assert record["time_unix_nano"] == (T0 + seq) * 1_000_000
        assert record["resource"]["service.name"] == f"svc-{seq % 2}"
        assert record["attributes"]["user.id"] == seq


def test_two_workers_and_three_partitions_every_client_sees_everything(kafka, topic, service, ws_client, receiver,
                                                                     run_id):
    name = topic(3)
    proc = service(name, workers=2)
    clients, workers = [], set()
    for _ in range(20):  # connections spread over workers by the kernel; keep going until both have one
        client = ws_client(proc.ws_url)
        client_hello = _hello(client)
        clients.append(client)
        workers.add(client_hello["worker"])
        if len(workers) == 2 and len(clients) >= 2:
            break
    assert len(workers) == 2, "could not reach both workers"
    # /health counts the clients of every worker, whichever worker answers.
    per_worker = {str(pid): sum(1 for c in clients if _hello(c)["worker"] == pid) for pid in workers}
    for _ in range(6):
        health = proc.health()
        assert health["clients"] == len(clients)
        assert health["clients_by_worker"] == per_worker

    produce(kafka, name, log_values(run_id, 90), partition_of=lambda i: i % 3)

    for client in clients:
        records = client.wait_records(90, where=of_run(run_id))
        assert sorted(r["attributes"]["seq"] for r in records) == list(range(90))
        per_partition = defaultdict(list)
        for r in records:
            per_partition[r["partition"]].append(r["offset"])
        assert all(offsets == sorted(offsets) for offsets in per_partition.values())
        assert set(per_partition) == {0, 1, 2}

    # The forward path splits partitions between the workers: each record once.
    exported = receiver.wait_for_matching(lambda r: r["attributes"].get("run") == run_id, 90)
    assert sorted(r["attributes"]["seq"] for r in exported) == list(range(90))


def test_committed_offsets_follow_the_collector_and_a_restart_forwards_nothing_twice(
        kafka, topic, service, receiver, run_id):
    name = topic(2)
    group = f"group-{run_id}"
    matching = lambda r: r["attributes"].get("run") == run_id  # noqa: E731
    proc = service(name, group=group)
    produce(kafka, name, log_values(run_id, 40), partition_of=lambda i: i % 2)
    receiver.wait_for_matching(matching, 40)
    assert proc.stop() == 0

    ends = _committed(kafka, group, name, 2)
    assert ends == {0: 20, 1: 20}

    produce(kafka, name, log_values(run_id, 30, start=40), partition_of=lambda i: i % 2)
    service(name, group=group)
    exported = receiver.wait_for_matching(matching, 70)
    seqs = sorted(r["attributes"]["seq"] for r in exported)
    assert seqs == list(range(70)), "each record exactly once across the restart"


@pytest.mark.parametrize("value, reason, body", [
    (b"plain text, not JSON", "not_json", "plain text, not JSON"),
    (b"\xc3\x28 bad utf-8", "invalid_utf8", "\ufffd( bad utf-8"),
    (b"", "empty", ""),
    (None, "tombstone", ""),
])
def test_malformed_values_are_delivered_as_text_and_counted(kafka, topic, service, ws_client, receiver, value,
                                                            reason, body):
    name = topic(1)
    proc = service(name)
    client = ws_client(proc.ws_url)
    produce(kafka, name, [value, json.dumps({"message": "after"}).encode()])
    records = client.wait_records(2)
    assert records[0]["malformed"] == reason and records[0]["message"] == body
    assert records[1]["message"] == "after", "the loop survived"
    exported = receiver.wait_for_matching(
        lambda r: r["resource"]["service.name"] == "unknown_service" and r["attributes"].get("log.malformed") == reason
        and r["body"] == body, 1)
    assert exported
    health = proc.health()
    assert health["kafka"]["tail"]["records_malformed"] == 1
    assert health["kafka"]["forward"]["records_malformed"] == 1
    samples = scrape(proc)
    assert metric(samples, "logger_records_malformed_total", path="tail") == 1
    assert metric(samples, "logger_records_malformed_total", path="forward") == 1


def _hello(client, timeout: float = 5.0) -> dict:
    """The client's first message, once it came."""
    return wait_until(lambda: client.messages and client.messages[0], timeout, "the hello message")


def _committed(kafka, group: str, topic_name: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offsets, read without joining the group."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic_name, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def test_the_tail_picks_up_partitions_added_later(kafka, topic, service, ws_client, run_id):
    name = topic(1)
    proc = service(name, KAFKA_PARTITION_REFRESH_MS="500")
    client = ws_client(proc.ws_url)
    kafka.add_partitions(name, 3)
    proc.wait_until(lambda: proc.health()["kafka"]["tail"].get("partitions") == 3, 20, "3 partitions")
    produce(kafka, name, log_values(run_id, 9), partition_of=lambda i: i % 3)
    records = client.wait_records(9, where=of_run(run_id))
    assert {r["partition"] for r in records} == {0, 1, 2}


def test_a_new_group_with_latest_forwards_only_what_comes_after_it_joined(kafka, topic, service, receiver, run_id):
    name = topic(1)
    produce(kafka, name, log_values(run_id, 10))  # the backlog, before the group exists
    service(name, KAFKA_AUTO_OFFSET_RESET="latest")
    mine = of_run(run_id)
    # The position is resolved at the reader's first fetch after it joined: records produced in
    # that instant may be skipped too, so produce new ones until some arrive (a bounded loop).
    for attempt in range(5):
        produce(kafka, name, log_values(run_id, 5, start=100 + 5 * attempt))
        try:
            receiver.wait_for_matching(lambda r: mine(r) and r["attributes"]["seq"] >= 100, 1, timeout=10)
            break
        except TimeoutError:
            continue
    else:
        pytest.fail("nothing produced after the group joined was forwarded")
    # One partition, read in order: a backlog being forwarded would have arrived first.
    exported = [r["attributes"]["seq"] for r in receiver.wait_for_matching(mine, 1, timeout=1)]
    assert min(exported) >= 100, f"the backlog was forwarded: {sorted(exported)}"


def test_a_path_switched_off_reads_nothing_and_says_so(kafka, topic, service, ws_client, receiver, run_id):
    name = topic(1)
    tail_only = service(name, FORWARD_ENABLED="false")
    forward_only = service(name, TAIL_ENABLED="false")
    client = ws_client(tail_only.ws_url)
    n = 30
    produce(kafka, name, [json.dumps({"run": run_id, "seq": i, "message": "m"}).encode() for i in range(n)])
    assert len(client.wait_records(n)) == n
    exported = receiver.wait_for_matching(lambda r: r["attributes"].get("run") == run_id, n)
    assert sorted(r["attributes"]["seq"] for r in exported) == list(range(n)), "once: only one service forwards"
    forward_only.wait_until(lambda: forward_only.health()["kafka"]["forward"].get("records_committed") == n, 10,
                            "the forward-only service to commit")
    # Once both running paths have everything, the switched-off ones have read nothing.
    for proc, off, on in ((tail_only, "forward", "tail"), (forward_only, "tail", "forward")):
        samples = scrape(proc)
        assert metric(samples, "logger_records_consumed_total", path=off) == 0
        assert metric(samples, "logger_records_consumed_total", path=on) == n
        health = proc.health()
        assert health["kafka"][off]["state"] == "disabled" and health["status"] == "ok"
    assert tail_only.health()["collector"]["state"] == "disabled"
