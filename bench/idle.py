"""What the live tail costs with nobody listening (issue #15, "no work without readers").

One worker, forward path off, no WebSocket client, a topic fed at a steady rate.
``REPLAY_RECORDS=0``: the tail pauses its partitions until a client connects.
The same service with a replay ring (``REPLAY_RECORDS=5000``) must keep reading
and decoding to fill it: that is what every worker paid before, with or
without clients. Both run in the same invocation, one after the other, and the
table shows the worker's CPU per second of each.

    .venv/bin/python -m bench.idle [--rate 2000] [--seconds 15] [--json /tmp/idle.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.procstat import cpu_seconds, make_record
from devstack.kafka import KafkaBroker
from devstack.service import ServiceProcess


def run(kafka: KafkaBroker, topic: str, replay_records: int, rate: int, seconds: float) -> dict[str, Any]:
    service = ServiceProcess({"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": topic, "FORWARD_ENABLED": "false",
                              "REPLAY_RECORDS": str(replay_records), "ACCESS_LOG": "false"})
    service.start(ready=lambda health: health["kafka"]["tail"]["state"] == "ok")
    try:
        pid = service.health()["worker"]
        producer = kafka.producer(linger_ms=5)
        began, cpu_before, sent = time.monotonic(), cpu_seconds(pid), 0
        while (elapsed := time.monotonic() - began) < seconds:
            while sent < elapsed * rate:
                producer.send(topic, make_record(sent, 300))
                sent += 1
            time.sleep(0.005)
        producer.flush()
        producer.close()
        cpu = cpu_seconds(pid) - cpu_before
        tail = service.health()["kafka"]["tail"]
        return {"replay_records": replay_records, "records_produced": sent, "seconds": round(elapsed, 2),
                "worker_cpu_percent": round(100 * cpu / elapsed, 1), "records_read": tail.get("records_in", 0)}
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=2000, help="records per second produced")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", default="/tmp/bench-idle.json")
    args = parser.parse_args()
    with KafkaBroker() as kafka:
        kafka.start()
        results = []
        for replay_records in (0, 5000):
            topic = f"idle-{replay_records}-{int(time.time())}"
            kafka.create_topic(topic, 3)
            results.append(run(kafka, topic, replay_records, args.rate, args.seconds))
    idle, reading = results
    print(f"\nno clients, {args.rate:,} records/s for {args.seconds:g} s, forward path off\n")
    print("| REPLAY_RECORDS | records read by the tail | worker CPU |")
    print("|---:|---:|---:|")
    for r in results:
        print(f"| {r['replay_records']} | {r['records_read']:,} of {r['records_produced']:,} | "
              f"{r['worker_cpu_percent']} % |")
    ratio = idle["worker_cpu_percent"] / reading["worker_cpu_percent"] if reading["worker_cpu_percent"] else 0
    print(f"\nidle / reading CPU: {ratio:.2f}")
    with open(args.json, "w") as f:
        json.dump({"rate": args.rate, "seconds": args.seconds, "results": results}, f, indent=2)
    print(f"raw results: {args.json}")


if __name__ == "__main__":
    main()
