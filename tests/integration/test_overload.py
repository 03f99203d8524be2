"""A topic that outruns a worker: the live tail sheds to stay within TAIL_MAX_LAG_S, says so,
and the forward path never sheds."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime

from devstack.java_producer import JavaProducer
from devstack.waiting import wait_until

MAX_LAG_S = 1.0
SLACK_S = 2.5  # fan-out, the test client's own reading and a busy CI machine
BURST = 300_000  # several seconds of work for one worker's tail, produced in about one


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
    with JavaProducer(kafka.bootstrap, name, compression="lz4") as producer:
        for seq in range(BURST):
            producer.send(json.dumps({"timestamp": int(time.time() * 1000), "message": f"burst {seq}",
                                      "sample": int(seq % 100 == 0), "seq": seq, "pad": "p" * 200}).encode(),
                          partition=seq % 2)
            if seq % 5000 == 4999:
                producer.flush()
        end = {"timestamp": int(time.time() * 1000), "message": "end", "sample": 1, "seq": BURST}
        producer.send(json.dumps(end).encode(), partition=0)
        producer.flush()
    wait_until(lambda: any(r["attributes"]["seq"] == BURST for r in client.records()), 60, "the last record")

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
