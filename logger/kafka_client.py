"""What every Kafka client of the service shares: its configuration, and the words for its failures.

* :func:`connection_config` / :func:`consumer_config`: brokers, security and the
  settings both readers (and the publisher) use.
* :func:`describe_kafka_error`: one line an operator can act on, for ``/health``
  and the log, built from the exception and from what kafka-python logged
  (:class:`KafkaClientLog`, one per reader), and never naming the secret.
* :class:`TopicMissing`: the configured topic does not exist.

Importing it installs :mod:`logger.kafka_join_fix` (a kafka-python 3.0.12 bug
that can keep a consumer group member from ever becoming stable).

The master imports nothing of this (see ``logger.gunicorn_worker``):
kafka-python is imported in the workers, after gevent's monkey-patching.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import errors as kafka_errors

from logger import kafka_join_fix
from logger.config import Settings
from logger.status import iso_time

kafka_join_fix.install()

# kafka-python appends the next retry's delay to its lines; kept in a message, it
# would make every retry look like a new error (and be logged again).
_RETRY_NOISE = re.compile(r"\s*\(backoff [\d.]+ secs\)")
# "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)"
_SSL_ERROR = re.compile(r"\[(?:SSL|X509): (?P<code>[A-Z0-9_]+)\] (?P<text>.+?)\.?(?: \(_ssl\.c:\d+\))?$")


def connection_config(settings: Settings, role: str) -> dict[str, Any]:
    """kafka-python settings every client of ours shares: brokers and security."""
    config: dict[str, Any] = {
        "bootstrap_servers": list(settings.kafka_brokers),
        "client_id": f"logger-service-{role}-{os.getpid()}",
        "security_protocol": settings.kafka_security_protocol,
        "bootstrap_timeout_ms": 10_000,
        "reconnect_backoff_max_ms": 5_000,
    }
    if settings.kafka_sasl:
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_api_key,
                      sasl_plain_password=settings.kafka_api_secret)
    if settings.kafka_ca_file:
        config["ssl_cafile"] = settings.kafka_ca_file
    return config


def consumer_config(settings: Settings, role: str) -> dict[str, Any]:
    return {**connection_config(settings, role), "enable_auto_commit": False,
            "isolation_level": settings.kafka_isolation_level}


class TopicMissing(Exception):
    """The topic named by KAFKA_TOPIC does not exist; the message says so."""


class KafkaClientLog(logging.Handler):
    """Remembers why kafka-python's last connection attempt failed.

    kafka-python 3 retries bootstrap internally and then raises only
    ``KafkaTimeoutError("Unable to bootstrap ...")``; *why* (connection refused,
    SASL authentication failed, TLS handshake) is only logged. We keep the
    last such reason to turn the timeout into a message an operator can act on.

    One per reader, attached to kafka-python's logger while the reader runs
    (:meth:`watching`): a reader that connects clears its own diagnosis, never
    another's. kafka-python's lines do not say which client wrote them, so each
    instance hears them all; what it keeps matters only while its own reader
    fails.
    """

    OUTAGE_WINDOW_S = 8.0  # reconnect attempts come at most 5 s apart (reconnect_backoff_max_ms)

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reason = ""
        # Connection failures of running clients (kafka-python reconnects by itself
        # and raises nothing): the first and last of the current run of them.
        self.outage_started = 0.0
        self.last_failure = 0.0
        self.last_outage: tuple[float, float] | None = None
        # A refused login often surfaces next as a bare "socket disconnected"
        # (the broker hangs up after answering), so an authentication or TLS
        # failure is kept apart and outranks later, vaguer reasons.
        self.security_reason = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a log handler must never raise
            return
        message = _RETRY_NOISE.sub("", message)
        lowered = message.lower()
        if "connection failed" in lowered or "connection lost" in lowered:
            now = time.time()
            if now - self.last_failure > self.OUTAGE_WINDOW_S:
                if self.outage_started:
                    self.last_outage = (self.outage_started, self.last_failure)
                self.outage_started = now
            self.last_failure = now
        if "authentication failed" in lowered or "certificate" in lowered or "ssl" in lowered:
            self.security_reason = message
        # Summaries ("Bootstrap failed", "not ready") would hide the cause.
        elif "failed" in lowered and not message.startswith("Bootstrap failed"):
            self.reason = message

    def clear(self) -> None:
        self.reason = self.security_reason = ""

    @contextmanager
    def watching(self) -> Iterator[KafkaClientLog]:
        """Listen to kafka-python's log while the block runs."""
        kafka_log = logging.getLogger("kafka")
        kafka_log.addHandler(self)
        try:
            yield self
        finally:
            kafka_log.removeHandler(self)

    def outage(self) -> dict[str, Any]:
        """For /health: a current connection outage, and the last one that ended."""
        out: dict[str, Any] = {}
        now = time.time()
        if self.outage_started and now - self.last_failure <= self.OUTAGE_WINDOW_S:
            out["outage"] = {"since": iso_time(self.outage_started),
                             "error": self.security_reason or self.reason or "connection lost"}
        elif self.outage_started:
            out["last_outage"] = {"from": iso_time(self.outage_started), "to": iso_time(self.last_failure)}
        elif self.last_outage:
            out["last_outage"] = {"from": iso_time(self.last_outage[0]), "to": iso_time(self.last_outage[1])}
        return out


def describe_kafka_error(exc: BaseException, settings: Settings, client_log: KafkaClientLog | None = None) -> str:
    """One line an operator can act on; never includes the secret. ``client_log`` holds
    what kafka-python logged about the failure (its exceptions often say less)."""
    brokers = ",".join(settings.kafka_brokers)
    cause = (client_log.security_reason or client_log.reason) if client_log is not None else ""
    reason = f"{exc} {cause}".lower()
    if isinstance(exc, kafka_errors.SaslAuthenticationFailedError) or "authentication" in reason:
        return (f"Kafka authentication failed at {brokers} for API key {settings.kafka_api_key!r} "
                f"({settings.kafka_sasl_mechanism}): check KAFKA_API_KEY and KAFKA_API_SECRET")
    if settings.kafka_sasl and "socket disconnected" in reason and _bootstrap_timeout(exc):
        # The broker answers a refused login and hangs up at once; kafka-python drops bytes
        # that arrive with the hang-up (kafka/net/transport.py, _sock_recv then abort), so a
        # refused SCRAM login mostly reads as a bare disconnect after the connection was made.
        return (f"Kafka at {brokers} closed the connection during the SASL login for API key "
                f"{settings.kafka_api_key!r} ({settings.kafka_sasl_mechanism}), as it does when it refuses "
                "the credentials: check KAFKA_API_KEY and KAFKA_API_SECRET (and KAFKA_SASL_MECHANISM)")
    if isinstance(exc, kafka_errors.AuthorizationError):
        return f"Kafka refused access ({type(exc).__name__}) for topic {settings.kafka_topic!r}"
    if "certificate" in reason or "ssl" in reason:
        return _describe_tls(cause or str(exc), settings, brokers)
    if _bootstrap_timeout(exc):
        return (f"no Kafka broker reachable at {brokers} over {settings.kafka_security_protocol}"
                f"{' (' + cause + ')' if cause else ''}: check KAFKA_BROKER_URL")
    if isinstance(exc, TopicMissing):
        return str(exc)
    return f"Kafka error: {type(exc).__name__}: {exc}"


def _bootstrap_timeout(exc: BaseException) -> bool:
    return isinstance(exc, kafka_errors.KafkaTimeoutError) and "bootstrap" in str(exc).lower()


def _describe_tls(cause: str, settings: Settings, brokers: str) -> str:
    found = _SSL_ERROR.search(cause)
    code, detail = (found["code"], found["text"]) if found else ("", cause)
    if code == "CERTIFICATE_VERIFY_FAILED" and "mismatch" in detail:
        return (f"TLS to Kafka at {brokers} failed: the broker's certificate is not issued for that address "
                f"({detail}): check KAFKA_BROKER_URL")
    if code == "CERTIFICATE_VERIFY_FAILED":
        trusted = (f"KAFKA_SSL_CA_FILE={settings.kafka_ca_file}" if settings.kafka_ca_file
                   else "the system CAs (KAFKA_SSL_CA_FILE is not set)")
        return (f"TLS to Kafka at {brokers} failed: the broker's certificate is not trusted by {trusted} "
                f"({detail}): set KAFKA_SSL_CA_FILE to a PEM file with the CA that signed it")
    if code in ("UNEXPECTED_EOF_WHILE_READING", "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"):
        return (f"TLS to Kafka at {brokers} failed: the broker did not answer TLS ({detail}): check that "
                f"KAFKA_BROKER_URL is a TLS listener, or KAFKA_SECURITY_PROTOCOL "
                f"(now {settings.kafka_security_protocol})")
    return (f"TLS to Kafka at {brokers} failed ({detail}): "
            "check KAFKA_SSL_CA_FILE and KAFKA_SECURITY_PROTOCOL")
