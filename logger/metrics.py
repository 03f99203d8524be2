"""Prometheus metrics (``GET /metrics``), whole-server across Gunicorn workers.

With several workers each process counts for itself; prometheus_client's
multiprocess mode writes the values to files in ``PROMETHEUS_MULTIPROC_DIR``
(set by ``gunicorn.conf.py`` before any worker starts) and ``/metrics`` adds
them up, so a scrape that lands on any worker sees the whole server. Outside
Gunicorn (tests, scripts) the ordinary in-process registry is used.

Names follow Prometheus conventions: ``logger_`` prefix, ``_total`` counters,
base units (``_seconds``, ``_bytes``).
"""

from __future__ import annotations

import glob
import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, \
    generate_latest
from prometheus_client import multiprocess
from prometheus_client.mmap_dict import MmapedDict

RECORDS_CONSUMED = Counter("logger_records_consumed_total", "Records read from Kafka", ["path"])
RECORDS_MALFORMED = Counter("logger_records_malformed_total", "Values that were not a JSON object", ["path"])
UNDECODABLE_BATCHES = Counter("logger_undecodable_batches_total",
                              "Record batches skipped because they could not be decoded", ["path"])
UNDECODABLE_OFFSETS = Counter("logger_undecodable_offsets_total",
                              "Offsets in record batches skipped because they could not be decoded", ["path"])
RECORDS_SHED = Counter("logger_tail_shed_records_total",
                       "Records the live tail skipped to stay within TAIL_MAX_LAG_S of the present")
RECORDS_DELIVERED = Counter("logger_records_delivered_total", "Records sent to WebSocket clients (per client)")
BATCHES_SENT = Counter("logger_batches_sent_total", "Batch messages sent to WebSocket clients (per client)")
BYTES_SENT = Counter("logger_ws_sent_bytes_total", "Bytes of batch messages sent to WebSocket clients")
RECORDS_EXPORTED = Counter("logger_records_exported_total", "Records the collector accepted")
EXPORT_RETRIES = Counter("logger_export_retries_total", "Export attempts that failed and were retried")
RECORDS_DEAD_LETTERED = Counter("logger_records_dead_lettered_total", "Records sent to the dead-letter topic")
RECORDS_REJECTED = Counter("logger_records_rejected_total", "Records refused for good with no dead-letter topic")
EXPORT_SECONDS = Histogram("logger_export_duration_seconds", "Time of one export request to the collector",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
DELAY_SECONDS = Histogram("logger_end_to_end_delay_seconds",
                          "Now minus the record's timestamp when its batch is sent to clients",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
CONSUMER_LAG = Gauge("logger_consumer_lag_records", "Records behind the end, per partition, of the forward group",
                     ["partition"], multiprocess_mode="livesum")
CLIENTS = Gauge("logger_ws_clients", "Connected WebSocket clients", multiprocess_mode="livesum")
DROPPED_BATCHES = Counter("logger_ws_dropped_batches_total", "Batches dropped for slow or paused clients")
CLIENTS_CLOSED = Counter("logger_ws_closed_total", "WebSocket clients closed by the server", ["reason"])
HTTP_REFUSED = Counter("logger_http_refused_total",
                       "Requests refused or cut by a bound (head/body deadline, header bytes, bad handshake)",
                       ["reason"])
READER_UP = Gauge("logger_reader_up", "1 when the reader is connected and reading, per worker", ["path"],
                  multiprocess_mode="liveall")


def reader_counters(path: str) -> dict[str, Counter]:
    """The Prometheus counters behind a reader's /health counters (see ``ComponentStatus.count``)."""
    counters = {"records_in": RECORDS_CONSUMED.labels(path), "records_malformed": RECORDS_MALFORMED.labels(path),
                "undecodable_batches": UNDECODABLE_BATCHES.labels(path),
                "undecodable_offsets": UNDECODABLE_OFFSETS.labels(path)}
    if path == "tail":
        counters["records_shed"] = RECORDS_SHED
    else:
        counters.update(export_retries=EXPORT_RETRIES, records_rejected=RECORDS_REJECTED,
                        records_dead_lettered=RECORDS_DEAD_LETTERED)
    return counters


# The OTLP sink's /health counters that Prometheus counts too.
COLLECTOR_COUNTERS = {"records_exported": RECORDS_EXPORTED}


def observe_delay(record_time_ns: int) -> None:
    if record_time_ns:
        DELAY_SECONDS.observe(max(time.time() - record_time_ns / 1e9, 0.0))


def exposition() -> tuple[bytes, str]:
    """The body and content type of ``GET /metrics``."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def clients_per_worker() -> dict[int, int]:
    """Connected WebSocket clients of every live worker, by pid, read from the workers'
    own gauge files: /health shows the whole server without asking the other workers.
    Empty outside Gunicorn (no multiprocess folder)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return {}
    counts = {}
    master = os.getppid()  # Gunicorn's master imports this module too: its gauges are all 0
    for path in glob.glob(os.path.join(folder, "gauge_livesum_*.db")):
        try:
            values = MmapedDict.read_all_values_from_file(path)
        except FileNotFoundError:  # the worker just died and the master removed its file
            continue
        for key, value, _timestamp, _position in values:
            pid = int(os.path.basename(path)[len("gauge_livesum_"):-len(".db")])
            if key.startswith(_CLIENTS_KEY) and pid != master:
                counts[pid] = int(value)
    return counts


_CLIENTS_KEY = '["logger_ws_clients",'  # how prometheus_client keys the gauge in its files


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (Gunicorn's ``child_exit`` hook)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
