"""Smoke tests for devstack.collector: real Rotel -> in-process OTLP receiver."""
from __future__ import annotations

import gzip
import time

import pytest
import requests
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as PbLogRecord
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from devstack.collector import OtlpReceiver, RotelCollector

pytestmark = pytest.mark.timeout(60)
PROTOBUF = {"Content-Type": "application/x-protobuf"}
T0 = 1_700_000_000_000_000_000  # fixed timestamps: equality, not "close to"


def _av(v: object) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[_av(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=_av(x)) for k, x in v.items()]))
    return AnyValue(string_value=str(v))


def _kvs(d: dict) -> list[KeyValue]:
    return [KeyValue(key=k, value=_av(v)) for k, v in d.items()]


# (service, body, severity_number, severity_text, time, observed, attributes)
RAW = [
    ("a", "started", 9, "INFO", T0 + 1, T0 + 11, {"kafka.partition": 0, "kafka.offset": 41}),
    ("a", "slow call", 13, "WARN", T0 + 2, 0, {"latency.ms": 12.5, "retry": True}),
    ("a", {"msg": "boom", "code": 7}, 17, "ERROR", T0 + 3, T0 + 13, {"tags": ["x", "y"]}),
    ("b", "trace me", 5, "DEBUG", T0 + 4, T0 + 14, {"user": "ü-ñ"}),
    ("b", "", 21, "FATAL", 0, T0 + 15, {}),
]


def _raw_request() -> bytes:
    rls = []
    for svc in ("a", "b"):
        recs = [
            PbLogRecord(body=_av(b), severity_number=sn, severity_text=st, time_unix_nano=t,
                        observed_time_unix_nano=o, attributes=_kvs(at))
            for s, b, sn, st, t, o, at in RAW if s == svc
        ]
        rls.append(ResourceLogs(resource=PbResource(attributes=_kvs({"service.name": svc, "host.name": "h1"})),
                                scope_logs=[ScopeLogs(log_records=recs)]))
    return ExportLogsServiceRequest(resource_logs=rls).SerializeToString()


def _sdk_batch() -> list[ReadableLogRecord]:
    # SDK 1.45.2: export() takes ReadableLogRecord(log_record=opentelemetry._logs.LogRecord, resource=...)
    resource = Resource.create({"service.name": "c"})
    scope = InstrumentationScope("logger-service", "0.1")
    return [
        ReadableLogRecord(
            log_record=LogRecord(timestamp=T0 + 100 + i, observed_timestamp=T0 + 200 + i, body=f"sdk {i}",
                                 severity_number=SeverityNumber.WARN, severity_text="WARNING",
                                 attributes={"i": i, "kafka.topic": "logs"}),
            resource=resource,
            instrumentation_scope=scope,
        )
        for i in range(3)
    ]


def test_rotel_forwards_every_field() -> None:
    with OtlpReceiver() as rx, RotelCollector(rx) as rotel:
        t = time.monotonic()
        resp = requests.post(rotel.endpoint + "/v1/logs", data=_raw_request(), headers=PROTOBUF, timeout=5)
        assert resp.status_code == 200
        rx.wait_for(5, timeout=10)
        latency = time.monotonic() - t

        exporter = OTLPLogExporter(endpoint=rotel.logs_endpoint, compression=Compression.Gzip, timeout=5)
        assert exporter.export(_sdk_batch()) == LogRecordExportResult.SUCCESS
        exporter.shutdown()
        rx.wait_for(8, timeout=10)
        rotel.stop()  # flushes Rotel's batch; nothing may arrive after this
    print(f"latency through rotel: {latency * 1000:.0f} ms")
    assert latency < 2.0  # batch timeout is 10 ms; generous for a loaded 2-core box

    recs = rx.records()
    assert len(recs) == 8
    got = {(r["time_unix_nano"], r["observed_time_unix_nano"]): r for r in recs[:5]}
    assert len(got) == 5
    for svc, body, sn, st, ts, obs, attrs in RAW:
        r = got[(ts, obs)]
        assert (r["body"], r["severity_number"], r["severity_text"], r["attributes"]) == (body, sn, st, attrs)
        assert r["resource"] == {"service.name": svc, "host.name": "h1"}

    sdk = sorted(recs[5:], key=lambda r: r["time_unix_nano"])
    for i, r in enumerate(sdk):
        assert r["body"] == f"sdk {i}"
        assert (r["severity_number"], r["severity_text"]) == (13, "WARNING")
        assert (r["time_unix_nano"], r["observed_time_unix_nano"]) == (T0 + 100 + i, T0 + 200 + i)
        assert r["attributes"] == {"i": i, "kafka.topic": "logs"}
        assert r["resource"]["service.name"] == "c"
        assert r["resource"]["telemetry.sdk.language"] == "python"
        assert r["scope"] == "logger-service"
    assert all(q.status == 200 and q.headers.get("content-encoding") == "gzip" for q in rx.request_log)


def test_receiver_scripted_replies() -> None:
    one = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[
        PbLogRecord(body=_av("x"), severity_number=9)])])]).SerializeToString()
    with OtlpReceiver() as rx:
        rx.fail_next(1, 429, retry_after=3)
        rx.fail_next(1, 503)
        rx.fail_next(1, 400)
        codes = [requests.post(rx.endpoint, data=one, headers=PROTOBUF, timeout=5) for _ in range(3)]
        assert [c.status_code for c in codes] == [429, 503, 400]
        assert codes[0].headers["Retry-After"] == "3"
        assert rx.records() == []  # rejected requests are not "received"

        rx.delay = 0.3
        t = time.monotonic()
        ok = requests.post(rx.endpoint, data=gzip.compress(one), headers={**PROTOBUF, "Content-Encoding": "gzip"})
        assert ok.status_code == 200 and time.monotonic() - t >= 0.3
        assert ok.content == b""  # serialized empty ExportLogsServiceResponse
        rx.delay = 0.0

        bad = requests.post(rx.endpoint, data=b"\xff\xff not protobuf", headers=PROTOBUF, timeout=5)
        assert bad.status_code == 400
        assert [q.status for q in rx.request_log] == [429, 503, 400, 200, 400]
        assert rx.requests == 5 and [r["body"] for r in rx.wait_for(1, timeout=1)] == ["x"]
        rx.clear()
        assert rx.records() == [] and rx.requests == 0


def test_start_failure_reports_log_tail() -> None:
    with pytest.raises(RuntimeError, match="no-such-flag"):
        RotelCollector(None, extra_args=["--no-such-flag"]).start(timeout=10)
