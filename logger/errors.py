"""The service's own exceptions: one base class, a few leaves.

Behaviour travels as attributes (``retriable``), the way kafka-python's
``errors.py`` does it, so callers branch on what an error *means*, not on
which class raised it.
"""

from __future__ import annotations


class LoggerServiceError(Exception):
    """Base class for every error this package raises on purpose."""

    retriable = False


class ConfigError(LoggerServiceError):
    """A setting is missing or malformed. The message is one line that names
    the variable and the accepted form, and never contains a secret."""


class PublishError(LoggerServiceError):
    """Kafka did not take the values (``LogService.publish``); nothing is known to be stored."""

    retriable = True


class ExportError(LoggerServiceError):
    """The collector did not accept a batch.

    ``retriable`` says whether sending the same batch again can succeed
    (connection refused, 429, 5xx) or not (400, 413: the batch itself is bad).
    ``retry_after`` is the collector's ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(self, message: str, *, status: int | None = None,
                 retriable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable
        self.retry_after = retry_after
