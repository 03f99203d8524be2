"""Settings: defaults, the Go service's names, derived security, one-line errors."""

from __future__ import annotations

import ipaddress

import pytest

from logger.config import Settings
from logger.errors import ConfigError


def test_defaults_match_the_go_service():
    s = Settings.from_env({})
    assert s.port == 6006
    assert s.kafka_topic == "logs"
    assert s.kafka_group_id == "log-events-group"
    assert s.cors_origins == ("http://localhost:3000", "http://localhost:3001", "http://localhost:3002")
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert s.kafka_brokers == ("localhost:9092",)
    assert s.otlp_endpoint == "http://localhost:4318/v1/logs"


def test_api_key_means_sasl_ssl_plain_and_secret_stays_out_of_repr():
    s = Settings.from_env({"KAFKA_API_KEY": "KEY1", "KAFKA_API_SECRET": "s3cr3t-value",
                           "KAFKA_BROKER_URL": "pkc-1.confluent.cloud:9092, pkc-2.confluent.cloud:9092"})
    assert s.kafka_security_protocol == "SASL_SSL"
    assert s.kafka_sasl_mechanism == "PLAIN"
    assert s.kafka_brokers == ("pkc-1.confluent.cloud:9092", "pkc-2.confluent.cloud:9092")
    assert "s3cr3t-value" not in repr(s)


def test_protocol_and_mechanism_overrides():
    s = Settings.from_env({"KAFKA_API_KEY": "k", "KAFKA_API_SECRET": "x",
                           "KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", "KAFKA_SASL_MECHANISM": "scram-sha-512"})
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")


@pytest.mark.parametrize("value, expected", [
    ("collector:4318", "http://collector:4318/v1/logs"),
    ("http://collector:4318", "http://collector:4318/v1/logs"),
    ("https://otel.example.com/", "https://otel.example.com/v1/logs"),
    ("https://otel.example.com/custom/logs", "https://otel.example.com/custom/logs"),
])
def test_otlp_endpoint_forms(value, expected):
    assert Settings.from_env({"OTLP_ENDPOINT": value}).otlp_endpoint == expected


def test_standard_otel_endpoint_variables():
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).otlp_endpoint == \
        "http://c:4318/v1/logs"
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://c:9/x"}).otlp_endpoint == "http://c:9/x"
    assert Settings.from_env({"OTLP_ENDPOINT": "a:1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://b:2"}).otlp_endpoint \
        == "http://a:1/v1/logs"


def test_frontend_origins_are_normalised():
    s = Settings.from_env({"FRONTEND_URL": "https://Shop.example.com/"})
    assert s.cors_origins[0] == "https://shop.example.com"


@pytest.mark.parametrize("env, names", [
    ({"PORT": "abc"}, "PORT='abc'"),
    ({"PORT": "70000"}, "PORT='70000'"),
    ({"KAFKA_BROKER_URL": "http://broker"}, "KAFKA_BROKER_URL"),
    ({"KAFKA_API_KEY": "k"}, "KAFKA_API_SECRET"),
    ({"KAFKA_API_SECRET": "hidden"}, "KAFKA_API_KEY"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_API_KEY"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"OTLP_ENDPOINT": "ftp://x"}, "OTLP_ENDPOINT"),
    ({"FRONTEND_URL": "localhost:3000"}, "FRONTEND_URL"),
    ({"KAFKA_TOPIC": "bad topic"}, "KAFKA_TOPIC"),
    ({"TAIL_ENABLED": "maybe"}, "TAIL_ENABLED"),
    ({"KAFKA_SSL_CA_FILE": "/nonexistent.pem"}, "KAFKA_SSL_CA_FILE"),
    ({"TAIL_BATCH_INTERVAL_MS": "0"}, "TAIL_BATCH_INTERVAL_MS"),
    ({"INGEST_TOKEN": "hidden short"}, "INGEST_TOKEN=<not shown>"),
])
def test_bad_values_name_the_variable_in_one_line(env, names):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert names in message and "\n" not in message
    assert "hidden" not in message


def test_paths_can_be_switched_off():
    s = Settings.from_env({"TAIL_ENABLED": "false", "FORWARD_ENABLED": "0"})
    assert not s.tail_enabled and not s.forward_enabled


@pytest.mark.parametrize("value, expected", [("latest", "latest"), ("LATEST", "latest"), ("earliest", "earliest")])
def test_where_a_new_group_starts(value, expected):
    assert Settings.from_env({"KAFKA_AUTO_OFFSET_RESET": value}).kafka_auto_offset_reset == expected
    assert Settings.from_env({}).kafka_auto_offset_reset == "earliest"
    with pytest.raises(ConfigError, match="KAFKA_AUTO_OFFSET_RESET='none' is invalid: expected one of earliest, latest"):
        Settings.from_env({"KAFKA_AUTO_OFFSET_RESET": "none"})


@pytest.mark.parametrize("name, value, form", [
    ("WS_MAX_MESSAGE_BYTES", "124", "an integer from 125 to 16777216"),
    ("REPLAY_RECORDS", "-1", "an integer from 0 to 1000000"),
    ("KAFKA_SESSION_TIMEOUT_MS", "5999", "an integer from 6000 to 1800000"),
    ("WS_PING_INTERVAL_S", "nan", "a number from 0.1 to 3600"),
    ("EXPORT_RETRY_MAX_S", "0.09", "a number from 0.1 to 3600"),
    ("LOG_FORMAT", "yaml", "one of auto, json, text"),
    ("LOG_LEVEL", "verbose", "one of debug, info, warning, error, critical"),
    ("KAFKA_SASL_MECHANISM", "GSSAPI", "one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ("TRUSTED_PROXIES", "10.0.0.0/33", "a comma-separated list of IP addresses or CIDR networks"),
    ("DEAD_LETTER_TOPIC", "..", "1-249 characters of letters, digits, '.', '_' or '-'"),
    ("MAX_VALUE_BYTES", "1023", "an integer from 1024 to 67108864"),
])
def test_each_bound_is_refused_just_outside_it_with_the_accepted_form(name, value, form):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value) == f"{name}={value!r} is invalid: expected {form}"


@pytest.mark.parametrize("name, value, field, parsed", [
    ("WS_MAX_MESSAGE_BYTES", "125", "max_message_bytes", 125),
    ("REPLAY_RECORDS", "0", "replay_records", 0),
    ("KAFKA_SESSION_TIMEOUT_MS", "6000", "kafka_session_timeout_ms", 6000),
    ("WS_PING_INTERVAL_S", "0.1", "ping_interval_s", 0.1),
    ("TAIL_BATCH_INTERVAL_MS", "1", "tail_batch_interval_s", 0.001),
    ("KAFKA_PARTITION_REFRESH_MS", "100", "partition_refresh_s", 0.1),
    ("LOG_FORMAT", "TEXT", "log_format", "text"),
    ("LOG_LEVEL", "Debug", "log_level", "debug"),
    ("KAFKA_GROUP_ID", "  ", "kafka_group_id", "log-events-group"),
    ("OTEL_SERVICE_NAME", "checkout", "default_service_name", "checkout"),
    ("DEAD_LETTER_TOPIC", "logs.dlq", "dead_letter_topic", "logs.dlq"),
    ("TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8", "trusted_proxies",
     (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))),
    ("INGEST_TOKEN", "0123456789abcdef", "ingest_token", "0123456789abcdef"),
    ("FORWARD_ENABLED", "off", "forward_enabled", False),
    ("TAIL_ENABLED", "yes", "tail_enabled", True),
])
def test_each_bound_is_accepted_on_it(name, value, field, parsed):
    assert getattr(Settings.from_env({name: value}), field) == parsed
