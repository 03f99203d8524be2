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
    ({"METRICS_TOKEN": "hidden short"}, "METRICS_TOKEN=<not shown>"),
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
    ("KAFKA_BROKER_URL", "nohost", "a comma-separated list of host:port"),
    ("KAFKA_TOPIC", "a b", "1-249 characters of letters, digits, '.', '_' or '-'"),
    ("FRONTEND_SELLER_URL", "seller", "an origin such as https://app.example.com"),
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
    ("METRICS_TOKEN", "0123456789abcdef", "metrics_token", "0123456789abcdef"),
    ("FORWARD_ENABLED", "off", "forward_enabled", False),
    ("TAIL_ENABLED", "yes", "tail_enabled", True),
])
def test_each_bound_is_accepted_on_it(name, value, field, parsed):
    assert getattr(Settings.from_env({name: value}), field) == parsed


# Every numeric setting: (variable, field, default, lowest, highest, unit divisor), as the README documents.
INTEGERS = [
    ("PORT", "port", 6006, 1, 65535, 1),
    ("KAFKA_PARTITION_REFRESH_MS", "partition_refresh_s", 10_000, 100, 3_600_000, 1000),
    ("KAFKA_SESSION_TIMEOUT_MS", "kafka_session_timeout_ms", 45_000, 6_000, 1_800_000, 1),
    ("MAX_VALUE_BYTES", "max_value_bytes", 1 << 20, 1024, 64 << 20, 1),
    ("TAIL_BATCH_SIZE", "tail_batch_size", 500, 1, 100_000, 1),
    ("TAIL_BATCH_INTERVAL_MS", "tail_batch_interval_s", 50, 1, 60_000, 1000),
    ("FORWARD_BATCH_SIZE", "forward_batch_size", 2000, 1, 100_000, 1),
    ("FORWARD_BATCH_INTERVAL_MS", "forward_batch_interval_s", 500, 1, 60_000, 1000),
    ("BATCH_MAX_BYTES", "batch_max_bytes", 1 << 20, 1024, 64 << 20, 1),
    ("WS_MAX_CLIENTS", "max_clients", 20_000, 1, 1_000_000, 1),
    ("WS_CLIENT_BUFFER_BYTES", "client_buffer_bytes", 4 << 20, 64 << 10, 1 << 30, 1),
    ("WS_MAX_MESSAGE_BYTES", "max_message_bytes", 64 << 10, 125, 16 << 20, 1),
    ("REPLAY_RECORDS", "replay_records", 5000, 0, 1_000_000, 1),
    ("REPLAY_BYTES", "replay_bytes", 8 << 20, 0, 1 << 30, 1),
]
NUMBERS = [
    ("WS_STALL_TIMEOUT_S", "client_stall_timeout_s", 30, 0.1, 3600),
    ("WS_PING_INTERVAL_S", "ping_interval_s", 25, 0.1, 3600),
    ("EXPORT_RETRY_MAX_S", "retry_backoff_max_s", 30, 0.1, 3600),
]


@pytest.mark.parametrize("name, field, default, low, high, divisor", INTEGERS)
def test_each_integer_setting_its_default_and_inclusive_bounds(name, field, default, low, high, divisor):
    def scaled(value: int) -> float:
        return value / divisor if divisor > 1 else value
    assert getattr(Settings.from_env({}), field) == scaled(default) == getattr(Settings(), field)
    for accepted in (low, high):
        assert getattr(Settings.from_env({name: f" {accepted} "}), field) == scaled(accepted)
    for refused in (low - 1, high + 1, "1e3", "ten"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({name: str(refused)})
        assert str(caught.value) == f"{name}={str(refused)!r} is invalid: expected an integer from {low} to {high}"


@pytest.mark.parametrize("name, field, default, low, high", NUMBERS)
def test_each_number_setting_its_default_and_inclusive_bounds(name, field, default, low, high):
    assert getattr(Settings.from_env({}), field) == default == getattr(Settings(), field)
    assert getattr(Settings.from_env({name: str(low)}), field) == low
    assert getattr(Settings.from_env({name: str(high)}), field) == high
    assert getattr(Settings.from_env({name: "2.5"}), field) == 2.5
    for refused in ("0.09", str(high + 0.5), "inf", "nan", "soon"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({name: refused})
        assert str(caught.value) == f"{name}={refused!r} is invalid: expected a number from {low:g} to {high:g}"


@pytest.mark.parametrize("name, field", [("TAIL_ENABLED", "tail_enabled"), ("FORWARD_ENABLED", "forward_enabled")])
def test_switches_take_the_usual_words_in_any_case(name, field):
    assert getattr(Settings.from_env({}), field) is True
    for word in ("1", "true", "yes", "on", "TRUE", "On"):
        assert getattr(Settings.from_env({name: word}), field) is True, word
    for word in ("0", "false", "no", "off", "FALSE", "Off"):
        assert getattr(Settings.from_env({name: word}), field) is False, word
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: "enabled"})
    assert str(caught.value) == f"{name}='enabled' is invalid: expected true or false"


@pytest.mark.parametrize("name, field, choices, default", [
    ("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism", ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "PLAIN"),
    ("KAFKA_AUTO_OFFSET_RESET", "kafka_auto_offset_reset", ("earliest", "latest"), "earliest"),
    ("LOG_LEVEL", "log_level", ("debug", "info", "warning", "error", "critical"), "info"),
    ("LOG_FORMAT", "log_format", ("auto", "json", "text"), "auto"),
])
def test_each_choice_is_accepted_in_any_case_and_nothing_else(name, field, choices, default):
    assert getattr(Settings.from_env({}), field) == default == getattr(Settings(), field)
    for choice in choices:
        assert getattr(Settings.from_env({name: choice.swapcase()}), field) == choice
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: "other"})
    assert str(caught.value) == f"{name}='other' is invalid: expected one of {', '.join(choices)}"


def test_security_protocols():
    with_key = {"KAFKA_API_KEY": "k", "KAFKA_API_SECRET": "s"}
    for protocol in ("PLAINTEXT", "SSL"):
        assert Settings.from_env({"KAFKA_SECURITY_PROTOCOL": protocol.lower()}).kafka_security_protocol == protocol
        assert not Settings.from_env({"KAFKA_SECURITY_PROTOCOL": protocol}).kafka_sasl
    for protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        settings = Settings.from_env({**with_key, "KAFKA_SECURITY_PROTOCOL": protocol})
        assert settings.kafka_security_protocol == protocol and settings.kafka_sasl
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert str(caught.value) == ("KAFKA_API_KEY is not set: KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs "
                                 "KAFKA_API_KEY and KAFKA_API_SECRET")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"KAFKA_API_KEY": "k"})
    assert str(caught.value) == "KAFKA_API_SECRET is not set: it is required when KAFKA_API_KEY is set"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"KAFKA_API_SECRET": "s"})
    assert str(caught.value) == "KAFKA_API_KEY is not set: it is required when KAFKA_API_SECRET is set"


def test_the_process_environment_is_read_when_none_is_given(monkeypatch):
    monkeypatch.setenv("PORT", "7007")
    assert Settings.from_env().port == 7007
    assert Settings.from_env({}).port == 6006


@pytest.mark.parametrize("name, value, accepted", [
    ("KAFKA_TOPIC", "Logs.v2_x-y", True),
    ("KAFKA_TOPIC", "t" * 249, True),
    ("KAFKA_TOPIC", "t" * 250, False),
    ("KAFKA_TOPIC", ".", False),
    ("KAFKA_TOPIC", "..", False),
    ("KAFKA_TOPIC", "...", True),
    ("DEAD_LETTER_TOPIC", "DLQ", True),
    ("FRONTEND_URL", "https://a.example.com/", True),
    ("FRONTEND_URL", "https://a.example.com:8443", True),
    ("FRONTEND_URL", "https://a.example.com/app", False),
    ("FRONTEND_URL", "https://a.example.com/?x=1", False),
    ("FRONTEND_URL", "https://a.example.com/#top", False),
    ("FRONTEND_URL", "ftp://a.example.com", False),
    ("FRONTEND_URL", "https://", False),
    ("FRONTEND_ADMIN_URL", "http://admin:3002", True),
    ("FRONTEND_SELLER_URL", "seller", False),
    ("INGEST_TOKEN", "x" * 16, True),
    ("INGEST_TOKEN", "x" * 15, False),
    ("INGEST_TOKEN", "x" * 10 + "\t" + "x" * 10, False),
    ("METRICS_TOKEN", "x" * 16, True),
    ("METRICS_TOKEN", "x" * 15, False),
    ("METRICS_TOKEN", "x" * 10 + " " + "x" * 10, False),
    ("TRUSTED_PROXIES", "10.1.2.3/8", True),  # host bits are allowed: the network is meant
    ("TRUSTED_PROXIES", "::1, fd00::/8", True),
    ("TRUSTED_PROXIES", "localhost", False),
    ("KAFKA_BROKER_URL", "b1:9092,[::1]:9093", True),
    ("KAFKA_BROKER_URL", "b1", False),
    ("KAFKA_BROKER_URL", " , ", False),
    ("OTLP_ENDPOINT", "http://c:99999", False),
    ("OTLP_ENDPOINT", "http://:4318", False),
    ("OTLP_ENDPOINT", "c:4318/path", False),
])
def test_formats_at_their_edges(name, value, accepted):
    if accepted:
        Settings.from_env({name: value})
    else:
        with pytest.raises(ConfigError, match=f"^{name}="):
            Settings.from_env({name: value})


def test_the_parsed_forms():
    s = Settings.from_env({"TRUSTED_PROXIES": "10.1.2.3/8", "FRONTEND_SELLER_URL": "HTTPS://Seller.Example.com/",
                           "FRONTEND_ADMIN_URL": "http://admin:3002", "KAFKA_GROUP_ID": " g1 ",
                           "KAFKA_TOPIC": "t1", "DEAD_LETTER_TOPIC": "t1.dlq"})
    assert s.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert s.cors_origins == ("http://localhost:3000", "https://seller.example.com", "http://admin:3002")
    assert (s.kafka_group_id, s.kafka_topic, s.dead_letter_topic) == ("g1", "t1", "t1.dlq")
    assert Settings.from_env({}).trusted_proxies == () and Settings.from_env({}).dead_letter_topic is None
    assert Settings.from_env({}).ingest_token is None and Settings.from_env({}).kafka_ca_file is None
    assert Settings.from_env({}).metrics_token is None


def test_endpoint_errors_name_the_accepted_form():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"OTLP_ENDPOINT": "nope"})
    assert str(caught.value) == "OTLP_ENDPOINT='nope' is invalid: expected host:port or an http(s) URL"
    for name in ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({name: "ftp://x"})
        assert str(caught.value) == f"{name}='ftp://x' is invalid: expected an http(s) URL"
    assert Settings.from_env({"OTLP_ENDPOINT": "http://c:4318//"}).otlp_endpoint == "http://c:4318//"
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/base/"}).otlp_endpoint == \
        "http://c:4318/base/v1/logs"
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/v1/logs"}).otlp_endpoint == \
        "http://c:4318/v1/logs"


def test_a_ca_file_must_be_a_readable_pem_bundle(tmp_path):
    import certifi
    assert Settings.from_env({"KAFKA_SSL_CA_FILE": certifi.where()}).kafka_ca_file == certifi.where()
    for bad in (str(tmp_path), str(tmp_path / "missing.pem")):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"KAFKA_SSL_CA_FILE": bad})
        assert str(caught.value) == f"KAFKA_SSL_CA_FILE={bad!r} is invalid: expected a readable PEM file of CA certificates"


def test_credentials_and_names_are_kept_as_given(tmp_path):
    s = Settings.from_env({"KAFKA_API_KEY": "KEY1", "KAFKA_API_SECRET": "secret-1"})
    assert (s.kafka_api_key, s.kafka_api_secret) == ("KEY1", "secret-1")
    assert Settings.from_env({}).default_service_name == "unknown_service"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="^KAFKA_SSL_CA_FILE="):
        Settings.from_env({"KAFKA_SSL_CA_FILE": str(not_pem)})


def test_a_bad_token_is_not_shown_but_the_rule_is():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"INGEST_TOKEN": "short"})
    assert str(caught.value) == "INGEST_TOKEN=<not shown> is invalid: expected at least 16 characters without spaces"


def test_only_slashes_are_trimmed_before_the_logs_path():
    assert Settings.from_env({"OTLP_ENDPOINT": "http://BOX/"}).otlp_endpoint == "http://BOX/v1/logs"
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h/pathX/"}).otlp_endpoint == \
        "http://h/pathX/v1/logs"
