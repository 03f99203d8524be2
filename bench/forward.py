"""Scenario 6, the forward path: Kafka → OTLP/HTTP → a real collector (Rotel).

Two senders read the same pre-filled topic, one after the other:

* **ours** -- the service under Gunicorn with ``TAIL_ENABLED=false``, a fresh
  consumer group and ``KAFKA_AUTO_OFFSET_RESET=earliest``; done when
  ``/health`` ``kafka.forward.records_committed`` reaches the count;
* **stock OpenTelemetry** -- ``python -m bench.forward stock ...``: kafka-python
  reads the topic and emits each record through the ``logging`` module with the
  SDK's ``LoggingHandler`` + ``BatchLogRecordProcessor`` + ``OTLPLogExporter``
  (opentelemetry-sdk 1.45.2; the handler is deprecated there in favour of
  ``opentelemetry-instrumentation-logging`` but still ships and works).

Both post to the same Rotel collector (``debug_log`` off, ``--logs-batch-max-size``
above the largest batch either side sends), whose OTLP exporter forwards to a
:class:`CountingReceiver` here. The receiver confirms the count: it counts
LogRecords as they arrive (time of the first and last) and afterwards decodes
every request again to count distinct ``seq`` attributes, so a loss or a
duplicate shows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
import warnings
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from bench.procstat import cpu_seconds, make_record, rss_kb

FORWARD_BATCH = 2000  # records per export, both sides (the service's FORWARD_BATCH_SIZE default)
ROTEL_BATCH_MAX = 10_000  # above FORWARD_BATCH: Rotel drops a received batch larger than this
RECORD_BYTES = 300


class CountingReceiver:
    """A minimal OTLP/HTTP logs endpoint that counts LogRecords (decoding with the official classes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bodies: list[bytes] = []
        self.records = 0
        self.requests = 0
        self.first = 0.0
        self.last = 0.0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
                    ExportLogsServiceRequest, ExportLogsServiceResponse)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                req = ExportLogsServiceRequest.FromString(body)
                n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
                now = time.monotonic()
                with owner._lock:
                    owner.bodies.append(body)
                    owner.records += n
                    owner.requests += 1
                    owner.first = owner.first or now
                    owner.last = now
                out = ExportLogsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> CountingReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.bodies, self.records, self.requests, self.first, self.last = [], 0, 0, 0.0, 0.0

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.records >= count:
                return True
            time.sleep(0.02)
        return self.records >= count

    def distinct_seq(self) -> int:
        """Distinct ``seq`` attribute values over everything received (run after timing)."""
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
        seen: set[int] = set()
        for body in self.bodies:
            req = ExportLogsServiceRequest.FromString(body)
            for rl in req.resource_logs:
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        for kv in lr.attributes:
                            if kv.key == "seq":
                                seen.add(kv.value.int_value)
                                break
        return len(seen)


def prefill(kafka: Any, topic: str, count: int, size: int = RECORD_BYTES) -> dict[str, Any]:
    """Create ``topic`` (3 partitions) and write ``count`` records of about ``size`` bytes."""
    kafka.create_topic(topic, 3)
    producer = kafka.producer(linger_ms=20, batch_size=512 * 1024, acks=1)
    began = time.monotonic()
    for seq in range(count):
        producer.send(topic, make_record(seq, size, sent=False))
    producer.flush(timeout=120)
    producer.close()
    return {"records": count, "record_bytes": size, "seconds": round(time.monotonic() - began, 2)}


def _collector_phase(name: str, rx: CountingReceiver, count: int, launch: Any, done: Any,
                     timeout: float) -> dict[str, Any]:
    """Run one sender: ``launch()`` starts it and returns (pid getter, stopper); wait for the count."""
    rx.reset()
    began = time.monotonic()
    pid_of, stop = launch()
    result: dict[str, Any] = {"sender": name}
    try:
        deadline = began + timeout
        finished_at = None
        peak_rss = 0
        cpu = 0.0
        while time.monotonic() < deadline:
            pid = pid_of()
            if pid:
                try:
                    peak_rss = max(peak_rss, rss_kb(pid))
                    cpu = cpu_seconds(pid)
                except (OSError, RuntimeError):
                    pass
            if done() and rx.records >= count:
                finished_at = time.monotonic()
                break
            time.sleep(0.1)
        result.update({
            "complete": finished_at is not None,
            "wall_seconds": round((finished_at or time.monotonic()) - began, 3),
            "received": rx.records, "requests": rx.requests,
            "first_to_last_seconds": round(rx.last - rx.first, 3) if rx.records else None,
            "first_after_launch_seconds": round(rx.first - began, 3) if rx.records else None,
            "sender_cpu_seconds": round(cpu, 2), "sender_peak_rss_kb": peak_rss,
        })
    finally:
        extra = stop()
        if extra:
            result.update(extra)
    result["records_per_s_wall"] = round(count / result["wall_seconds"], 1) if result["complete"] else None
    span = result.get("first_to_last_seconds")
    result["records_per_s_steady"] = round(count / span, 1) if result["complete"] and span else None
    # The stock sender reports its own CPU time at exit (polling /proc misses its last moments).
    cpu = (result.get("report") or {}).get("cpu_seconds") or result["sender_cpu_seconds"]
    result["sender_cpu_seconds"] = cpu
    result["records_per_cpu_s"] = round(count / cpu, 1) if result["complete"] and cpu else None
    result["distinct_seq"] = rx.distinct_seq()
    return result


def run(kafka: Any, count: int, log_dir: str, timeout: float = 600.0) -> dict[str, Any]:
    """Scenario 6: ours vs the stock OpenTelemetry logging path, through one Rotel collector."""
    from devstack.collector import RotelCollector
    from devstack.service import ServiceProcess

    topic = f"forward-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {"records": count, "record_bytes": RECORD_BYTES, "forward_batch": FORWARD_BATCH,
                           "rotel_logs_batch_max_size": ROTEL_BATCH_MAX}
    out["prefill"] = prefill(kafka, topic, count)
    with CountingReceiver() as rx, RotelCollector(rx.base_url, debug_log=False, logs_batch_max_size=ROTEL_BATCH_MAX,
                                                  log_dir=os.path.join(log_dir, "rotel")) as rotel:
        # -- ours ------------------------------------------------------------------------
        svc = ServiceProcess({"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": topic,
                              "KAFKA_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}", "KAFKA_AUTO_OFFSET_RESET": "earliest",
                              "TAIL_ENABLED": "false", "FORWARD_ENABLED": "true",
                              "FORWARD_BATCH_SIZE": str(FORWARD_BATCH), "OTLP_ENDPOINT": rotel.endpoint,
                              "ACCESS_LOG": "false", "LOG_LEVEL": "warning"}, log_dir=log_dir)
        state: dict[str, Any] = {}

        def launch_ours() -> Any:
            svc.launch()

            def pid() -> int | None:
                return state.get("worker")
            return pid, lambda: {"exit_code": svc.stop(), "health": state.get("health")}

        def ours_done() -> bool:
            health = svc.health()
            if health is None:
                return False
            state["worker"] = health["worker"]
            state["health"] = {"forward": health["kafka"]["forward"], "collector": health["collector"]}
            return health["kafka"]["forward"].get("records_committed", 0) >= count

        out["ours"] = _collector_phase("ours", rx, count, launch_ours, ours_done, timeout)

        # -- stock OpenTelemetry logging ------------------------------------------------------
        box: dict[str, Any] = {}

        def launch_stock() -> Any:
            cmd = [sys.executable, "-m", "bench.forward", "stock", "--brokers", kafka.bootstrap, "--topic", topic,
                   "--endpoint", rotel.logs_endpoint, "--count", str(count)]
            box["proc"] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

            def stop() -> dict[str, Any]:
                proc = box["proc"]
                try:
                    stdout, stderr = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    stdout, stderr = proc.communicate()
                report = {}
                for line in stdout.splitlines():
                    if line.startswith("{"):
                        report = json.loads(line)
                return {"exit_code": proc.returncode, "report": report, "stderr_tail": stderr[-2000:]}
            return (lambda: box["proc"].pid), stop

        out["stock"] = _collector_phase("stock", rx, count, launch_stock, lambda: True, timeout)
        out["rotel_log_tail"] = rotel.log_tail(10)
    return out


# -- the stock OpenTelemetry sender (its own process) -----------------------------------------

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL}


def _flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flat(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


class _DropCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.dropped = 0
        self.warnings = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings += 1
        if "Queue full" in record.getMessage():
            self.dropped += 1


def stock_sender(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forward stock")
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)

    from kafka import KafkaConsumer, TopicPartition
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    drops = _DropCounter()
    logging.getLogger("opentelemetry").addHandler(drops)
    provider = LoggerProvider(resource=Resource.create({"service.name": "bench-stock-sender"}))
    # The service's batch size and interval; a queue that holds the whole backlog, because the
    # default (2048) drops whatever the reader gets ahead of the exporter.
    provider.add_log_record_processor(BatchLogRecordProcessor(
        OTLPLogExporter(endpoint=args.endpoint), schedule_delay_millis=500,
        max_export_batch_size=FORWARD_BATCH, max_queue_size=max(args.count, 2048)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=logging.NOTSET, logger_provider=provider)
    log = logging.getLogger("bench.stock")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(handler)

    began = time.monotonic()
    consumer = KafkaConsumer(bootstrap_servers=args.brokers.split(","), group_id=None, enable_auto_commit=False)
    parts = [TopicPartition(args.topic, p) for p in sorted(consumer.partitions_for_topic(args.topic) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    read = 0
    ready = time.monotonic()
    while read < args.count and time.monotonic() - began < 600:
        for messages in consumer.poll(timeout_ms=500, max_records=2000).values():
            for m in messages:
                fields = _flat(orjson.loads(m.value))
                level = _LEVELS.get(str(fields.pop("level", "info")).lower(), logging.INFO)
                message = fields.pop("message", "")
                log.log(level, message, extra=fields)
            read += len(messages)
    emitted = time.monotonic()
    consumer.close()
    provider.force_flush(timeout_millis=120_000)
    provider.shutdown()
    flushed = time.monotonic()
    usage = os.times()
    print(json.dumps({"read": read, "dropped": drops.dropped, "otel_warnings": drops.warnings,
                      "ready_seconds": round(ready - began, 3), "emit_seconds": round(emitted - ready, 3),
                      "flush_seconds": round(flushed - emitted, 3),
                      "cpu_seconds": round(usage.user + usage.system, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["stock"]:
        sys.exit(stock_sender(sys.argv[2:]))
    print("usage: python -m bench.forward stock --brokers B --topic T --endpoint URL --count N", file=sys.stderr)
    sys.exit(2)
