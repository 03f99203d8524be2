"""``python -m devstack``: run the service locally, with a Kafka and a collector if none is configured.

* No ``KAFKA_BROKER_URL``: a single-node Kafka (from the Maven Central jars)
  starts on a free loopback port, with the topic created.
* No ``OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_*``: a Rotel collector starts and
  prints every record it receives to its log.
* Then Gunicorn runs the service with the real ``gunicorn.conf.py`` in the
  foreground. Ctrl-C stops everything this command started.

``python -m devstack produce [TEXT ...]`` sends lines (or stdin) to the topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from devstack.service import ROOT

STATE = Path(os.environ.get("LOGGER_SERVICE_CACHE", Path.home() / ".cache" / "logger-service")) / "devstack.env"


def start_dependencies(stack: ExitStack, env: dict[str, str]) -> str:
    """Start what ``env`` does not point at -- a local Kafka (with the topic) and a Rotel
    collector -- on ``stack``, set their addresses in ``env``, and record the broker in STATE
    for ``produce``. Returns the topic. Shared by ``run`` and ``devstack.demo``."""
    topic = env.setdefault("KAFKA_TOPIC", "logs")
    if not env.get("KAFKA_BROKER_URL"):
        from devstack.kafka import KafkaBroker
        print("devstack: starting a local Kafka (first run fetches its jars with Maven) ...", flush=True)
        broker = stack.enter_context(KafkaBroker())
        broker.create_topic(topic, partitions=3)
        env["KAFKA_BROKER_URL"] = broker.bootstrap
        print(f"devstack: Kafka at {broker.bootstrap}, topic {topic!r}, log {broker.log_path}")
    if not any(env.get(v) for v in ("OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                                    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")):
        from devstack.collector import RotelCollector
        collector = stack.enter_context(RotelCollector(forward_to=None, debug_log=True))
        collector.start()
        env["OTLP_ENDPOINT"] = collector.endpoint
        print(f"devstack: OTLP collector (Rotel) at {collector.endpoint}; what it receives: {collector.log_path}")
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(f"KAFKA_BROKER_URL={env['KAFKA_BROKER_URL']}\nKAFKA_TOPIC={topic}\n")
    stack.callback(STATE.unlink, missing_ok=True)
    return topic


def run() -> int:
    env = dict(os.environ)
    with ExitStack() as stack:
        start_dependencies(stack, env)
        port = env.setdefault("PORT", "6006")
        print(f"devstack: service on http://localhost:{port}/health ; live logs: wscat -c ws://localhost:{port}/ws\n"
              f"devstack: send a log line:  .venv/bin/python -m devstack produce '{{\"level\":\"info\","
              f"\"service\":\"demo\",\"message\":\"hello\"}}'", flush=True)
        gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                    cwd=ROOT, env=env)
        try:
            return gunicorn.wait()
        except KeyboardInterrupt:
            gunicorn.send_signal(signal.SIGTERM)  # the terminal's SIGINT reached it too; both drain
            return gunicorn.wait()


def produce(texts: list[str]) -> int:
    from kafka import KafkaProducer
    settings = dict(line.split("=", 1) for line in STATE.read_text().splitlines()) if STATE.exists() else {}
    brokers = os.environ.get("KAFKA_BROKER_URL") or settings.get("KAFKA_BROKER_URL", "localhost:9092")
    topic = os.environ.get("KAFKA_TOPIC") or settings.get("KAFKA_TOPIC", "logs")
    producer = KafkaProducer(bootstrap_servers=brokers.split(","))
    lines = texts or [line.rstrip("\n") for line in sys.stdin]
    for line in lines:
        producer.send(topic, line.encode())
    producer.flush()
    producer.close()
    print(f"devstack: sent {len(lines)} record(s) to {topic!r} at {brokers}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "produce":
        sys.exit(produce(sys.argv[2:]))
    sys.exit(run())
