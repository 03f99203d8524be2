"""The Flask app factory: routes, CORS, and room for other teams' blueprints."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, jsonify
from prometheus_client.metrics import MetricWrapperBase

from logger import metrics
from logger.app import create_app, service_of
from logger.config import Settings
from logger.service import LogService


def make_app():
    return create_app(Settings.from_env({"FRONTEND_URL": "https://shop.example.com"}))


def test_liveness_and_health():
    client = make_app().test_client()
    assert client.get("/").json["status"] == "ok"
    health = client.get("/health").json
    assert health["clients"] == 0
    assert {"status", "version", "uptime_seconds", "kafka", "collector", "hub"} <= set(health)
    assert health["kafka"]["tail"]["state"] == "starting"


def test_health_never_shows_a_password_in_the_collector_url():
    app = create_app(Settings.from_env({"OTLP_ENDPOINT": "https://logs:s3cret-pass@collector.example.com:4318"}))
    shown = app.test_client().get("/health").json["collector"]["endpoint"]
    assert "s3cret" not in shown and shown == "https://logs:<not shown>@collector.example.com:4318/v1/logs"


def test_cors_only_for_the_configured_origins():
    client = make_app().test_client()
    ok = client.get("/health", headers={"Origin": "https://shop.example.com"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    other = client.get("/health", headers={"Origin": "https://elsewhere.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_a_plain_get_on_ws_asks_for_an_upgrade():
    response = make_app().test_client().get("/ws")
    assert response.status_code == 426 and response.headers["Upgrade"] == "websocket"


def test_other_teams_add_blueprints_without_touching_the_package():
    app = make_app()
    extra = Blueprint("orders", __name__)

    @extra.get("/api/orders/ping")
    def ping():
        return jsonify(clients=len(service_of(app).hub))
    app.register_blueprint(extra)
    assert app.test_client().get("/api/orders/ping").json == {"clients": 0}


def test_building_the_app_starts_nothing():
    app = make_app()
    assert not service_of(app)._started


TOKEN = "unit-test-ingest-token-0123"


def ingest_app(monkeypatch, publish):
    settings = Settings.from_env({"INGEST_TOKEN": TOKEN})
    service = LogService(settings)
    monkeypatch.setattr(service, "publish", publish)  # before create_app: the route is handed it
    return create_app(settings, service).test_client()


def post(client, body):
    return client.post("/api/logs", json=body, headers={"Authorization": f"Bearer {TOKEN}"})


def test_ingest_accepts_up_to_its_limit_and_answers_413_past_it(monkeypatch):
    published: list[list] = []
    client = ingest_app(monkeypatch, lambda records: published.append(records) or len(records))
    ok = post(client, [{"message": f"m{i}"} for i in range(1000)])
    assert (ok.status_code, ok.json) == (202, {"accepted": 1000})
    too_many = post(client, [{"message": "m"}] * 1001)
    assert too_many.status_code == 413 and "at most 1000" in too_many.json["error"]
    assert [len(batch) for batch in published] == [1000], "nothing of the refused request reached Kafka"


def test_ingest_answers_503_when_kafka_does_not_take_the_records(monkeypatch):
    from logger.kafka_sink import PublishError

    def publish(records):
        raise PublishError("Kafka did not acknowledge 1 record within 10 s")
    response = post(ingest_app(monkeypatch, publish), {"message": "x"})
    assert response.status_code == 503 and "did not acknowledge" in response.json["error"]


def test_every_prometheus_series_the_readme_names_is_exposed_with_its_labels():
    """The README's ``GET /metrics`` list, against what the route serves (in-process registry)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("* `GET /metrics`"):readme.index("* `POST /api/logs`")]
    named = dict(re.findall(r"`(logger_[a-z_]+)(?:\{([a-z_,]+)\})?`", section))
    ours = {c._name for c in vars(metrics).values() if isinstance(c, MetricWrapperBase)}
    assert {series.removesuffix("_total") for series in named} == ours, "README and logger/metrics.py agree"
    body = make_app().test_client().get("/metrics").get_data(as_text=True)
    families = {name: kind for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M)}
    for series, labels in named.items():
        family = series.removesuffix("_total")
        assert series in families, f"{series} is not in /metrics"
        assert (families[series] == "counter") == series.endswith("_total"), (series, families[series])
        collector = next(c for c in vars(metrics).values() if getattr(c, "_name", None) == family)
        declared = set(collector._labelnames)
        if labels:  # pid is added by the multiprocess collector for liveall gauges
            assert set(labels.split(",")) - {"pid"} == declared, series
        else:
            assert declared == set(), series


def test_liveness_names_the_service_and_its_routes():
    import logger
    assert make_app().test_client().get("/").json == {"service": "logger-service", "version": logger.__version__,
                                                      "status": "ok", "websocket": "/ws", "health": "/health"}


def test_readiness_waits_for_each_enabled_reader_and_not_for_a_disabled_one():
    app = create_app(Settings.from_env({"FORWARD_ENABLED": "false"}))
    client, service = app.test_client(), service_of(app)
    starting = client.get("/ready")
    assert starting.status_code == 503
    assert starting.json == {"ready": False, "waiting": {"service": "starting", "tail": "starting"}}
    service._started = True  # what start() sets once the readers are spawned
    service.tail.set("degraded", "no broker")
    assert client.get("/ready").json["waiting"] == {"tail": "degraded: no broker"}
    service.tail.set("ok")
    ready = client.get("/ready")
    assert (ready.status_code, ready.json) == (200, {"ready": True, "waiting": {}})
    service._stopping = True  # what stop() sets first
    assert client.get("/ready").json["waiting"] == {"service": "draining"}


def test_health_is_degraded_while_any_part_is():
    app = create_app(Settings())
    service = service_of(app)
    for part in (service.tail, service.forward):
        part.set("ok")
    assert app.test_client().get("/health").json["status"] == "ok", "the collector idle is healthy"
    service.collector.set("degraded", "HTTP 503")
    health = app.test_client().get("/health").json
    assert health["status"] == "degraded" and health["collector"]["error"] == "HTTP 503"
    assert health["collector"]["endpoint"] == "http://localhost:4318/v1/logs"
    assert health["kafka"]["brokers"] == ["localhost:9092"] and health["kafka"]["topic"] == "logs"


def test_metrics_are_prometheus_text_and_bodies_over_a_mebibyte_are_refused():
    app = create_app(Settings.from_env({"INGEST_TOKEN": TOKEN}))
    response = app.test_client().get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    too_big = app.test_client().post("/api/logs", data=b"x" * ((1 << 20) + 1),
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert too_big.status_code == 413
