"""ComponentStatus: one state, its error and since when, logged once per change."""

from __future__ import annotations

import logging

from logger import status
from logger.status import ComponentStatus, iso_time


def test_a_change_is_logged_once_and_moves_since(monkeypatch, caplog):
    now = [1_000.0]
    monkeypatch.setattr(status.time, "time", lambda: now[0])
    component = ComponentStatus("collector", since=900.0)
    assert (component.state, component.error) == ("starting", None)
    caplog.set_level(logging.INFO, logger="logger.status")
    now[0] = 1_010.0
    component.set("degraded", "unreachable")
    component.set("degraded", "unreachable")  # a retry: nothing new
    assert [r.getMessage() for r in caplog.records] == ["collector is degraded: unreachable"]
    assert caplog.records[0].levelno == logging.WARNING
    assert component.since == 1_010.0
    now[0] = 1_020.0
    component.set("degraded", "HTTP 503")  # a new error, same state: logged, since kept
    assert component.since == 1_010.0 and component.error == "HTTP 503"
    component.set("ok")
    assert caplog.records[-1].getMessage() == "collector is ok" and caplog.records[-1].levelno == logging.INFO
    assert (component.state, component.error, component.since) == ("ok", None, 1_020.0)
    assert len(caplog.records) == 3


def test_health_view_with_counters_and_the_error_only_when_there_is_one():
    component = ComponentStatus("forward", since=0.0)
    component.count("records_in")
    component.count("records_in", 4)
    assert component.as_dict() == {"state": "starting", "since": "1970-01-01T00:00:00Z", "records_in": 5}
    component.set("degraded", "broken")
    assert component.as_dict()["error"] == "broken"
    assert iso_time(1_790_000_000.9) == "2026-09-21T14:13:20Z"
