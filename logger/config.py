"""Settings: typed, frozen, parsed once from the environment.

Variable names of the Go service are kept exactly (``PORT``, ``KAFKA_*``,
``OTLP_ENDPOINT``, ``FRONTEND_*``); the standard ``OTEL_*`` variables work as
OpenTelemetry users expect. A bad value raises :class:`ConfigError` with one
line naming the variable and the accepted form; callers print it and exit.
Secrets never appear in messages or in ``repr``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from logger.errors import ConfigError

T = TypeVar("T")

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OFFSET_RESETS = ("earliest", "latest")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318/v1/logs"
# The OTLP specification's default ports: 4317 for OTLP/gRPC, 4318 for OTLP/HTTP.
OTLP_GRPC_PORT, OTLP_HTTP_PORT = 4317, 4318


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service reads from its environment."""

    port: int = 6006
    kafka_brokers: tuple[str, ...] = ("localhost:9092",)
    kafka_api_key: str | None = None
    kafka_api_secret: str | None = field(default=None, repr=False)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_ca_file: str | None = None
    kafka_topic: str = "logs"
    kafka_group_id: str = "log-events-group"
    kafka_auto_offset_reset: str = "earliest"
    # Aborted transactions are never shown or exported, and control records never surface.
    kafka_isolation_level: str = "read_committed"
    partition_refresh_s: float = 10.0
    kafka_session_timeout_ms: int = 45_000
    dead_letter_topic: str | None = None
    max_value_bytes: int = 1 << 20
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT
    # What to tell the operator when the endpoint turns out to be OTLP/gRPC (issue 17).
    otlp_grpc_error: str = field(default_factory=lambda: otlp_grpc_error("OTLP_ENDPOINT", None))
    default_service_name: str = "unknown_service"
    cors_origins: tuple[str, ...] = (
        "http://localhost:3000", "http://localhost:3001", "http://localhost:3002")
    tail_enabled: bool = True
    forward_enabled: bool = True
    tail_batch_size: int = 500
    tail_batch_interval_s: float = 0.05
    tail_max_lag_s: float = 5.0  # the live tail skips ahead rather than fall further behind (0: never)
    forward_batch_size: int = 2000
    forward_batch_interval_s: float = 0.5
    batch_max_bytes: int = 1 << 20
    max_clients: int = 20_000
    client_buffer_bytes: int = 4 << 20
    max_message_bytes: int = 64 << 10
    max_fragments: int = 128
    max_regex_filters: int = 100
    client_stall_timeout_s: float = 30.0
    replay_records: int = 5000
    replay_bytes: int = 8 << 20
    ping_interval_s: float = 25.0
    retry_backoff_max_s: float = 30.0
    log_level: str = "info"
    log_format: str = "auto"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    http_keepalive_s: float = 5.0  # an idle keep-alive connection is closed after this (Gunicorn's keepalive)
    http_head_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_max_header_bytes: int = 32 << 10
    ingest_token: str | None = field(default=None, repr=False)
    # Who may read which logs (issue 14; README, "Authentication"). Neither source of keys: auth is off.
    auth_jwks_url: str | None = None
    auth_jwt_secret: str | None = field(default=None, repr=False)
    auth_issuer: str | None = None
    auth_audience: tuple[str, ...] = ()
    auth_leeway_s: float = 30.0
    auth_jwks_refresh_s: float = 300.0
    auth_services_claim: str = "logs.services"
    auth_min_level_claim: str = "logs.min_level"
    auth_attribute_claims: tuple[tuple[str, str], ...] = ()  # (attribute path, claim name)
    auth_all_logs_claim: str = "logs.all"
    auth_write_claim: str = "logs.write"
    metrics_token: str | None = field(default=None, repr=False)

    @property
    def auth_enabled(self) -> bool:
        """Tokens are checked: a JWKS URL or a shared secret is configured."""
        return bool(self.auth_jwks_url or self.auth_jwt_secret)

    @property
    def kafka_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    @property
    def otlp_names_grpc_port(self) -> bool:
        """The collector endpoint names port 4317, the OTLP/gRPC port (see :func:`otlp_grpc_error`)."""
        return names_grpc_port(self.otlp_endpoint)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse and check every variable; raise ConfigError on the first bad one."""
        env = _Env(os.environ if environ is None else environ)
        api_key = env.text("KAFKA_API_KEY")
        api_secret = env.text("KAFKA_API_SECRET")
        if api_key and not api_secret:
            raise ConfigError("KAFKA_API_SECRET is not set: it is required when KAFKA_API_KEY is set")
        if api_secret and not api_key:
            raise ConfigError("KAFKA_API_KEY is not set: it is required when KAFKA_API_SECRET is set")
        protocol = env.choice("KAFKA_SECURITY_PROTOCOL", SECURITY_PROTOCOLS,
                              "SASL_SSL" if api_key else "PLAINTEXT", upper=True)
        if protocol.startswith("SASL_") and not api_key:
            raise ConfigError(f"KAFKA_API_KEY is not set: KAFKA_SECURITY_PROTOCOL={protocol} needs "
                              "KAFKA_API_KEY and KAFKA_API_SECRET")
        return cls(
            port=env.integer("PORT", 6006, 1, 65535),
            kafka_brokers=env.parse("KAFKA_BROKER_URL", ("localhost:9092",), _brokers,
                                    "a comma-separated list of host:port"),
            kafka_api_key=api_key,
            kafka_api_secret=api_secret,
            kafka_security_protocol=protocol,
            kafka_sasl_mechanism=env.choice("KAFKA_SASL_MECHANISM", SASL_MECHANISMS, "PLAIN", upper=True),
            kafka_ca_file=env.parse("KAFKA_SSL_CA_FILE", None, _ca_file, "a readable PEM file of CA certificates"),
            kafka_topic=env.parse("KAFKA_TOPIC", "logs", _topic_name,
                                  "1-249 characters of letters, digits, '.', '_' or '-'"),
            kafka_group_id=env.text("KAFKA_GROUP_ID") or "log-events-group",
            kafka_auto_offset_reset=env.choice("KAFKA_AUTO_OFFSET_RESET", OFFSET_RESETS, "earliest"),
            kafka_isolation_level=env.choice("KAFKA_ISOLATION_LEVEL", ISOLATION_LEVELS, "read_committed"),
            partition_refresh_s=env.integer("KAFKA_PARTITION_REFRESH_MS", 10_000, 100, 3_600_000) / 1000,
            kafka_session_timeout_ms=env.integer("KAFKA_SESSION_TIMEOUT_MS", 45_000, 6_000, 1_800_000),
            dead_letter_topic=env.parse("DEAD_LETTER_TOPIC", None, _topic_name,
                                        "1-249 characters of letters, digits, '.', '_' or '-'"),
            max_value_bytes=env.integer("MAX_VALUE_BYTES", 1 << 20, 1024, 64 << 20),
            otlp_endpoint=_otlp_endpoint(env),
            otlp_grpc_error=otlp_grpc_error(*_otlp_setting(env)),
            default_service_name=env.text("OTEL_SERVICE_NAME") or "unknown_service",
            cors_origins=tuple(
                env.parse(name, default, _origin, "an origin such as https://app.example.com")
                for name, default in (("FRONTEND_URL", "http://localhost:3000"),
                                      ("FRONTEND_SELLER_URL", "http://localhost:3001"),
                                      ("FRONTEND_ADMIN_URL", "http://localhost:3002"))),
            tail_enabled=env.boolean("TAIL_ENABLED", True),
            forward_enabled=env.boolean("FORWARD_ENABLED", True),
            tail_batch_size=env.integer("TAIL_BATCH_SIZE", 500, 1, 100_000),
            tail_batch_interval_s=env.integer("TAIL_BATCH_INTERVAL_MS", 50, 1, 60_000) / 1000,
            tail_max_lag_s=env.number("TAIL_MAX_LAG_S", 5, 0, 3600),
            forward_batch_size=env.integer("FORWARD_BATCH_SIZE", 2000, 1, 100_000),
            forward_batch_interval_s=env.integer("FORWARD_BATCH_INTERVAL_MS", 500, 1, 60_000) / 1000,
            batch_max_bytes=env.integer("BATCH_MAX_BYTES", 1 << 20, 1024, 64 << 20),
            max_clients=env.integer("WS_MAX_CLIENTS", 20_000, 1, 1_000_000),
            client_buffer_bytes=env.integer("WS_CLIENT_BUFFER_BYTES", 4 << 20, 64 << 10, 1 << 30),
            max_message_bytes=env.integer("WS_MAX_MESSAGE_BYTES", 64 << 10, 125, 16 << 20),
            max_fragments=env.integer("WS_MAX_FRAGMENTS", 128, 1, 1_000_000),
            max_regex_filters=env.integer("WS_MAX_REGEX_FILTERS", 100, 0, 100_000),
            client_stall_timeout_s=env.number("WS_STALL_TIMEOUT_S", 30, 0.1, 3600),
            replay_records=env.integer("REPLAY_RECORDS", 5000, 0, 1_000_000),
            replay_bytes=env.integer("REPLAY_BYTES", 8 << 20, 0, 1 << 30),
            ping_interval_s=env.number("WS_PING_INTERVAL_S", 25, 0.1, 3600),
            retry_backoff_max_s=env.number("EXPORT_RETRY_MAX_S", 30, 0.1, 3600),
            log_level=env.choice("LOG_LEVEL", LOG_LEVELS, "info"),
            log_format=env.choice("LOG_FORMAT", ("auto", "json", "text"), "auto"),
            trusted_proxies=env.parse("TRUSTED_PROXIES", (), _networks,
                                      "a comma-separated list of IP addresses or CIDR networks"),
            allowed_hosts=env.parse("ALLOWED_HOSTS", ("localhost", "127.0.0.1", "[::1]"), _host_names,
                                    "a comma-separated list of host names (IPv6 in brackets), no ports"),
            http_keepalive_s=env.number("HTTP_KEEPALIVE_S", 5, 1, 3600),
            http_head_timeout_s=env.number("HTTP_HEAD_TIMEOUT_S", 10, 0.1, 3600),
            http_body_timeout_s=env.number("HTTP_BODY_TIMEOUT_S", 30, 0.1, 3600),
            http_max_header_bytes=env.integer("HTTP_MAX_HEADER_BYTES", 32 << 10, 1024, 1 << 20),
            ingest_token=env.parse("INGEST_TOKEN", None, _token, "at least 16 characters without spaces",
                                   secret=True),
            **_auth_settings(env),
        )


class _Env:
    """Reads one variable at a time and turns a bad value into ConfigError."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def parse(self, name: str, default: T, parser: Callable[[str], T], form: str, secret: bool = False) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            return parser(raw)
        except ValueError:
            shown = "<not shown>" if secret else repr(raw)
            raise ConfigError(f"{name}={shown} is invalid: expected {form}") from None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        def parse(raw: str) -> int:
            value = int(raw)
            if not low <= value <= high:
                raise ValueError(raw)
            return value
        return self.parse(name, default, parse, f"an integer from {low} to {high}")

    def number(self, name: str, default: float, low: float, high: float) -> float:
        def parse(raw: str) -> float:
            value = float(raw)
            if not low <= value <= high:  # also rejects nan
                raise ValueError(raw)
            return value
        return self.parse(name, default, parse, f"a number from {low:g} to {high:g}")

    def boolean(self, name: str, default: bool) -> bool:
        words = {"1": True, "true": True, "yes": True, "on": True,
                 "0": False, "false": False, "no": False, "off": False}

        def parse(raw: str) -> bool:
            return words[raw.lower()] if raw.lower() in words else _raise(raw)
        return self.parse(name, default, parse, "true or false")

    def choice(self, name: str, choices: tuple[str, ...], default: str, upper: bool = False) -> str:
        def parse(raw: str) -> str:
            value = raw.upper() if upper else raw.lower()
            return value if value in choices else _raise(raw)
        return self.parse(name, default, parse, "one of " + ", ".join(choices))


def _raise(raw: str) -> T:  # type: ignore[type-var]
    raise ValueError(raw)


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())


_HOST_NAME = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9_-]+(\.[a-z0-9_-]+)*)$")


def _host_names(raw: str) -> tuple[str, ...]:
    """``ALLOWED_HOSTS``: names as a browser writes them in ``Origin`` (lower case, IPv6 in brackets)."""
    names = tuple(part.strip().lower().rstrip(".") for part in raw.split(",") if part.strip())
    if not names or not all(_HOST_NAME.match(name) for name in names):
        raise ValueError(raw)
    return names


def _token(raw: str) -> str:
    if len(raw) < 16 or any(c.isspace() for c in raw):
        raise ValueError("token")
    return raw


CLAIM_FORM = "a claim name: letters, digits, '.', '_', ':', '/' or '-'"
_CLAIM = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")


def _auth_settings(env: _Env) -> dict[str, object]:
    """``AUTH_*`` and ``METRICS_TOKEN``, checked against each other.

    With a JWKS URL the keys are an identity provider's, which signs tokens for
    every application it serves: without ``AUTH_ISSUER`` and ``AUTH_AUDIENCE``
    a token it issued for another application would open ``/ws`` too, so both
    are required then. An issuer or audience without any key would silently
    leave auth off, so that is refused as well.
    """
    jwks_url = env.parse("AUTH_JWKS_URL", None, _jwks_url, "an http(s) URL of a JSON Web Key Set")
    secret = env.parse("AUTH_JWT_SECRET", None, _jwt_secret,
                       "at least 32 characters (HS256 needs a 256-bit key, RFC 7518 §3.2)", secret=True)
    issuer = env.text("AUTH_ISSUER")
    audience = env.parse("AUTH_AUDIENCE", (), _names, "a comma-separated list of audience names")
    for name, value in (("AUTH_ISSUER", issuer), ("AUTH_AUDIENCE", audience)):
        if jwks_url and not value:
            raise ConfigError(f"{name} is not set: it is required with AUTH_JWKS_URL (else a token the "
                              "identity provider issued for another application would be accepted)")
        if value and not (jwks_url or secret):
            raise ConfigError(f"{name} is set but neither AUTH_JWKS_URL nor AUTH_JWT_SECRET is: "
                              "authentication would be off")

    def claim(name: str, default: str) -> str:
        return env.parse(name, default, _claim_name, CLAIM_FORM)

    return {
        "auth_jwks_url": jwks_url,
        "auth_jwt_secret": secret,
        "auth_issuer": issuer,
        "auth_audience": audience,
        "auth_leeway_s": env.number("AUTH_LEEWAY_S", 30, 0, 600),
        "auth_jwks_refresh_s": env.number("AUTH_JWKS_REFRESH_S", 300, 10, 86_400),
        "auth_services_claim": claim("AUTH_SERVICES_CLAIM", "logs.services"),
        "auth_min_level_claim": claim("AUTH_MIN_LEVEL_CLAIM", "logs.min_level"),
        "auth_attribute_claims": env.parse("AUTH_ATTRIBUTE_CLAIMS", (), _attribute_claims,
                                           "a comma-separated list of attribute=claim, e.g. seller.id=seller_id"),
        "auth_all_logs_claim": claim("AUTH_ALL_LOGS_CLAIM", "logs.all"),
        "auth_write_claim": claim("AUTH_WRITE_CLAIM", "logs.write"),
        "metrics_token": env.parse("METRICS_TOKEN", None, _token, "at least 16 characters without spaces",
                                   secret=True),
    }


def _jwks_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        raise ValueError(raw)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(raw) from None
    return raw


def _jwt_secret(raw: str) -> str:
    if len(raw.encode()) < 32:
        raise ValueError("secret")
    return raw


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not names:
        raise ValueError(raw)
    return names


def _claim_name(raw: str) -> str:
    if not _CLAIM.match(raw):
        raise ValueError(raw)
    return raw


def _attribute_claims(raw: str) -> tuple[tuple[str, str], ...]:
    """``seller.id=seller_id, region=tenant.region``: the attribute a token's claim binds."""
    pairs = []
    for part in raw.split(","):
        path, equals, claim = (piece.strip() for piece in part.partition("="))
        if not part.strip():
            continue
        if not equals or not path or len(path) > 200 or any(c.isspace() for c in path) \
                or not _CLAIM.match(claim):
            raise ValueError(raw)
        pairs.append((path, claim))
    if not pairs or len({path for path, _ in pairs}) != len(pairs):
        raise ValueError(raw)
    return tuple(pairs)


def _brokers(raw: str) -> tuple[str, ...]:
    brokers = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not brokers or not all(_HOST_PORT.match(b) for b in brokers):
        raise ValueError(raw)
    return brokers


def _topic_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", raw) or raw in (".", ".."):
        raise ValueError(raw)
    return raw


def _readable_file(raw: str) -> str:
    if not os.path.isfile(raw) or not os.access(raw, os.R_OK):
        raise ValueError(raw)
    return raw


def _ca_file(raw: str) -> str:
    """A readable file that holds at least one PEM certificate (what kafka-python will load)."""
    _readable_file(raw)
    try:
        ssl.create_default_context(cafile=raw)
    except ssl.SSLError:  # [X509: NO_CERTIFICATE_OR_CRL_FOUND]: no certificate in it
        raise ValueError(raw) from None
    return raw


def _origin(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise ValueError(raw)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _url_with_logs_path(raw: str) -> str:
    """``host:port`` (the Go service's form) or a URL; a URL with no path gets ``/v1/logs``."""
    if "://" not in raw:
        if not _HOST_PORT.match(raw):
            raise ValueError(raw)
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(raw)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(raw) from None
    if parts.path in ("", "/"):
        return raw.rstrip("/") + "/v1/logs"
    return raw


def _otlp_endpoint(env: _Env) -> str:
    """``OTLP_ENDPOINT`` wins; then the OpenTelemetry variables, as the SDK reads them:
    the per-signal one is used as is, the generic one gets ``/v1/logs`` appended."""
    form = "host:port or an http(s) URL"
    if env.text("OTLP_ENDPOINT"):
        return env.parse("OTLP_ENDPOINT", "", _url_with_logs_path, form)
    if env.text("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        return env.parse("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "", _url_with_logs_path, "an http(s) URL")
    if env.text("OTEL_EXPORTER_OTLP_ENDPOINT"):
        base = env.parse("OTEL_EXPORTER_OTLP_ENDPOINT", "", _url_with_logs_path, "an http(s) URL")
        if not base.endswith("/v1/logs"):
            base = base.rstrip("/") + "/v1/logs"
        return base
    return DEFAULT_OTLP_ENDPOINT


def names_grpc_port(endpoint: str) -> bool:
    """Whether a collector URL names port 4317, the OTLP/gRPC port."""
    try:
        return urlsplit(endpoint).port == OTLP_GRPC_PORT
    except ValueError:
        return False


def _otlp_setting(env: _Env) -> tuple[str, str | None]:
    """Which variable set the collector endpoint, and its value as written (None: the default)."""
    for name in ("OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if env.text(name):
            return name, env.text(name)
    return "OTLP_ENDPOINT", None


def otlp_grpc_error(variable: str, value: str | None) -> str:
    """One line for the log and ``/health`` when the endpoint is an OTLP/gRPC receiver.

    The Go service documented ``OTLP_ENDPOINT=localhost:4317``, the gRPC port;
    this service posts OTLP/HTTP (HTTP/1.1), which a gRPC server answers with
    an HTTP/2 frame or a reset, and requests then reports only "Connection
    aborted". So the line says what is wrong and the exact value to set: the
    same host and form, on the OTLP/HTTP port.
    """
    written = value or DEFAULT_OTLP_ENDPOINT
    shown = f"{variable}={_without_password(written)}" if value else f"{variable} (default {written})"
    url = urlsplit(written if "://" in written else "http://" + written)
    what = ("is the OTLP/gRPC port" if url.port == OTLP_GRPC_PORT
            else "answers like an OTLP/gRPC server (HTTP/2 only)")
    return (f"{shown} {what}, but this service sends OTLP/HTTP: use the collector's OTLP/HTTP endpoint "
            f"(usually :{OTLP_HTTP_PORT}), e.g. {variable}={_on_http_port(written)}")


def _on_http_port(written: str) -> str:
    """``written`` with its port replaced by 4318, keeping its form (``host:port`` or URL)."""
    bare = "://" not in written
    url = urlsplit("http://" + written if bare else written)
    host = f"[{url.hostname}]" if url.hostname and ":" in url.hostname else (url.hostname or "localhost")
    replaced = url._replace(netloc=f"{host}:{OTLP_HTTP_PORT}").geturl()
    return replaced.removeprefix("http://") if bare else replaced


def _without_password(written: str) -> str:
    """Never show a password given in the URL's user part."""
    url = urlsplit(written)
    if "://" not in written or url.password is None:
        return written
    return url._replace(netloc=f"{url.username}:<not shown>@{url.netloc.rsplit('@', 1)[1]}").geturl()
