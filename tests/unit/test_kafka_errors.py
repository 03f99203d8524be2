"""What an operator reads when Kafka fails: one actionable line, built from kafka-python's errors
and its log lines (kafka_client.describe_kafka_error and the KafkaClientLog behind it)."""

from __future__ import annotations

import logging

import pytest
from kafka import errors as kafka_errors

from logger import kafka_client
from logger.config import Settings

SETTINGS = Settings(kafka_brokers=("b1:9093", "b2:9093"), kafka_api_key="KEY", kafka_api_secret="s3cret",
                    kafka_security_protocol="SASL_SSL", kafka_topic="orders")
TLS_FAILED = ("Connection failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
              "unable to get local issuer certificate (_ssl.c:1006)")


@pytest.fixture
def client_log():
    return kafka_client.KafkaClientLog()


def saw(handler, message: str) -> None:
    handler.emit(logging.LogRecord("kafka.conn", logging.WARNING, __file__, 1, message, None, None))


def test_failed_authentication_names_the_key_and_the_variables_never_the_secret(client_log):
    line = kafka_client.describe_kafka_error(kafka_errors.SaslAuthenticationFailedError("bad"), SETTINGS, client_log)
    assert line == ("Kafka authentication failed at b1:9093,b2:9093 for API key 'KEY' (PLAIN): "
                    "check KAFKA_API_KEY and KAFKA_API_SECRET")
    saw(client_log, "Authentication failed for user KEY")
    line = kafka_client.describe_kafka_error(kafka_errors.KafkaTimeoutError("Unable to bootstrap"), SETTINGS, client_log)
    assert line.startswith("Kafka authentication failed at b1:9093,b2:9093") and "s3cret" not in line


def test_a_broker_that_hangs_up_during_the_sasl_login_is_reported_as_a_refused_login(client_log):
    scram = Settings(kafka_brokers=("b1:9092",), kafka_api_key="KEY", kafka_api_secret="s3cret",
                     kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
                     kafka_topic="orders")
    saw(client_log, "Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: socket disconnected "
                    "(backoff 0.06 secs)")
    timeout = kafka_errors.KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9092")
    line = kafka_client.describe_kafka_error(timeout, scram, client_log)
    assert line == ("Kafka at b1:9092 closed the connection during the SASL login for API key 'KEY' "
                    "(SCRAM-SHA-512), as it does when it refuses the credentials: check KAFKA_API_KEY and "
                    "KAFKA_API_SECRET (and KAFKA_SASL_MECHANISM)")
    plaintext = Settings(kafka_brokers=("b1:9092",), kafka_topic="orders")
    assert kafka_client.describe_kafka_error(timeout, plaintext, client_log).startswith(
        "no Kafka broker reachable at b1:9092 over PLAINTEXT"), "without SASL there is no login to blame"


def test_an_unreachable_broker_says_why_and_which_variable(client_log):
    timeout = kafka_errors.KafkaTimeoutError("Unable to bootstrap from [('b1', 9093)]")
    assert kafka_client.describe_kafka_error(timeout, SETTINGS, client_log) == \
        "no Kafka broker reachable at b1:9093,b2:9093 over SASL_SSL: check KAFKA_BROKER_URL"
    saw(client_log, "Connection failed: [Errno 111] Connection refused (backoff 0.4 secs)")
    assert kafka_client.describe_kafka_error(timeout, SETTINGS, client_log) == (
        "no Kafka broker reachable at b1:9093,b2:9093 over SASL_SSL "
        "(Connection failed: [Errno 111] Connection refused): check KAFKA_BROKER_URL")


def test_refused_access_and_other_errors(client_log):
    assert kafka_client.describe_kafka_error(kafka_errors.TopicAuthorizationFailedError(), SETTINGS, client_log) == \
        "Kafka refused access (TopicAuthorizationFailedError) for topic 'orders'"
    missing = kafka_client.TopicMissing("Kafka topic 'orders' does not exist")
    assert kafka_client.describe_kafka_error(missing, SETTINGS, client_log) == "Kafka topic 'orders' does not exist"
    assert kafka_client.describe_kafka_error(kafka_errors.UnknownTopicOrPartitionError("x"), SETTINGS, client_log) == \
        "Kafka error: UnknownTopicOrPartitionError: [Error 3] UnknownTopicOrPartitionError: x"


@pytest.mark.parametrize("cause, expected", [
    (TLS_FAILED, "TLS to Kafka at b1:9093,b2:9093 failed: the broker's certificate is not trusted by the system "
                 "CAs (KAFKA_SSL_CA_FILE is not set) (certificate verify failed: unable to get local issuer "
                 "certificate): set KAFKA_SSL_CA_FILE to a PEM file with the CA that signed it"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, certificate is not valid "
     "for 'b1'. (_ssl.c:1006)",
     "TLS to Kafka at b1:9093,b2:9093 failed: the broker's certificate is not issued for that address "
     "(certificate verify failed: Hostname mismatch, certificate is not valid for 'b1'): check KAFKA_BROKER_URL"),
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",
     "TLS to Kafka at b1:9093,b2:9093 failed: the broker did not answer TLS (wrong version number): check that "
     "KAFKA_BROKER_URL is a TLS listener, or KAFKA_SECURITY_PROTOCOL (now SASL_SSL)"),
    ("[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol (_ssl.c:1006)",
     "TLS to Kafka at b1:9093,b2:9093 failed: the broker did not answer TLS (EOF occurred in violation of "
     "protocol): check that KAFKA_BROKER_URL is a TLS listener, or KAFKA_SECURITY_PROTOCOL (now SASL_SSL)"),
    ("ssl handshake went wrong",
     "TLS to Kafka at b1:9093,b2:9093 failed (ssl handshake went wrong): check KAFKA_SSL_CA_FILE and "
     "KAFKA_SECURITY_PROTOCOL"),
])
def test_tls_failures_say_what_to_fix(client_log, cause, expected):
    saw(client_log, cause)
    timeout = kafka_errors.KafkaTimeoutError("Unable to bootstrap")
    assert kafka_client.describe_kafka_error(timeout, SETTINGS, client_log) == expected


def test_a_wrong_ca_file_is_named(client_log):
    saw(client_log, TLS_FAILED)
    with_ca = Settings(kafka_brokers=("b1:9093",), kafka_ca_file="/etc/ca.pem")
    line = kafka_client.describe_kafka_error(kafka_errors.KafkaTimeoutError("Unable to bootstrap"), with_ca, client_log)
    assert "is not trusted by KAFKA_SSL_CA_FILE=/etc/ca.pem (" in line


def test_a_security_failure_outranks_the_vaguer_lines_after_it_until_cleared(client_log):
    saw(client_log, "Authentication failed for user KEY")
    saw(client_log, "Connection failed: socket disconnected")
    assert client_log.security_reason == "Authentication failed for user KEY"
    assert client_log.reason == "Connection failed: socket disconnected"
    saw(client_log, "Bootstrap failed: not ready")  # a summary never replaces the cause
    assert client_log.reason == "Connection failed: socket disconnected"
    client_log.clear()
    assert client_log.reason == client_log.security_reason == ""


def test_connection_outages_are_reported_while_they_last_and_after(client_log, monkeypatch):
    now = [1_000.0]
    monkeypatch.setattr(kafka_client.time, "time", lambda: now[0])
    assert client_log.outage() == {}
    saw(client_log, "Connection lost to b1:9093")
    now[0] += 3
    saw(client_log, "Connection failed: refused")
    now[0] += client_log.OUTAGE_WINDOW_S  # exactly the window after the last failure: still on
    current = client_log.outage()["outage"]
    assert current["since"] == kafka_client.iso_time(1_000.0) and current["error"] == "Connection failed: refused"
    now[0] += 0.5
    assert client_log.outage() == {"last_outage": {"from": kafka_client.iso_time(1_000.0),
                                                   "to": kafka_client.iso_time(1_003.0)}}
    now[0] += 100
    saw(client_log, "Connection failed: again")  # a new outage: the old one is remembered
    assert client_log.outage()["outage"]["since"] == kafka_client.iso_time(now[0])
    assert client_log.last_outage == (1_000.0, 1_003.0)
