"""Writing to Kafka: records that enter through HTTP go to the topic, like any other.

Publishing to the topic rather than straight into this worker's hub is what
keeps the promises: every worker and replica shows the record to its clients,
and the forward path delivers it to the collector. ``publish`` returns once
the broker acknowledged every value, so a 202 means nothing will be lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka import errors as kafka_errors

from logger.config import Settings
from logger.errors import PublishError
from logger.kafka_client import connection_config, describe_kafka_error

log = logging.getLogger(__name__)


class KafkaPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: KafkaProducer | None = None

    def publish(self, values: Iterable[Any], topic: str | None = None, timeout_s: float = 10.0,
                headers: list[tuple[str, bytes]] | None = None) -> int:
        """Send each value (a JSON-able object, or text) and wait for the broker's acks."""
        encoded = [_encode(value) for value in values]
        try:
            producer = self._producer or self._connect()
            futures = [producer.send(topic or self.settings.kafka_topic, value, headers=headers)
                       for value in encoded]
            for future in futures:
                future.get(timeout=timeout_s)
        except kafka_errors.KafkaError as exc:
            raise PublishError(describe_kafka_error(exc, self.settings)) from exc
        return len(encoded)

    def _connect(self) -> KafkaProducer:
        self._producer = KafkaProducer(acks="all", linger_ms=5, **connection_config(self.settings, "publisher"))
        return self._producer

    def close(self, timeout_s: float = 5.0) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout_s)
            except Exception:  # noqa: BLE001 - closing must not fail a shutdown
                log.debug("closing the Kafka producer failed", exc_info=True)
            self._producer = None


def _encode(value: Any) -> bytes:
    if value is None:
        return b""  # a tombstone dead-lettered: the producer needs bytes or a key
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)
