"""A topic that outruns a worker: the live tail sheds to stay within TAIL_MAX_LAG_S, says so,
and the forward path never sheds."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from datetime import datetime

from devstack.java_producer import JavaProducer
from devstack.waiting import wait_until

MAX_LAG_S = 1.0
SLACK_S = 2.5  # fan-out, the test client's own reading and a busy CI machine
BURST = 60_000  # far more than a batch: a backlog behind the stale records
STALL_S = 3 * MAX_LAG_S  # how long the worker is stopped while the burst is written


def age_at_arrival(client) -> list[float]:
    ages = []
    for message, arrived in zip(list(client.messages), list(client.received_at)):
        for record in message.get("records", []) if message["type"] == "logs" else []:
            sent = datetime.fromisoformat(record["time"][:26] + "+00:00").timestamp()
            ages.append(arrived - sent)
    return ages


def test_a_tail_that_falls_behind_skips_ahead_and_never_shows_stale_records(kafka, topic, service, ws_client):
    name = topic(2)
    proc = service(name, TAIL_MAX_LAG_S=str(MAX_LAG_S), FORWARD_ENABLED="false")
    # The client takes one record in a hundred, so its own reading never lags: what it
    # measures is the server's staleness.
    client = ws_client(proc.ws_url + "?attr.sample=1")
    worker = proc.health()["worker"]
    with JavaProducer(kafka.bootstrap, name, compression="lz4") as producer:
        # The worker stops (as under a CPU-starved host or a long pause) while the topic
        # keeps going: when it runs again, what it reads is STALL_S old, with a backlog.
        os.kill(worker, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            for seq in range(BURST):
                producer.send(json.dumps({"timestamp": int(time.time() * 1000), "message": f"burst {seq}",
                                          "sample": int(seq % 100 == 0), "seq": seq, "pad": "p" * 200}).encode(),
                              partition=seq % 2)
                if seq % 5000 == 4999:
                    producer.flush()
            producer.flush()
            wait_until(lambda: time.monotonic() - stopped >= STALL_S, STALL_S + 1, "the stall to last")
        finally:
            os.kill(worker, signal.SIGCONT)

    def accounted() -> int:  # read, or skipped (records read, then dropped as stale, count as both)
        tail = proc.health()["kafka"]["tail"]
        return tail.get("records_in", 0) + tail.get("records_shed", 0)
    wait_until(lambda: accounted() >= BURST, 60, "the tail to read or skip every record",
               lambda: f"{accounted()} of {BURST}")
    # Once caught up, the stream is live again: fresh records arrive fresh.
    with JavaProducer(kafka.bootstrap, name) as producer:
        for seq in range(BURST, BURST + 10):
            producer.send(json.dumps({"timestamp": int(time.time() * 1000), "message": f"after {seq}",
                                      "sample": 1, "seq": seq}).encode(), partition=seq % 2)
        producer.flush()
    client.wait_records(10, where=lambda r: r["attributes"]["seq"] >= BURST)

    gaps = [p for m in client.messages if m["type"] == "gap" for p in m["partitions"]]
    assert gaps and all(g["reason"] == "overload" for g in gaps), gaps
    skipped = sum(g["to"] - g["from"] + 1 for g in gaps)
    ages = age_at_arrival(client)
    assert max(ages) < MAX_LAG_S + SLACK_S, f"oldest record shown was {max(ages):.1f}s old"
    health = proc.health()
    assert health["kafka"]["tail"]["records_shed"] == skipped
    assert "shedding" in health["kafka"]["tail"] and health["status"] == "degraded"
    with urllib.request.urlopen(proc.url + "/metrics", timeout=5) as response:
        assert f"logger_tail_shed_records_total {float(skipped)}" in response.read().decode()

    # A client resuming from before the jump is told about the skipped ranges too.
    resumed = ws_client(proc.ws_url + f"?since={name}:0:0,{name}:1:0&attr.sample=1")
    wait_until(lambda: any(m["type"] == "gap" for m in resumed.messages), 10, "the resume's gap")
    resume_gaps = next(m for m in resumed.messages if m["type"] == "gap")["partitions"]
    assert {g["reason"] for g in resume_gaps} >= {"overload"}


def test_with_replay_off_and_no_client_the_tail_reads_nothing_until_one_connects(
        kafka, topic, service, ws_client, run_id):
    name = topic(2)
    idle = service(name, REPLAY_RECORDS="0", FORWARD_ENABLED="false")
    reference = service(name, FORWARD_ENABLED="false")  # replay on: it reads whatever comes
    wait_until(lambda: "idle" in idle.health()["kafka"]["tail"], 10, "the tail to pause without clients")
    old_ms = int(time.time() * 1000) - 60_000  # before anyone listened, whatever the clocks say
    producer = kafka.producer(linger_ms=5)
    try:
        for seq in range(100):
            producer.send(name, json.dumps({"run": run_id, "seq": seq}).encode(), partition=seq % 2,
                          timestamp_ms=old_ms)
        producer.flush()
        wait_until(lambda: reference.health()["kafka"]["tail"].get("records_in") == 100, 20,
                   "the reference service to read the records")
        assert idle.health()["kafka"]["tail"].get("records_in", 0) == 0, "read while nobody listened"

        client = ws_client(idle.ws_url)
        # At once: what is produced right after a client connects must reach it.
        for seq in range(100, 120):
            producer.send(name, json.dumps({"run": run_id, "seq": seq}).encode(), partition=seq % 2)
        producer.flush()
    finally:
        producer.close()
    records = client.wait_records(20, where=lambda r: r["attributes"].get("run") == run_id)
    assert sorted(r["attributes"]["seq"] for r in records) == list(range(100, 120))
    tail = idle.health()["kafka"]["tail"]
    assert "idle" not in tail and tail["records_in"] == 20
