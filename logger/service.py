"""Wires the stages together and owns their lifecycle: start, health, stop.

One :class:`LogService` per Gunicorn worker. :meth:`start` must run after
gevent has monkey-patched (Gunicorn's ``post_worker_init``), because the
readers are greenlets and kafka-python's I/O thread must become one too.
:meth:`stop` is idempotent, bounded by its timeout, and goes in a fixed order:
readers stop and drain their batches (to clients and to the collector, whose
offsets are then committed, and the group is left), then every WebSocket
client is closed with 1001.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

import logger
from logger import metrics
from logger.auth import Authorize
from logger.config import Settings, without_password
from logger.hub import Hub
from logger.kafka_sink import KafkaPublisher
from logger.reader import Reader
from logger.tail_reader import TailReader
from logger.records import LogRecord
from logger.status import DEGRADED, DISABLED, IDLE, OK, STARTING, ComponentStatus

if TYPE_CHECKING:
    from logger import tokens
    from logger.otlp import OtlpSink

log = logging.getLogger(__name__)

# How stop() spends its budget, in this order (STYLE: bounded shutdown, fixed order).
READERS_SHARE = 0.6  # readers flush, export and commit within this share of the budget
CLIENTS_CLOSE_S = 2.0  # then the WebSockets get this long to answer our close frame (at most)
KILL_WAIT_S = 1.0  # readers still running after that are killed, waiting this long
MIN_WAIT_S = 0.1  # no step gets less, however late it starts


class LogService:
    def __init__(self, settings: Settings, authorize: Authorize | None = None) -> None:
        self.settings = settings
        # With AUTH_JWKS_URL or AUTH_JWT_SECRET, tokens are checked (issue 14); a team's own
        # authorize (create_app(authorize=...)) replaces that check, and may call it.
        self.verifier: tokens.TokenVerifier | None = None
        if settings.auth_enabled:
            from logger.tokens import TokenVerifier  # PyJWT + cryptography: ~25 ms of start-up, only when on
            self.verifier = TokenVerifier(settings)
        self.hub = Hub(settings, authorize or (self.verifier.authorize if self.verifier else None))
        self.started_at = time.time()
        self.tail = ComponentStatus("kafka tail reader", STARTING if settings.tail_enabled else DISABLED,
                                    exported=metrics.reader_counters("tail"))
        self.forward = ComponentStatus("kafka forward reader", STARTING if settings.forward_enabled else DISABLED,
                                       exported=metrics.reader_counters("forward"))
        # The collector is "idle" until the first export says otherwise.
        self.collector = ComponentStatus("OTLP collector", IDLE if settings.forward_enabled else DISABLED,
                                         exported=metrics.COLLECTOR_COUNTERS)
        self._stop = Event()
        self._abandon = Event()
        self._readers: dict[Reader, gevent.Greenlet] = {}
        self._keepalive: gevent.Greenlet | None = None
        self._sink: OtlpSink | None = None
        self._publisher: KafkaPublisher | None = None
        self._started = False
        self._stopping = False
        self._stopped = Event()

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        settings = self.settings
        if settings.tail_enabled:
            reader = TailReader(settings, self.tail, self.hub.broadcast, self.hub.ring.mark_start,
                                self.hub.announce_gap, lambda: self.hub.listening_since)
            self._run(reader)
        if settings.forward_enabled:
            # Loaded only when forwarding: the OpenTelemetry exporter, requests and protobuf cost
            # ~90 ms of every start, and a tail-only worker (FORWARD_ENABLED=false) never uses them.
            from logger.forward_reader import ForwardReader
            from logger.otlp import OtlpSink
            self._sink = OtlpSink(settings.otlp_endpoint, self.collector, settings.otlp_grpc_error)
            if settings.otlp_names_grpc_port:
                # Kept, with this one warning, rather than refused or rewritten (README,
                # "Coming from the Go service"): the live tail needs no collector; the
                # port alone does not prove the protocol (a container may map 4317 to an
                # OTLP/HTTP receiver); a rewrite would send data where the operator did not
                # say. Exports are retried with offsets uncommitted until this is fixed, and
                # the first one the collector accepts clears the warning.
                self.collector.set(DEGRADED, settings.otlp_grpc_error)
            reader = ForwardReader(settings, self.forward, self._sink.export, self._abandon,
                                   self._dead_letter if settings.dead_letter_topic else None)
            self._run(reader)
        self._keepalive = gevent.spawn(self.hub.keepalive, self._stop)
        if self.verifier is not None:
            self.verifier.start()
        if self.hub.authorize is None:
            log.warning("authentication is off: anyone who can reach this port reads every log "
                        "(set AUTH_JWKS_URL or AUTH_JWT_SECRET; README, Authentication)")
        log.info("pipeline started: topic %r, brokers %s, tail %s, forward %s to %s", settings.kafka_topic,
                 ",".join(settings.kafka_brokers), "on" if settings.tail_enabled else "off",
                 "on" if settings.forward_enabled else "off", without_password(settings.otlp_endpoint))

    def _run(self, reader: Reader) -> None:
        self._readers[reader] = gevent.spawn(reader.run, self._stop)

    def _connection_health(self) -> dict[str, Any]:
        """Kafka connection outages any reader saw: a current one first, else the last that ended."""
        seen = [reader.client_log.outage() for reader in self._readers]
        return next((s for s in seen if "outage" in s), None) or next((s for s in seen if s), {})

    def publish(self, values: Iterable[Any]) -> int:
        """Put records on the Kafka topic (objects become JSON), waiting for the broker's acks.

        The public way for other Flask code to add logs: like any record, they
        reach every client of every worker and replica, and the collector.
        Raises ``PublishError`` if Kafka did not take them.
        """
        return self._kafka_publisher().publish(values)

    def _dead_letter(self, batch: Sequence[LogRecord], reason: str) -> None:
        self._kafka_publisher().publish([r.raw for r in batch], topic=self.settings.dead_letter_topic,
                                        headers=[("x-logger-service-error", reason.encode()[:1000])])

    def _kafka_publisher(self) -> KafkaPublisher:
        """One producer per worker, made on first use (most deployments never need it)."""
        if self._publisher is None:
            self._publisher = KafkaPublisher(self.settings)
        return self._publisher

    def stop(self, timeout: float = 20.0) -> None:
        """Drain and close within ``timeout`` seconds. Safe to call more than once:
        a second caller waits for the first one's drain to finish."""
        if self._stopping:
            self._stopped.wait(timeout)
            return
        self._stopping = True
        self.hub.accepting = False  # readiness fails now: load balancers move traffic away
        try:
            self._drain(timeout)
        finally:
            self._stopped.set()

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        log.info("draining: %d clients connected", len(self.hub))
        self._stop.set()
        # Readers flush their last batch, export it and commit; a collector that
        # is down gets most of the budget, then is abandoned (offsets stay uncommitted).
        readers = list(self._readers.values())
        gevent.joinall(readers, timeout=max(timeout * READERS_SHARE, MIN_WAIT_S))
        if any(not g.dead for g in readers):
            self._abandon.set()
            if self._sink is not None:
                self._sink.shutdown()
            left_for_readers = deadline - time.monotonic() - CLIENTS_CLOSE_S - KILL_WAIT_S / 2
            gevent.joinall(readers, timeout=max(left_for_readers, MIN_WAIT_S))
            gevent.killall([g for g in readers if not g.dead], timeout=KILL_WAIT_S)
        elif self._sink is not None:
            self._sink.shutdown()
        if self._keepalive is not None:
            self._keepalive.kill(block=False)
        if self.verifier is not None:
            self.verifier.stop()
        if self._publisher is not None:
            self._publisher.close()
        self.hub.close_all(timeout=max(min(deadline - time.monotonic(), CLIENTS_CLOSE_S), MIN_WAIT_S))
        log.info("drained in %.2fs", timeout - (deadline - time.monotonic()))

    @property
    def auth_mode(self) -> str:
        """``/health``'s ``auth``: "off", "jwt" (tokens checked, maybe inside a custom
        authorize), or "custom" (only the team's own authorize)."""
        if self.hub.authorize is None:
            return "off"
        return "jwt" if self.verifier is not None else "custom"

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready for traffic: each enabled reader has joined or assigned its partitions,
        and the hub takes clients. Not ready while starting or draining."""
        waiting = {}
        if not self._started or self._stopping or not self.hub.accepting:
            waiting["service"] = "draining" if self._stopping else "starting"
        for name, part in (("tail", self.tail), ("forward", self.forward)):
            if part.state not in (OK, DISABLED):
                waiting[name] = part.state + (f": {part.error}" if part.error else "")
        return not waiting, waiting

    def health(self) -> dict[str, Any]:
        """The body of ``GET /health``."""
        parts = (self.tail, self.forward, self.collector)
        connection = self._connection_health()
        healthy = (all(part.state in (OK, DISABLED, IDLE) for part in parts) and "outage" not in connection
                   and "shedding" not in self.tail.details)
        by_worker = metrics.clients_per_worker()
        by_worker[os.getpid()] = len(self.hub)  # our own count is exact and current
        return {
            "status": "ok" if healthy else DEGRADED,
            "version": logger.__version__,
            "auth": self.auth_mode,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "worker": os.getpid(),
            "clients": sum(by_worker.values()),  # every worker's: the server's client count
            "clients_by_worker": {str(pid): count for pid, count in sorted(by_worker.items())},
            "kafka": {"brokers": list(self.settings.kafka_brokers), "topic": self.settings.kafka_topic,
                      "tail": self.tail.as_dict(), "forward": self.forward.as_dict(), **connection},
            "collector": {"endpoint": without_password(self.settings.otlp_endpoint), **self.collector.as_dict()},
            "hub": dict(self.hub.counters),
        }
