"""LogRecords → ExportLogsServiceRequest (no network)."""

from __future__ import annotations

from logger.otlp import OtlpSink
from logger.records import decode
from logger.status import ComponentStatus


def attrs(key_values) -> dict:
    out = {}
    for kv in key_values:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = value
    return out


def test_one_resource_per_service_with_typed_flattened_attributes(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,service.name=ignored")
    sink = OtlpSink("http://127.0.0.1:9/v1/logs", ComponentStatus("collector"))
    records = [
        decode(b'{"ts": 1790000000, "level": "error", "service": "orders", "message": "boom",'
               b' "http": {"status": 500, "ok": false}, "ms": 1.5, "tags": ["a", "b"]}'),
        decode(b'{"level": "info", "service": "billing", "message": "fine"}', kafka_timestamp_ms=5),
        decode(b'{"service": "orders", "message": "again"}'),
        decode(b"not json", default_service="orders"),
    ]
    request = sink.encode(records)
    by_service = {attrs(rl.resource.attributes)["service.name"]: rl for rl in request.resource_logs}
    assert set(by_service) == {"orders", "billing"}
    orders = by_service["orders"]
    assert attrs(orders.resource.attributes) == {"service.name": "orders", "deployment.environment": "test"}
    first, second, third = orders.scope_logs[0].log_records
    assert first.time_unix_nano == 1790000000 * 10**9
    assert (first.severity_number, first.severity_text) == (17, "ERROR")
    assert first.body.string_value == "boom"
    assert attrs(first.attributes) == {"http.status": 500, "http.ok": False, "ms": 1.5, "tags": ["a", "b"]}
    assert (second.severity_number, second.severity_text) == (0, "")
    assert attrs(third.attributes) == {"log.malformed": "not_json"}
    assert third.body.string_value == "not json"
    billing = by_service["billing"].scope_logs[0].log_records[0]
    assert billing.time_unix_nano == 5 * 10**6
    assert billing.observed_time_unix_nano > 0
