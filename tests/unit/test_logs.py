"""LOG_FORMAT and LOG_LEVEL: one line per event, JSON or text, Gunicorn's lines included."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from logger import logs


def emit(log_format: str, name: str = "logger.test", access_log: bool = True, tty: bool = False,
         level: int = logging.WARNING, args=None, monkeypatch=None) -> str:
    stream = io.StringIO()
    stream.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(logs.sys, "stderr", stream)
    config = logs.gunicorn_logconfig("info", log_format, access_log)
    config["handlers"]["stderr"]["stream"] = stream
    logging.config.dictConfig(config)
    logging.getLogger(name).log(level, "hello %s" if args is None else "%(h)s", args or "world")
    return stream.getvalue()


def test_json_is_one_object_per_line_with_the_documented_fields(monkeypatch):
    out = emit("json", monkeypatch=monkeypatch)
    (line,) = out.splitlines()
    event = json.loads(line)
    assert {"time", "level", "logger", "pid", "message"} == set(event)
    assert (event["level"], event["logger"], event["message"]) == ("warning", "logger.test", "hello world")


def test_text_is_one_human_line(monkeypatch):
    out = emit("text", monkeypatch=monkeypatch)
    (line,) = out.splitlines()
    assert line.endswith("[WARNING] logger.test: hello world") and not line.startswith("{")


@pytest.mark.parametrize("tty, json_expected", [(False, True), (True, False)])
def test_auto_is_json_unless_stderr_is_a_terminal(monkeypatch, tty, json_expected):
    line = emit("auto", tty=tty, monkeypatch=monkeypatch).strip()
    assert line.startswith("{") == json_expected


def test_access_lines_carry_the_request_fields_and_can_be_switched_off(monkeypatch):
    atoms = {"h": "203.0.113.7", "m": "GET", "U": "/health", "s": "200", "B": "17", "a": "curl/8"}
    line = emit("json", "gunicorn.access", level=logging.INFO, args=atoms, monkeypatch=monkeypatch)
    event = json.loads(line)
    assert event["message"] == "request" and event["status"] == 200 and event["bytes"] == 17
    assert (event["client"], event["method"], event["path"], event["user_agent"]) == \
        ("203.0.113.7", "GET", "/health", "curl/8")
    assert emit("json", "gunicorn.access", access_log=False, level=logging.INFO, args=atoms,
                monkeypatch=monkeypatch) == ""


@pytest.fixture(autouse=True)
def restore_logging():
    """Put the loggers the config touched back as they were, for the tests that follow."""
    names = ("logger", "gunicorn.error", "gunicorn.access", "kafka", None)
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name in names for lg in [logging.getLogger(name)]}
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def test_the_logging_config_gunicorn_gets():
    config = logs.gunicorn_logconfig("debug", "text", access_log=False)
    assert config == {
        "version": 1,
        "disable_existing_loggers": False,  # Gunicorn's and kafka-python's loggers exist already
        "formatters": {"service": {"format": logs.TEXT_FORMAT, "datefmt": "%Y-%m-%d %H:%M:%S %z"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "service",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "logger": {"level": "DEBUG", "handlers": ["stderr"], "propagate": False},
            "gunicorn.error": {"level": "DEBUG", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "CRITICAL", "handlers": ["stderr"], "propagate": False},
            "kafka": {"level": "WARNING", "handlers": [], "propagate": False},  # never printed
        },
    }
    assert logs.gunicorn_logconfig("info", "json")["formatters"]["service"] == {"()": logs.JsonFormatter}
    assert logs.gunicorn_logconfig("info", "json")["loggers"]["gunicorn.access"]["level"] == "INFO"


def test_a_json_line_carries_the_record_time_in_utc_and_the_exception():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys
        record = logging.LogRecord("logger.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    record.created, record.msecs = 1_790_000_000.25, 250.0
    event = json.loads(logs.JsonFormatter().format(record))
    assert event["time"] == "2026-09-21T14:13:20.250Z" and event["message"] == "failed here"
    assert event["exception"].startswith("Traceback") and "RuntimeError: boom" in event["exception"]
    plain = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    assert json.loads(logs.JsonFormatter().format(plain))["message"] == "GET /x", "access text without atoms"
    atoms = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, "%(h)s", None, None)
    atoms.args = {"h": "-", "s": "200", "B": "-", "U": "", "a": "7"}
    event = json.loads(logs.JsonFormatter().format(atoms))
    assert event == {**{k: event[k] for k in ("time", "level", "logger", "pid")}, "message": "request",
                     "status": 200, "user_agent": "7"}, "absent atoms are left out; only status and bytes are numbers"
