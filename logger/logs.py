"""The service's own log lines: one line per event on stderr.

Nothing here ever formats a secret: settings are logged by field, and the
Kafka API secret is excluded from ``Settings``' repr.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging(level: str = "info") -> None:
    """Send the package's loggers to stderr (Gunicorn configures only its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S %z"))
    package = logging.getLogger("logger")
    package.handlers[:] = [handler]
    package.setLevel(level.upper())
    package.propagate = False
    # kafka-python logs every reconnect attempt at ERROR/WARNING; our readers
    # report the same condition once, with a clear message, in /health and here
    # (kafka_source keeps the last of kafka-python's lines to build that message).
    kafka = logging.getLogger("kafka")
    kafka.setLevel(logging.WARNING)
    kafka.propagate = False
