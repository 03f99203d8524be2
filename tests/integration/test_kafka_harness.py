"""Smoke tests for devstack.kafka: a real KRaft broker, driven with kafka-python."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError

from devstack.kafka import KafkaBroker, KafkaHarnessError

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    # Its own broker, not the session one: test_restart stops it mid-module.
    with KafkaBroker() as kafka:
        yield kafka


def new_topic(broker: KafkaBroker, partitions: int = 1) -> str:
    name = f"harness-{uuid.uuid4().hex[:8]}"
    broker.create_topic(name, partitions)
    return name


def produce(broker: KafkaBroker, topic: str, values: list[bytes], *, sasl: bool = False) -> None:
    producer = broker.producer(**broker.client_config(sasl=sasl))
    try:
        for future in [producer.send(topic, v) for v in values]:
            future.get(timeout=30)
    finally:
        producer.close()


def consume(broker: KafkaBroker, topic: str, count: int, *, sasl: bool = False,
            timeout: float = 20.0) -> list[bytes]:
    """Read ``count`` records from the start of every partition, without a group."""
    consumer = KafkaConsumer(**broker.client_config(sasl=sasl), enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
        consumer.seek_to_beginning()
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        return values
    finally:
        consumer.close()


def test_plaintext_round_trip_over_three_partitions(broker: KafkaBroker) -> None:
    topic = new_topic(broker, partitions=3)
    sent = [f"record-{i}".encode() for i in range(10)]
    produce(broker, topic, sent)
    assert sorted(consume(broker, topic, 10)) == sorted(sent)
    assert broker.bootstrap.startswith("127.0.0.1:")


def test_sasl_plain_with_the_right_password(broker: KafkaBroker) -> None:
    topic = new_topic(broker)
    produce(broker, topic, [b"over-sasl"], sasl=True)
    assert consume(broker, topic, 1, sasl=True) == [b"over-sasl"]


def test_sasl_plain_with_a_wrong_password_fails_authentication(
        broker: KafkaBroker, caplog: pytest.LogCaptureFixture) -> None:
    bad = {**broker.client_config(sasl=True), "sasl_plain_password": "not-the-secret"}
    # kafka-python 3.0.12 retries a failed SASL handshake like any bootstrap
    # failure until bootstrap_timeout_ms, then raises KafkaTimeoutError; the
    # SaslAuthenticationFailedError (error 58) only shows in its log, and not on
    # every attempt: the broker may hang up first ("socket disconnected").
    with caplog.at_level(logging.WARNING, logger="kafka"), pytest.raises(KafkaTimeoutError):
        KafkaAdminClient(**bad, bootstrap_timeout_ms=3000)
    assert "SaslAuthenticationFailedError" in caplog.text or "socket disconnected" in caplog.text
    assert "Invalid username or password" in broker.log_path.read_text()


def test_add_partitions(broker: KafkaBroker) -> None:
    topic = new_topic(broker, partitions=1)
    broker.add_partitions(topic, 3)
    consumer = KafkaConsumer(**broker.client_config())
    try:
        assert consumer.partitions_for_topic(topic) == {0, 1, 2}
    finally:
        consumer.close()


def test_restart_keeps_ports_and_data(broker: KafkaBroker) -> None:
    topic = new_topic(broker, partitions=3)
    before = [f"before-{i}".encode() for i in range(5)]
    produce(broker, topic, before)
    address = (broker.bootstrap, broker.sasl_bootstrap)

    broker.restart()

    assert (broker.bootstrap, broker.sasl_bootstrap) == address
    produce(broker, topic, [b"after"])
    assert sorted(consume(broker, topic, 6)) == sorted([*before, b"after"])


def test_restart_after_a_crash_keeps_data(broker: KafkaBroker) -> None:
    topic = new_topic(broker)
    produce(broker, topic, [b"survives-sigkill"])
    broker.kill()
    broker.start()
    assert consume(broker, topic, 1) == [b"survives-sigkill"]


def test_start_failure_reports_the_broker_log() -> None:
    broken = KafkaBroker()
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", broken.port))
        squatter.listen()
        with pytest.raises(KafkaHarnessError, match="Address already in use") as failure:
            broken.start(timeout=60)
        assert str(broken.log_path) in str(failure.value)
    finally:
        squatter.close()
        broken.close()
