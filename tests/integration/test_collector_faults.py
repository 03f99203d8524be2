"""The forward path when the collector is down, slow, rate-limiting or refusing: nothing lost."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from devstack.collector import OtlpReceiver, Reply
from tests.conftest import metric, produce, scrape


@pytest.fixture
def direct_receiver():
    """A collector stand-in of this test's own, scripted answer by answer."""
    with OtlpReceiver() as receiver:
        yield receiver


def values(run_id: str, count: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"run": run_id, "seq": i, "message": f"m{i}"}).encode() for i in range(start, start + count)]


def seqs(records) -> list[int]:
    return sorted(r["attributes"]["seq"] for r in records)


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_outages_are_retried_no_sooner_than_retry_after(kafka, topic, service, direct_receiver,
                                                                       run_id, status):
    name = topic(1)
    direct_receiver.fail_next(3, status=status, retry_after=1)
    proc = service(name, OTLP_ENDPOINT=direct_receiver.endpoint)
    started = time.monotonic()
    produce(kafka, name, values(run_id, 50))
    records = direct_receiver.wait_for(50, timeout=30)
    elapsed = time.monotonic() - started
    assert seqs(records) == list(range(50))
    assert [r.status for r in direct_receiver.request_log[:4]] == [status, status, status, 200]
    assert elapsed >= 3.0, f"three Retry-After: 1 answers were honoured ({elapsed:.1f}s)"
    health = proc.wait_until(lambda: (h := proc.health())["collector"]["state"] == "ok" and h, 10, "ok again")
    assert health["kafka"]["forward"]["export_retries"] == 3
    assert health["collector"]["failed_requests"] == 3
    samples = scrape(proc)
    assert metric(samples, "logger_export_retries_total") == 3, "one per refused attempt, no more"
    assert metric(samples, "logger_records_exported_total") == 50
    assert metric(samples, "logger_records_rejected_total") == 0


def test_a_permanent_rejection_goes_to_the_dead_letter_topic_and_moves_on(kafka, topic, service, direct_receiver,
                                                                         run_id):
    name, dead = topic(1), topic(1)
    direct_receiver.fail_next(1, status=400)
    proc = service(name, OTLP_ENDPOINT=direct_receiver.endpoint, DEAD_LETTER_TOPIC=dead,
                   FORWARD_BATCH_SIZE="10", FORWARD_BATCH_INTERVAL_MS="5000")
    produce(kafka, name, values(run_id, 20))  # two full batches: the first is refused
    accepted = direct_receiver.wait_for(10, timeout=30)
    assert seqs(accepted) == list(range(10, 20))

    consumer = kafka.consumer(dead, auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    dead_lettered = []
    for message in consumer:
        dead_lettered.append(message)
        if len(dead_lettered) == 10:
            break
    consumer.close()
    assert [json.loads(m.value)["seq"] for m in dead_lettered] == list(range(10))
    assert "HTTP 400" in dict(dead_lettered[0].headers)["x-logger-service-error"].decode()
    proc.wait_until(lambda: proc.health()["kafka"]["forward"].get("records_committed") == 20, 10,
                    "the offsets of both batches to be committed")
    assert proc.health()["kafka"]["forward"]["records_dead_lettered"] == 10
    assert "sent to dead-letter topic" in proc.log_text()


def test_a_permanent_rejection_without_a_dead_letter_topic_is_counted_logged_and_moves_on(kafka, topic, service,
                                                                                        direct_receiver, run_id):
    name = topic(1)
    direct_receiver.fail_next(1, status=413)
    proc = service(name, OTLP_ENDPOINT=direct_receiver.endpoint, FORWARD_BATCH_SIZE="10",
                   FORWARD_BATCH_INTERVAL_MS="5000")
    produce(kafka, name, values(run_id, 20))  # two full batches: the first is refused for good
    assert seqs(direct_receiver.wait_for(10, timeout=30)) == list(range(10, 20))
    proc.wait_until(lambda: proc.health()["kafka"]["forward"].get("records_committed") == 20, 10,
                    "the offsets of both batches to be committed")
    samples = scrape(proc)
    assert metric(samples, "logger_records_rejected_total") == 10
    assert metric(samples, "logger_records_exported_total") == 10
    assert metric(samples, "logger_export_retries_total") == 0, "a 413 is not retried"
    assert metric(samples, "logger_records_dead_lettered_total") == 0
    assert proc.health()["kafka"]["forward"]["records_rejected"] == 10
    assert "collector rejected 10 records permanently and DEAD_LETTER_TOPIC is not set" in proc.log_text()
    assert [r.status for r in direct_receiver.request_log] == [413, 200]


def test_an_answer_slower_than_the_otlp_timeout_is_given_up_and_the_batch_retried(kafka, topic, service,
                                                                                   direct_receiver, run_id):
    # The default timeout (10 s) would wait the 3 s out: no retry, no error.
    name = topic(1)
    direct_receiver.responses.append(Reply(delay=3.0))
    proc = service(name, OTLP_ENDPOINT=direct_receiver.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1")
    produce(kafka, name, values(run_id, 10))
    # The slow answer's records were taken all the same (as a real collector would): at-least-once.
    records = direct_receiver.wait_for(20, timeout=30)
    assert Counter(r["attributes"]["seq"] for r in records) == {seq: 2 for seq in range(10)}
    proc.wait_until(lambda: proc.health()["kafka"]["forward"].get("records_committed") == 10, 10, "the commit")
    assert proc.health()["kafka"]["forward"]["export_retries"] == 1
    assert "read timeout=1" in proc.log_text(), "the collector reported degraded with the timeout"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def test_while_an_export_retries_nothing_new_is_read_and_memory_stays_at_one_batch(kafka, topic, service, run_id):
    name = topic(1)
    receiver = OtlpReceiver().start()
    port = receiver.port
    receiver.stop()  # the collector is down from the start
    # No tail: its replay ring would hold records too. The forward path alone is measured.
    proc = service(name, OTLP_ENDPOINT=f"127.0.0.1:{port}", EXPORT_RETRY_MAX_S="1", TAIL_ENABLED="false",
                   FORWARD_BATCH_SIZE="100")
    worker = proc.health()["worker"]
    before = rss_bytes(worker)
    pad = "x" * 4000
    produce(kafka, name, [json.dumps({"run": run_id, "seq": i, "message": pad}).encode() for i in range(5000)])

    def consumed_after_retries(count: int) -> float | None:
        retries = proc.health()["kafka"]["forward"].get("export_retries", 0)
        return metric(scrape(proc), "logger_records_consumed_total", path="forward") if retries >= count else None
    held = proc.wait_until(lambda: consumed_after_retries(3), 20, "three retries")
    assert 0 < held <= 100, "one batch read"
    assert proc.wait_until(lambda: consumed_after_retries(6), 20, "three more retries") == held, "nothing new read"
    grown = rss_bytes(worker) - before
    assert grown < 8 << 20, f"the worker grew by {grown >> 20} MiB while 20 MB waited in Kafka"

    with OtlpReceiver(port=port) as back:  # the collector comes back: Kafka kept the rest
        assert seqs(back.wait_for(5000, timeout=60)) == list(range(5000))


def test_a_collector_outage_never_stalls_the_live_tail_and_loses_nothing(kafka, topic, service, ws_client,
                                                                        run_id):
    name = topic(1)
    receiver = OtlpReceiver().start()
    port = receiver.port
    receiver.stop()  # the collector is down from the start
    proc = service(name, OTLP_ENDPOINT=f"127.0.0.1:{port}", EXPORT_RETRY_MAX_S="1")
    client = ws_client(proc.ws_url)
    produce(kafka, name, values(run_id, 100))
    assert len(client.wait_records(100)) == 100, "the tail streams while the collector is down"

    def degraded():
        collector = proc.health()["collector"]
        return collector if collector["state"] == "degraded" else None
    collector = proc.wait_until(degraded, 20, "the collector to be reported degraded")
    assert "unreachable" in collector["error"] and collector["since"]
    assert proc.health()["kafka"]["forward"].get("records_committed", 0) == 0

    with OtlpReceiver(port=port) as back:  # the collector comes back on the same address
        records = back.wait_for(100, timeout=30)
        assert seqs(records) == list(range(100))
        proc.wait_until(lambda: proc.health()["collector"]["state"] == "ok", 10, "the collector to be ok")


def test_members_joining_and_leaving_while_the_collector_is_down_neither_stop_the_retries_nor_lose_records(
        kafka, topic, service, direct_receiver, run_id):
    """Two rebalances in the middle of an export retry (issues 13 and 15.6).

    The first worker is retrying when a second joins the group and, once it owns
    partitions, leaves it. Each rebalance runs inside the first worker's polls
    between two attempts: the retries must go on, the group must get stable again
    with every partition back, and every record must arrive once the collector is.
    (This did not reproduce the hang that reverted the first merge of this code:
    that needed a join slower than the poll that started it, which
    ``test_kafka_join_fix.py`` shows on its own.)
    """
    name = topic(3)
    group = f"group-{run_id}"
    direct_receiver.fail_next(100_000, status=503)  # down until cleared below
    down = {"OTLP_ENDPOINT": direct_receiver.endpoint, "EXPORT_RETRY_MAX_S": "1"}

    def forward(proc):
        return proc.health()["kafka"]["forward"]

    first = service(name, group=group, **down)
    produce(kafka, name, values(run_id, 300), partition_of=lambda i: i % 3)
    first.wait_until(lambda: forward(first).get("export_retries", 0) >= 2, 30, "the first worker to retry")
    second = service(name, group=group, **down)  # ready once the group is stable with both
    second.wait_until(lambda: forward(second).get("partitions", 0) > 0, 30, "the second worker to own partitions")
    second.signal(15)
    assert second.wait(30) == 0
    retried = forward(first)["export_retries"]
    first.wait_until(lambda: forward(first)["export_retries"] >= retried + 3, 30,
                     "the first worker to go on retrying after both rebalances")
    first.wait_until(lambda: forward(first)["state"] == "ok" and forward(first)["partitions"] == 3, 30,
                     "the first worker to be in a stable group with every partition")

    direct_receiver.clear()  # the collector is back
    records = direct_receiver.wait_for(300, timeout=60)
    assert set(seqs(records)) == set(range(300)), "every record arrives once the collector is back"
