"""The service's own log lines, and Gunicorn's, in one format: one line per event.

JSON by default (one object per line, for log shippers), text when stderr is
a terminal or ``LOG_FORMAT=text``. Gunicorn's error and access logs go through
the same formatter (``gunicorn_logconfig`` is Gunicorn's ``logconfig_dict``);
an access line carries the request's fields, with the client address as
corrected for trusted proxies (``logger.gunicorn_worker``).

Nothing here ever formats a secret: settings are logged by field, the Kafka
API secret and the ingest token are kept out of ``Settings``' repr, and
kafka-python's own lines (which can name the SASL user) are not printed at all.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
# Gunicorn's access-log atoms worth a field of their own.
_ACCESS_FIELDS = {"h": "client", "m": "method", "U": "path", "q": "query", "s": "status", "B": "bytes",
                  "L": "duration_s", "a": "user_agent", "f": "referer"}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "pid", "message", ...}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            out["message"] = "request"
            for atom, name in _ACCESS_FIELDS.items():
                value = record.args.get(atom, "-")
                if value not in ("-", ""):
                    out[name] = int(value) if name in ("status", "bytes") and str(value).isdigit() else value
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def use_json(log_format: str) -> bool:
    return log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())


def gunicorn_logconfig(level: str = "info", log_format: str = "auto", access_log: bool = True) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for Gunicorn's ``logconfig_dict`` setting."""
    formatter: dict[str, Any] = ({"()": JsonFormatter} if use_json(log_format)
                                 else {"format": TEXT_FORMAT, "datefmt": "%Y-%m-%d %H:%M:%S %z"})
    handler = {"class": "logging.StreamHandler", "formatter": "service", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": formatter},
        "handlers": {"stderr": handler},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "logger": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO" if access_log else "CRITICAL", "handlers": ["stderr"],
                                "propagate": False},
            # kafka-python logs every reconnect attempt; our readers report the same
            # condition once, clearly, in /health and the log (each reader's KafkaClientLog keeps the
            # last of kafka-python's lines to build that message).
            "kafka": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
