"""OTEL_EXPORTER_OTLP_CERTIFICATE must win over the CA bundle variables requests reads."""

from __future__ import annotations

from logger.otlp import SessionKeepingItsCa


def test_the_sessions_own_ca_file_wins_over_requests_ca_bundle(monkeypatch, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    session = SessionKeepingItsCa()
    session.verify = str(tmp_path / "collector-ca.pem")
    merged = session.merge_environment_settings("https://collector:4318/v1/logs", {}, None, None, None)
    assert merged["verify"] == str(tmp_path / "collector-ca.pem")
    # Without a CA file of its own, the environment's bundle is used, as requests does.
    assert SessionKeepingItsCa().merge_environment_settings("https://c/", {}, None, None, None)["verify"] == \
        "/etc/ssl/certs/ca-certificates.crt"
