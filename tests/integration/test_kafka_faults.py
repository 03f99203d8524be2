"""Kafka misbehaving under the service: a broker restart, a rebalance, a slow export."""

from __future__ import annotations

import json
import threading
import time

from devstack.collector import OtlpReceiver
from tests.conftest import produce


def values(run_id: str, start: int, count: int) -> list[bytes]:
    return [json.dumps({"run": run_id, "seq": i, "message": f"m{i}"}).encode() for i in range(start, start + count)]


def of_run(run_id: str):
    return lambda r: r["attributes"].get("run") == run_id


def test_an_export_longer_than_the_session_timeout_keeps_the_member_in_its_group(kafka, topic, service, run_id):
    name = topic(1)
    with OtlpReceiver() as slow:
        slow.fail_next(1, status=200, delay=9.0)  # the first export takes 9 s; the session times out after 6
        proc = service(name, OTLP_ENDPOINT=slow.endpoint, KAFKA_SESSION_TIMEOUT_MS="6000",
                       OTEL_EXPORTER_OTLP_TIMEOUT="20")
        produce(kafka, name, values(run_id, 0, 20))
        slow.wait_for(20, timeout=30)
        produce(kafka, name, values(run_id, 20, 20))
        records = slow.wait_for(40, timeout=30)
        forward = proc.wait_until(lambda: (f := proc.health()["kafka"]["forward"]).get("records_committed") == 40
                                  and f, 15, "all offsets committed")
    assert sorted(r["attributes"]["seq"] for r in records) == list(range(40)), "once each: no rebalance re-read"
    assert forward.get("commit_failures", 0) == 0
    assert forward["state"] == "ok"


def test_a_broker_restart_mid_stream_loses_nothing(kafka, topic, service, ws_client, receiver, run_id):
    name = topic(2)
    proc = service(name, EXPORT_RETRY_MAX_S="1")
    client = ws_client(proc.ws_url)
    produce(kafka, name, values(run_id, 0, 500), partition_of=lambda i: i % 2)
    client.wait_records(500)

    kafka.stop()
    outage = proc.wait_until(lambda: proc.health()["kafka"].get("outage"), 20, "/health to show the outage")
    assert proc.health()["status"] == "degraded" and outage["since"]
    kafka.start()

    produce(kafka, name, values(run_id, 500, 500), partition_of=lambda i: i % 2)
    live = client.wait_records(1000, timeout=60)
    assert sorted(r["attributes"]["seq"] for r in live) == list(range(1000)), "the tail resumed"
    exported = receiver.wait_for_matching(of_run(run_id), 1000, timeout=60)
    assert set(r["attributes"]["seq"] for r in exported) == set(range(1000)), "the forward path lost nothing"
    assert proc.health()["kafka"]["tail"]["state"] == "ok"
    recovered = proc.wait_until(lambda: proc.health()["kafka"].get("last_outage"), 20, "/health to show recovery")
    assert recovered["from"] <= recovered["to"] and proc.health()["status"] == "ok"


def test_a_second_instance_in_the_group_takes_partitions_without_loss(kafka, topic, service, receiver, run_id):
    name = topic(4)
    group = f"group-{run_id}"
    first = service(name, group=group)
    stop = threading.Event()
    produced: list[int] = []

    def producer() -> None:
        producer = kafka.producer(linger_ms=5)
        seq = 0
        while not stop.is_set() and seq < 20_000:
            producer.send(name, values(run_id, seq, 1)[0], partition=seq % 4)
            produced.append(seq)
            seq += 1
            if seq % 100 == 0:
                producer.flush()
                time.sleep(0.01)
        producer.flush()
        producer.close()
    thread = threading.Thread(target=producer)
    thread.start()
    try:
        receiver.wait_for_matching(of_run(run_id), 500, timeout=30)
        at_join = len(produced)
        second = service(name, group=group)  # joins: the group rebalances mid-stream
        second.wait_until(lambda: second.health()["kafka"]["forward"].get("partitions", 0) > 0, 30,
                          "the second instance to own partitions")
        second.wait_until(lambda: len(produced) >= at_join + 2000 or not thread.is_alive(), 60,
                          "production to go on across the rebalance")
    finally:
        stop.set()
        thread.join(30)
    wanted = set(produced)

    def all_arrived():
        return wanted <= {r["attributes"]["seq"] for r in receiver.records() if of_run(run_id)(r)}
    first.wait_until(all_arrived, 60, "every produced record at the collector")
    assert first.health()["kafka"]["forward"]["partitions"] + second.health()["kafka"]["forward"]["partitions"] == 4


def test_an_unknown_topic_and_an_unreachable_broker_are_reported_clearly(kafka, service):
    from devstack.ports import free_port
    missing = service("no-such-topic", wait_ready=False)
    missing.launch()
    nowhere = service("logs", wait_ready=False, KAFKA_BROKER_URL=f"127.0.0.1:{free_port()}")
    nowhere.launch()

    def error_of(proc, words):
        def check():
            health = proc.health()
            error = health and health["kafka"]["tail"].get("error", "")
            return error if error and words in error else None
        return check
    assert "KAFKA_TOPIC" in missing.wait_until(error_of(missing, "does not exist"), 40, "the missing topic")
    assert "KAFKA_BROKER_URL" in nowhere.wait_until(error_of(nowhere, "no Kafka broker reachable"), 40,
                                                    "the unreachable broker")
    for proc in (missing, nowhere):
        assert proc.proc.poll() is None, "the process keeps running and serving"
        assert "Traceback" not in proc.log_text()


def test_sigterm_while_the_collector_hangs_ends_in_time_and_commits_nothing_unexported(kafka, topic, service,
                                                                                      receiver, run_id):
    name = topic(1)
    group = f"group-{run_id}"
    with OtlpReceiver() as hanging:
        hanging.delay = 60.0  # every export hangs
        proc = service(name, group=group, OTLP_ENDPOINT=hanging.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="60")
        produce(kafka, name, values(run_id, 0, 200))
        hanging.wait_started(1, timeout=20)  # an export is in flight
        started = time.monotonic()
        proc.signal(15)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 15, "inside graceful_timeout"
    from tests.integration.test_pipeline import _committed
    assert _committed(kafka, group, name, 1) == {0: None}, "nothing committed: nothing was accepted"
    service(name, group=group)  # a healthy collector now: the next owner forwards everything
    exported = receiver.wait_for_matching(of_run(run_id), 200, timeout=30)
    assert set(r["attributes"]["seq"] for r in exported) == set(range(200))
