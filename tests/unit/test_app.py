"""The Flask app factory: routes, CORS, and room for other teams' blueprints."""

from __future__ import annotations

from flask import Blueprint, jsonify

from logger.app import create_app, service_of
from logger.config import Settings


def make_app():
    return create_app(Settings.from_env({"FRONTEND_URL": "https://shop.example.com"}))


def test_liveness_and_health():
    client = make_app().test_client()
    assert client.get("/").json["status"] == "ok"
    health = client.get("/health").json
    assert health["clients"] == 0
    assert {"status", "version", "uptime_seconds", "kafka", "collector", "hub"} <= set(health)
    assert health["kafka"]["tail"]["state"] == "starting"


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
