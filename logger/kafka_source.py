"""The two Kafka readers (kafka-python), one greenlet each.

* :class:`TailReader` assigns itself every partition of the topic (no group,
  no commits), starts at the end, and picks up partitions added later: every
  worker and replica sees every record, so Kafka is the broadcast bus.
* :class:`ForwardReader` joins consumer group ``KAFKA_GROUP_ID`` and commits an
  offset only after the collector accepted every record up to it:
  at-least-once, a crash re-delivers and never loses.

Both share one loop shape: poll → decode → batch → hand the batch on;
reconnect with capped backoff that ``stop`` interrupts; drain on the way out.
A reader never lets an exception escape: it is logged, shown in ``/health``,
and the reader reconnects. A record batch that cannot be decoded is not an
error of the connection: the reader skips exactly that batch (see
:mod:`logger.undecodable`), says so, and goes on without reconnecting.

kafka-python 3 runs its network I/O (heartbeats included) on a thread of its
own, which gevent's monkey-patching turns into a greenlet: our loops must
yield regularly or the group session starves (kafka-python issues #1515,
#1687, #1867). They do, between every two batches: :func:`let_others_run`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gevent
import orjson
from gevent.event import Event
from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors
from kafka.structs import MemberState, OffsetAndMetadata

from logger import metrics, undecodable
from logger.backoff import Backoff
from logger.batcher import Batcher
from logger.config import Settings
from logger.errors import ExportError
from logger.records import LogRecord, decode
from logger.replay import OVERLOAD, UNDECODABLE, Gap
from logger.status import DEGRADED, OK, STARTING, STOPPED, ComponentStatus, iso_time
from logger.undecodable import UndecodableBatch

log = logging.getLogger(__name__)

# kafka-python appends the next retry's delay to its lines; kept in a message, it
# would make every retry look like a new error (and be logged again).
_RETRY_NOISE = re.compile(r"\s*\(backoff [\d.]+ secs\)")
# "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)"
_SSL_ERROR = re.compile(r"\[(?:SSL|X509): (?P<code>[A-Z0-9_]+)\] (?P<text>.+?)\.?(?: \(_ssl\.c:\d+\))?$")

LAG_UPDATE_S = 2.0
YIELD_MOST_S = 0.02  # the longest a reader lets others run between two batches
TAIL_FETCH_MIN_BYTES = 256 * 1024  # a fetch answers at once when this much is waiting
REJOIN_WAIT_S = 10.0  # how long a commit waits for a rebalance to finish before giving up
IDLE_RESUME_SLACK_S = 1.0  # an idle tail resumes this long before the first client connected (clock skew)
SHEDDING_SHOWN_S = 10.0  # /health shows the tail as shedding for this long after it last skipped ahead


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


def tail_fetch_config(settings: Settings) -> dict[str, int]:
    """Let the broker gather records for a fifth of a batch window before it answers.

    A steady trickle of records then costs a few fetches per window instead of
    one per produce request. kafka-python's network code is Python: at 2,000
    records/s those fetches were a quarter of the worker's CPU (48 % → 36 %).
    Capped at kafka-python's own default wait (500 ms) for long windows.
    """
    window_ms = int(settings.tail_batch_interval_s * 1000)
    return {"fetch_min_bytes": TAIL_FETCH_MIN_BYTES, "fetch_max_wait_ms": min(max(window_ms // 5, 1), 500)}


def let_others_run(most_s: float = YIELD_MOST_S) -> None:
    """Give the event loop until nothing else is pending, or ``most_s`` at most.

    ``gevent.sleep(0)`` only lets already-runnable greenlets go before we are
    resumed: with 10,000 clients and Kafka backlogged, one ``GET /health`` took
    1-2 s, as each step of it waited for another batch's fan-out. Waiting for
    the loop to be idle answers it in tens of ms (123 ms at worst in the
    benchmark). The bound keeps a flood of client messages from starving the
    reader.
    """
    with gevent.Timeout(most_s, False):
        gevent.idle()


class _KafkaClientLog(logging.Handler):
    """Remembers why kafka-python's last connection attempt failed.

    kafka-python 3 retries bootstrap internally and then raises only
    ``KafkaTimeoutError("Unable to bootstrap ...")``; *why* (connection refused,
    SASL authentication failed, TLS handshake) is only logged. We keep the
    last such reason to turn the timeout into a message an operator can act on.
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


_client_log = _KafkaClientLog()
logging.getLogger("kafka").addHandler(_client_log)


def connection_health() -> dict[str, Any]:
    """Kafka connection outages seen by any of this worker's clients (for /health)."""
    return _client_log.outage()


def describe_kafka_error(exc: BaseException, settings: Settings) -> str:
    """One line an operator can act on; never includes the secret."""
    brokers = ",".join(settings.kafka_brokers)
    cause = _client_log.security_reason or _client_log.reason
    reason = f"{exc} {cause}".lower()
    if isinstance(exc, kafka_errors.SaslAuthenticationFailedError) or "authentication" in reason:
        return (f"Kafka authentication failed at {brokers} for API key {settings.kafka_api_key!r} "
                f"({settings.kafka_sasl_mechanism}): check KAFKA_API_KEY and KAFKA_API_SECRET")
    if isinstance(exc, kafka_errors.AuthorizationError):
        return f"Kafka refused access ({type(exc).__name__}) for topic {settings.kafka_topic!r}"
    if "certificate" in reason or "ssl" in reason:
        return _describe_tls(cause or str(exc), settings, brokers)
    if isinstance(exc, kafka_errors.KafkaTimeoutError) and "bootstrap" in str(exc).lower():
        return (f"no Kafka broker reachable at {brokers} over {settings.kafka_security_protocol}"
                f"{' (' + cause + ')' if cause else ''}: check KAFKA_BROKER_URL")
    if isinstance(exc, _TopicMissing):
        return str(exc)
    return f"Kafka error: {type(exc).__name__}: {exc}"


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


class _TopicMissing(Exception):
    pass


class _Reader:
    """The loop both readers share; subclasses say how to open and what to do with a batch."""

    role = "reader"
    keep_raw = False  # whether records keep their raw value (to dead-letter it)
    live = False  # latency first (the tail) rather than full batches (the forward path)

    def __init__(self, settings: Settings, status: ComponentStatus, batcher: Batcher) -> None:
        self.settings = settings
        self.status = status
        self.batcher = batcher

    def run(self, stop: Event) -> None:
        undecodable.install()
        backoff = Backoff(0.5, 10.0)
        while not stop.is_set():
            consumer: KafkaConsumer | None = None
            try:
                consumer = self._open()
                _client_log.clear()
                metrics.READER_UP.labels(self.role).set(1)
                backoff.reset()
                self._consume(consumer, stop)
            except Exception as exc:  # noqa: BLE001 - a reader must outlive any error
                if isinstance(exc, kafka_errors.KafkaError | _TopicMissing):
                    self.status.set(DEGRADED, describe_kafka_error(exc, self.settings))
                else:
                    log.exception("%s reader failed; reconnecting", self.role)
                    self.status.set(DEGRADED, f"{type(exc).__name__}: {exc}")
                metrics.READER_UP.labels(self.role).set(0)
                stop.wait(backoff.next())
            finally:
                if consumer is not None:
                    self._close(consumer)
        self.status.set(STOPPED)
        metrics.READER_UP.labels(self.role).set(0)

    def _consume(self, consumer: KafkaConsumer, stop: Event) -> None:
        last_poll = time.monotonic()
        while not stop.is_set():
            try:
                polled = consumer.poll(timeout_ms=int(self.batcher.time_left() * 1000) or 1,
                                       max_records=self.batcher.room)
            except UndecodableBatch as bad:
                self._skip_undecodable(consumer, bad)
                polled = {}
            polled = self._arrived(consumer, polled)
            if polled:
                # What this poll returned arrived after the last one ended: for the live
                # tail, a batch is due a window after that (not after now), so records
                # that queued while we fanned out the previous batch do not wait twice.
                self.batcher.add(self._decode(polled), since=last_poll if self.live else None)
            last_poll = time.monotonic()
            if self.batcher.ready():
                self._deliver(consumer, self.batcher.take())
            self._tick(consumer)
            # With a backlog, poll() returns at once and this loop would keep the CPU:
            # let HTTP requests (/health), client messages and kafka-python's
            # heartbeats run between batches (kafka-python #1515, #1687, #1867).
            let_others_run()
        if len(self.batcher):  # the final drain: nothing read is left behind
            self._deliver(consumer, self.batcher.take())

    def _skip_undecodable(self, consumer: KafkaConsumer, bad: UndecodableBatch) -> None:
        """Step over one batch poll() could not decode: deliver what came before it, then
        let the path say what it lost (``_skipped``) and read on after it."""
        tp = undecodable.failing_partition(consumer)
        if tp is None:
            raise bad  # cannot tell which partition: reconnect, as for any other error
        # Records of the batch read before the failure were delivered: start after them.
        first = min(max(bad.first, consumer.position(tp)), bad.last)
        gap = Gap(tp.topic, tp.partition, first, bad.last, UNDECODABLE, bad.reason)
        self.status.count("undecodable_batches")
        self.status.details["last_undecodable"] = {**gap.as_dict(), "at": iso_time(time.time())}
        metrics.UNDECODABLE_BATCHES.labels(self.role).inc()
        metrics.UNDECODABLE_OFFSETS.labels(self.role).inc(gap.last - gap.first + 1)
        log.error("%s reader skipped an undecodable batch: topic %s partition %d offsets %d-%d: %s",
                  self.role, gap.topic, gap.partition, gap.first, gap.last, gap.error)
        if len(self.batcher):
            self._deliver(consumer, self.batcher.take())
        self._skipped(consumer, tp, gap)

    def _skipped(self, consumer: KafkaConsumer, tp: TopicPartition, gap: Gap) -> None:
        """What the path does about a batch it could not read; then it reads on after it."""
        raise NotImplementedError

    def _arrived(self, consumer: KafkaConsumer, polled: dict[TopicPartition, list[Any]]
                 ) -> dict[TopicPartition, list[Any]]:
        """What to keep of a poll's records (all of them, but for a tail that fell behind)."""
        return polled

    def _decode(self, polled: dict[TopicPartition, list[Any]]) -> Iterable[LogRecord]:
        default_service = self.settings.default_service_name
        for tp, messages in polled.items():
            self.status.count("records_in", len(messages))
            metrics.RECORDS_CONSUMED.labels(self.role).inc(len(messages))
            for message in messages:
                record = decode(message.value, topic=tp.topic, partition=tp.partition, offset=message.offset,
                                kafka_timestamp_ms=message.timestamp, default_service=default_service,
                                max_bytes=self.settings.max_value_bytes, keep_raw=self.keep_raw,
                                key=message.key, headers=message.headers)
                if record.malformed:
                    self.status.count("records_malformed")
                    metrics.RECORDS_MALFORMED.labels(self.role).inc()
                yield record

    def _open(self) -> KafkaConsumer:
        raise NotImplementedError

    def _deliver(self, consumer: KafkaConsumer, batch: list[LogRecord]) -> None:
        raise NotImplementedError

    def _tick(self, consumer: KafkaConsumer) -> None:
        """Called once per poll; for periodic work."""

    def _close(self, consumer: KafkaConsumer) -> None:
        try:
            consumer.close(autocommit=False, timeout_ms=5_000)
        except Exception:  # noqa: BLE001 - closing a broken consumer may fail too
            log.debug("closing the %s consumer failed", self.role, exc_info=True)


class TailReader(_Reader):
    """All partitions, from the end, no group: feeds the live hub."""

    role = "tail"
    live = True

    def __init__(self, settings: Settings, status: ComponentStatus,
                 publish: Callable[[list[LogRecord]], Any],
                 positioned: Callable[[str, int, int], None] | None = None,
                 announce_gap: Callable[[Gap], None] | None = None,
                 listening_since: Callable[[], float | None] | None = None) -> None:
        super().__init__(settings, status, Batcher(settings.tail_batch_size, settings.tail_batch_interval_s,
                                                   settings.batch_max_bytes))
        self.publish = publish
        self.positioned = positioned  # told where each partition starts, for resume gaps
        self.announce_gap = announce_gap  # told about batches skipped as undecodable
        # With replay off, nobody needs records while no client is connected: the reader
        # then pauses every partition (no fetch, no decode) until one connects.
        self.listening_since = listening_since if settings.replay_records == 0 else None
        self._idle = False
        self.partition_refresh_s = settings.partition_refresh_s
        self._next_refresh = 0.0
        self._next_offsets: dict[TopicPartition, int] = {}
        self._last_shed = 0.0

    def _open(self) -> KafkaConsumer:
        consumer = KafkaConsumer(group_id=None, **tail_fetch_config(self.settings),
                                 **consumer_config(self.settings, self.role))
        self._idle = False  # a new consumer fetches; the next tick pauses it if nobody listens
        self.status.details.pop("idle", None)
        partitions = self._partitions(consumer, fresh=False)
        consumer.assign(partitions)
        # The first time, start at the end. After a reconnect (a broker restart,
        # say), go on from where we were, so nothing produced while the broker
        # was back up but we were not yet is skipped.
        fresh = [tp for tp in partitions if tp not in self._next_offsets]
        if fresh:  # (seek_to_end() with no partitions would mean all of them)
            consumer.seek_to_end(*fresh)
        for tp in partitions:
            if tp in self._next_offsets:
                consumer.seek(tp, self._next_offsets[tp])
            start = consumer.position(tp)  # resolve now, so "ok" means records produced from here on are seen
            if self.positioned is not None:
                self.positioned(tp.topic, tp.partition, start)
        self._next_refresh = time.monotonic() + self.partition_refresh_s
        self.status.set(OK)
        self.status.counters["partitions"] = len(partitions)
        return consumer

    def _partitions(self, consumer: KafkaConsumer, fresh: bool) -> list[TopicPartition]:
        topic = self.settings.kafka_topic
        if fresh:
            consumer.topics()  # forces a metadata request, so added partitions show up
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            raise _TopicMissing(f"Kafka topic {topic!r} does not exist at {','.join(self.settings.kafka_brokers)} "
                                "(check KAFKA_TOPIC)")
        return [TopicPartition(topic, p) for p in sorted(ids)]

    def _tick(self, consumer: KafkaConsumer) -> None:
        if "shedding" in self.status.details and time.monotonic() - self._last_shed > SHEDDING_SHOWN_S:
            del self.status.details["shedding"]
        if self.listening_since is not None:
            self._pause_without_listeners(consumer)
        if time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + self.partition_refresh_s
        current = consumer.assignment()
        try:
            found = self._partitions(consumer, fresh=True)
        except (kafka_errors.KafkaError, _TopicMissing) as exc:
            # Metadata unavailable for now (a broker restarting): fetching goes on
            # and reconnects by itself; look again at the next refresh.
            log.debug("partition refresh failed: %s", exc)
            return
        added = [tp for tp in found if tp not in current]
        if added:
            # A new partition is read from its beginning: everything in it is newer than our start.
            consumer.assign(sorted(current | set(added)))
            consumer.seek_to_beginning(*added)
            if self._idle:  # assign() forgets which partitions were paused
                consumer.pause(*consumer.assignment())
            self.status.counters["partitions"] = len(current) + len(added)
            log.info("tail reader picked up new partitions %s", [tp.partition for tp in added])

    def _pause_without_listeners(self, consumer: KafkaConsumer) -> None:
        """No client and no replay: stop fetching. When a client connects, read on from
        a little before it did (by timestamp), so nothing produced after it is missed."""
        assert self.listening_since is not None
        since = self.listening_since()
        if since is None and not self._idle:
            consumer.pause(*consumer.assignment())
            self._idle = True
            self.status.details["idle"] = "no clients and REPLAY_RECORDS=0: not reading"
        elif since is not None and self._idle:
            partitions = consumer.assignment()
            starts = consumer.offsets_for_times({tp: int((since - IDLE_RESUME_SLACK_S) * 1000) for tp in partitions})
            at_end = [tp for tp in partitions if starts.get(tp) is None]
            for tp, start in starts.items():
                if start is not None:
                    consumer.seek(tp, start.offset)
            if at_end:
                consumer.seek_to_end(*at_end)
            consumer.resume(*partitions)
            self._idle = False
            del self.status.details["idle"]

    def _deliver(self, consumer: KafkaConsumer, batch: list[LogRecord]) -> None:
        for record in batch:
            self._next_offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        self.publish(batch)
        self.status.count("batches")

    def _skipped(self, consumer: KafkaConsumer, tp: TopicPartition, gap: Gap) -> None:
        consumer.seek(tp, gap.last + 1)
        self._next_offsets[tp] = gap.last + 1
        if self.announce_gap is not None:
            self.announce_gap(gap)

    def _arrived(self, consumer: KafkaConsumer, polled: dict[TopicPartition, list[Any]]
                 ) -> dict[TopicPartition, list[Any]]:
        """Bounded staleness: a tail more than ``TAIL_MAX_LAG_S`` behind jumps to the end.

        Behind is measured by the Kafka timestamps of what this poll returned (the
        producer's send time, or the broker's append time): that is how old what
        clients would see is. Offsets alone cannot say it without a rate to divide
        by. A producer writing records with old timestamps is not a reason to shed:
        only a tail that also has a backlog waiting (more than a batch) jumps.
        """
        max_lag = self.settings.tail_max_lag_s
        if not polled or not max_lag:
            return polled
        behind = time.time() - min(messages[0].timestamp for messages in polled.values()) / 1000
        if behind <= max_lag:
            return polled
        waiting = sum(max((consumer.highwater(tp) or 0) - consumer.position(tp), 0) for tp in polled)
        if waiting < self.batcher.max_records:
            return polled
        self._shed(consumer, polled, behind)
        return {}

    def _shed(self, consumer: KafkaConsumer, polled: dict[TopicPartition, list[Any]], behind: float) -> None:
        """Drop what is stale (the batch being gathered and this poll), skip every partition
        to its end, and tell clients which ranges they will not get."""
        first_stale: dict[TopicPartition, int] = {}
        for record in self.batcher.take():
            first_stale.setdefault(TopicPartition(record.topic, record.partition), record.offset)
        for tp, messages in polled.items():
            first_stale.setdefault(tp, messages[0].offset)
        unread = {tp: first_stale.get(tp, consumer.position(tp)) for tp in consumer.assignment()}
        consumer.seek_to_end(*unread)
        error = f"the tail was {behind:.1f}s behind (TAIL_MAX_LAG_S={self.settings.tail_max_lag_s:g})"
        skipped = 0
        for tp, first in sorted(unread.items()):
            end = consumer.position(tp)
            self._next_offsets[tp] = end
            if end > first:
                skipped += end - first
                if self.announce_gap is not None:
                    self.announce_gap(Gap(tp.topic, tp.partition, first, end - 1, OVERLOAD, error))
        metrics.RECORDS_SHED.inc(skipped)
        self.status.count("records_shed", skipped)
        self._last_shed = time.monotonic()
        self.status.details["shedding"] = {"last": iso_time(time.time()), "behind_s": round(behind, 1)}
        log.warning("%s: skipped %d records to the end of every partition", error, skipped)


class ForwardReader(_Reader):
    """Consumer group, manual commits after the collector accepted: feeds the OTLP sink."""

    role = "forward"
    keep_raw = True

    def __init__(self, settings: Settings, status: ComponentStatus,
                 export: Callable[[Sequence[LogRecord]], None], abandon: Event,
                 dead_letter: Callable[[Sequence[LogRecord], str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(settings, status, Batcher(settings.forward_batch_size, settings.forward_batch_interval_s,
                                                   settings.batch_max_bytes))
        self.export = export
        self._clock = clock  # how long retries wait is measured on it (a fake one in unit tests)
        self.dead_letter = dead_letter
        self._next_lag_update = 0.0
        self._lag_partitions: set[int] = set()
        # Set when shutdown runs out of time: stop retrying a failing export and
        # leave its offsets uncommitted (the next owner re-reads those records).
        self.abandon = abandon

    def _open(self) -> KafkaConsumer:
        consumer = KafkaConsumer(group_id=self.settings.kafka_group_id,
                                 auto_offset_reset=self.settings.kafka_auto_offset_reset,
                                 session_timeout_ms=self.settings.kafka_session_timeout_ms,
                                 **consumer_config(self.settings, self.role))
        if not consumer.partitions_for_topic(self.settings.kafka_topic):
            raise _TopicMissing(f"Kafka topic {self.settings.kafka_topic!r} does not exist "
                                f"at {','.join(self.settings.kafka_brokers)} (check KAFKA_TOPIC)")
        consumer.subscribe([self.settings.kafka_topic])
        return consumer  # "ok" once the group is joined, see _tick

    def _tick(self, consumer: KafkaConsumer) -> None:
        self.status.counters["partitions"] = len(consumer.assignment())
        if time.monotonic() >= self._next_lag_update:
            self._next_lag_update = time.monotonic() + LAG_UPDATE_S
            self._update_lag(consumer)
        joined = consumer.group_metadata().state == MemberState.STABLE
        if joined and self.status.state != OK:
            self.status.set(OK)
        elif not joined and self.status.state == OK:
            self.status.set(STARTING, "rejoining the consumer group")

    def _deliver(self, consumer: KafkaConsumer, batch: list[LogRecord]) -> None:
        if not self._export_until_accepted(consumer, batch):
            return
        highest: dict[tuple[str, int], int] = {}
        for record in batch:
            where = (record.topic, record.partition)
            if highest.get(where, -1) < record.offset:
                highest[where] = record.offset
        metrics.RECORDS_EXPORTED.inc(len(batch))
        if self._commit(consumer, {TopicPartition(topic, partition): offset + 1
                                   for (topic, partition), offset in highest.items()}):
            self.status.count("records_committed", len(batch))
        else:
            # The partitions went to another member: it re-reads from the last commit, so
            # these records arrive twice, never zero times.
            self.status.count("commit_failures")
            log.warning("commit of %d exported records failed; they will be re-delivered", len(batch))

    def _commit(self, consumer: KafkaConsumer, next_offsets: dict[TopicPartition, int]) -> bool:
        """Commit the next offset to read per partition; True if the group took it."""
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in next_offsets.items()}
        rejoined = False
        for _attempt in range(3):
            try:
                consumer.commit(offsets)
                if rejoined:  # positions were reset to the old commit by the rejoin
                    for tp, offset in offsets.items():
                        consumer.seek(tp, offset.offset)
                return True
            except kafka_errors.RebalanceInProgressError:
                # The group is rebalancing: finish joining, then commit what we still own.
                self._poll_paused(consumer, REJOIN_WAIT_S)
                rejoined = True
                offsets = {tp: offset for tp, offset in offsets.items() if tp in consumer.assignment()}
                if not offsets:
                    return False
            except kafka_errors.KafkaError as exc:
                log.warning("commit failed: %s", exc)
                return False
        return False

    def _skipped(self, consumer: KafkaConsumer, tp: TopicPartition, gap: Gap) -> None:
        """Dead-letter the range (offsets and reason: there are no records to send), then
        commit past it. Never past records that an abandoned export left unexported."""
        if self.abandon.is_set() or not self._dead_letter_range(consumer, gap):
            return
        if tp in consumer.assignment():
            self._commit(consumer, {tp: gap.last + 1})
            consumer.seek(tp, gap.last + 1)

    def _dead_letter_range(self, consumer: KafkaConsumer, gap: Gap) -> bool:
        """Record the skipped range in DEAD_LETTER_TOPIC, retrying until it is written;
        False if shutdown abandoned it. Without a dead-letter topic the log line and the
        counters are the record."""
        if self.dead_letter is None:
            return True
        notice = LogRecord(0, 0, "unknown", "", "", {}, gap.topic, gap.partition, gap.first,
                           raw=orjson.dumps({"type": "undecodable_batch", **gap.as_dict()}))
        backoff = Backoff(0.5, self.settings.retry_backoff_max_s)
        while True:
            try:
                self.dead_letter([notice], f"undecodable batch: {gap.error}")
                self.status.count("ranges_dead_lettered")
                return True
            except Exception as exc:  # noqa: BLE001 - retried like an export
                log.warning("dead-lettering the undecodable range failed (%s); retrying", exc)
            if not self._wait_for_retry(consumer, backoff.next()):
                return False

    def _export_until_accepted(self, consumer: KafkaConsumer, batch: list[LogRecord]) -> bool:
        """Retry retriable failures with capped backoff (never sooner than the collector's
        ``Retry-After``) until accepted, dead-lettered, or abandoned at shutdown.

        Nothing new is read meanwhile: the one batch in flight is the whole
        backlog in memory (backpressure), and Kafka keeps the rest.
        """
        backoff = Backoff(0.5, self.settings.retry_backoff_max_s)
        while True:
            try:
                self.export(batch)
                return True
            except ExportError as exc:
                if not exc.retriable and self._set_aside(batch, str(exc)):
                    return True
                self.status.count("export_retries")
                metrics.EXPORT_RETRIES.inc()
                if not self._wait_for_retry(consumer, backoff.next(exc.retry_after or 0.0)):
                    log.warning("shutdown: %d records not exported, offsets left uncommitted", len(batch))
                    return False

    def _wait_for_retry(self, consumer: KafkaConsumer, delay: float) -> bool:
        """Wait ``delay`` seconds before a retry, staying in the group; False if shutdown
        abandoned the retry meanwhile."""
        deadline = self._clock() + delay
        while True:
            if self.abandon.wait(min(max(deadline - self._clock(), 0), 1.0)):
                return False
            self._stay_in_group(consumer)
            if self._clock() >= deadline:
                return True

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        """Records behind the end per owned partition, from what the fetches already
        told us (no extra request); partitions we no longer own report 0."""
        owned = set()
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            try:
                position = consumer.position(tp, timeout_ms=0)
            except kafka_errors.KafkaError:
                position = None
            if end is not None and position is not None:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(end - position, 0))
                owned.add(tp.partition)
        for partition in self._lag_partitions - owned:
            metrics.CONSUMER_LAG.labels(str(partition)).set(0)
        self._lag_partitions = owned

    def _stay_in_group(self, consumer: KafkaConsumer) -> None:
        """Tell the group we are alive while a retry waits, so an outage longer than
        max.poll.interval.ms does not cost our partitions."""
        self._poll_paused(consumer, 0)

    def _poll_paused(self, consumer: KafkaConsumer, wait_s: float) -> None:
        """Poll with our partitions paused: it fetches nothing of theirs, but lets a
        rebalance complete (for up to ``wait_s``). A partition that a rebalance just
        gave us is not paused, so whatever arrives from it goes into the next batch:
        dropping it would move the position past records never exported."""
        deadline = self._clock() + wait_s
        assigned = consumer.assignment()
        consumer.pause(*assigned)
        try:
            while True:
                polled = consumer.poll(timeout_ms=100 if wait_s else 0, max_records=self.batcher.room)
                if polled:
                    self.batcher.add(self._decode(polled))
                stable = consumer.group_metadata().state == MemberState.STABLE
                if stable or self._clock() >= deadline:
                    return
        finally:
            consumer.resume(*(consumer.assignment() & assigned))

    def _set_aside(self, batch: list[LogRecord], reason: str) -> bool:
        """A batch the collector refuses for good (400, 413…): retrying cannot help, and
        one poison batch must not stop the pipeline. With a dead-letter topic its raw
        values go there (reason in a header) and the offsets move on; without one the
        records are counted and logged as lost. False: the dead-letter write failed."""
        if self.dead_letter is None:
            self.status.count("records_rejected", len(batch))
            metrics.RECORDS_REJECTED.inc(len(batch))
            log.error("collector rejected %d records permanently and DEAD_LETTER_TOPIC is not set; "
                      "they are skipped: %s", len(batch), reason)
            return True
        try:
            self.dead_letter(batch, reason)
        except Exception as exc:  # noqa: BLE001 - retried like an export
            log.warning("dead-lettering %d records failed (%s); retrying", len(batch), exc)
            return False
        self.status.count("records_dead_lettered", len(batch))
        metrics.RECORDS_DEAD_LETTERED.inc(len(batch))
        log.error("collector rejected %d records permanently (%s); sent to dead-letter topic %r",
                  len(batch), reason, self.settings.dead_letter_topic)
        return True
