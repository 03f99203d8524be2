"""An OTLP/gRPC endpoint (the Go service's ``localhost:4317``) is recognised and explained (issue 17)."""

from __future__ import annotations

import pytest

from logger import grpc_probe
from logger.config import Settings
from logger.otlp import OtlpSink
from logger.status import ComponentStatus

# What Rotel's gRPC port sent to an HTTP/1.1 request (captured): a SETTINGS frame, then a reset.
ROTEL_SETTINGS = b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x04\x00\x10\x00\x00\x00\x05\x00\x00@\x00"
GOAWAY = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"


@pytest.mark.parametrize("env, written, to_set", [
    ({"OTLP_ENDPOINT": "localhost:4317"}, "OTLP_ENDPOINT=localhost:4317", "OTLP_ENDPOINT=localhost:4318"),
    ({"OTLP_ENDPOINT": "http://otel:4317"}, "OTLP_ENDPOINT=http://otel:4317", "OTLP_ENDPOINT=http://otel:4318"),
    ({"OTLP_ENDPOINT": "[::1]:4317"}, "OTLP_ENDPOINT=[::1]:4317", "OTLP_ENDPOINT=[::1]:4318"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel:4317",
     "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel:4318"),
    ({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://otel:4317/v1/logs"},
     "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=https://otel:4317/v1/logs",
     "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=https://otel:4318/v1/logs"),
])
def test_port_4317_is_kept_and_named_as_grpc_with_the_value_to_set(env, written, to_set):
    settings = Settings.from_env(env)
    assert settings.otlp_names_grpc_port
    assert ":4317" in settings.otlp_endpoint, "kept as given, not rewritten"
    message = settings.otlp_grpc_error
    assert message.startswith(f"{written} is the OTLP/gRPC port")
    assert "this service sends OTLP/HTTP" in message and "usually :4318" in message
    assert message.endswith(to_set) and "\n" not in message


def test_the_http_port_raises_no_warning():
    assert not Settings.from_env({"OTLP_ENDPOINT": "localhost:4318"}).otlp_names_grpc_port
    assert not Settings.from_env({}).otlp_names_grpc_port


def test_a_password_in_the_endpoint_is_not_shown():
    message = Settings.from_env({"OTLP_ENDPOINT": "http://user:hunter2-secret@otel:4317"}).otlp_grpc_error
    assert "hunter2" not in message and "OTLP_ENDPOINT=http://otel:4318" in message


@pytest.mark.parametrize("reply, verdict", [
    (ROTEL_SETTINGS, grpc_probe.HTTP2),
    (GOAWAY, grpc_probe.HTTP2),
    (b"HTTP/1.1 404 Not Found\r\n", grpc_probe.HTTP1),
    (b"HTTP/1.0 400 Bad Request\r\n", grpc_probe.HTTP1),
    (b"", grpc_probe.UNKNOWN),
    (ROTEL_SETTINGS[:5], grpc_probe.UNKNOWN),
    (b"\x15\x03\x03\x00\x02\x02\x50\x00\x00", grpc_probe.UNKNOWN),  # a TLS alert
    (b"\x00\x00\x04\x00\x00\x00\x00\x00\x01", grpc_probe.UNKNOWN),  # DATA on stream 1: not a preface
])
def test_first_bytes_classify_the_server(reply, verdict):
    assert grpc_probe.classify(reply) == verdict


def _sink(endpoint: str, verdict: str, monkeypatch: pytest.MonkeyPatch) -> tuple[OtlpSink, list[tuple]]:
    probes: list[tuple] = []
    monkeypatch.setattr(grpc_probe, "probe", lambda *address: probes.append(address) or verdict)
    settings = Settings.from_env({"OTLP_ENDPOINT": endpoint})
    return OtlpSink(settings.otlp_endpoint, ComponentStatus("collector"), settings.otlp_grpc_error), probes


def test_an_http2_answer_on_any_port_is_grpc_and_probed_once(monkeypatch):
    sink, probes = _sink("otel:9000", grpc_probe.HTTP2, monkeypatch)
    reset = "('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))"
    assert sink._is_grpc(reset) and sink._is_grpc(reset)
    assert probes == [("otel", 9000)]


def test_port_4317_is_grpc_unless_the_probe_hears_http1(monkeypatch):
    sink, probes = _sink("otel:4317", grpc_probe.UNKNOWN, monkeypatch)
    assert sink._is_grpc("Connection refused"), "nothing listens there: still the wrong port"
    assert probes == [], "a refusal is not probed"
    assert sink._is_grpc("Connection reset by peer") and probes == [("otel", 4317)]
    sink, _ = _sink("otel:4317", grpc_probe.HTTP1, monkeypatch)
    assert not sink._is_grpc("Read timed out"), "an OTLP/HTTP receiver mapped to 4317 is not misreported"


def test_other_failures_elsewhere_stay_plain_outages(monkeypatch):
    sink, _ = _sink("otel:4318", grpc_probe.UNKNOWN, monkeypatch)
    assert not sink._is_grpc("Connection reset by peer")
