"""The loop both Kafka readers share, one greenlet each: poll → decode → batch → hand on.

A reader reconnects with capped backoff that ``stop`` interrupts, and drains
its last batch on the way out. It never lets an exception escape: it is
logged, shown in ``/health``, and the reader reconnects. A record batch that
cannot be decoded is not an error of the connection: the reader skips exactly
that batch (see :mod:`logger.undecodable`), says so, and goes on without
reconnecting. Subclasses say how to open the consumer and what to do with a
batch: :class:`logger.tail_reader.TailReader` (every partition, for the live
clients) and :class:`logger.forward_reader.ForwardReader` (the consumer group,
for the collector).

kafka-python 3 runs its network I/O (heartbeats included) on a thread of its
own, which gevent's monkey-patching turns into a greenlet: our loops must
yield regularly or the group session starves (kafka-python issues #1515,
#1687, #1867). They do, between every two batches: :func:`let_others_run`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import gevent
from gevent.event import Event
from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors

from logger import metrics, undecodable
from logger.backoff import Backoff
from logger.batcher import Batcher
from logger.config import Settings
from logger.kafka_client import KafkaClientLog, TopicMissing, describe_kafka_error
from logger.records import LogRecord, decode
from logger.replay import UNDECODABLE, Gap
from logger.status import DEGRADED, STOPPED, ComponentStatus, iso_time
from logger.undecodable import UndecodableBatch

log = logging.getLogger(__name__)

YIELD_MOST_S = 0.02  # the longest a reader lets others run between two batches


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


class Reader:
    """The loop both readers share; subclasses say how to open and what to do with a batch."""

    role = "reader"
    keep_raw = False  # whether records keep their raw value (to dead-letter it)
    live = False  # latency first (the tail) rather than full batches (the forward path)

    def __init__(self, settings: Settings, status: ComponentStatus, batcher: Batcher) -> None:
        self.settings = settings
        self.status = status
        self.batcher = batcher
        self.client_log = KafkaClientLog()  # why kafka-python failed, as it logged it

    def run(self, stop: Event) -> None:
        undecodable.install()
        with self.client_log.watching():
            self._run(stop)

    def _run(self, stop: Event) -> None:
        backoff = Backoff(0.5, 10.0)
        while not stop.is_set():
            consumer: KafkaConsumer | None = None
            try:
                consumer = self._open()
                self.client_log.clear()
                metrics.READER_UP.labels(self.role).set(1)
                backoff.reset()
                self._consume(consumer, stop)
            except Exception as exc:  # noqa: BLE001 - a reader must outlive any error
                if isinstance(exc, kafka_errors.KafkaError | TopicMissing):
                    self.status.set(DEGRADED, describe_kafka_error(exc, self.settings, self.client_log))
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
        self.status.count("undecodable_offsets", gap.last - gap.first + 1)
        self.status.details["last_undecodable"] = {**gap.as_dict(), "at": iso_time(time.time())}
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
            for message in messages:
                record = decode(message.value, topic=tp.topic, partition=tp.partition, offset=message.offset,
                                kafka_timestamp_ms=message.timestamp, default_service=default_service,
                                max_bytes=self.settings.max_value_bytes, keep_raw=self.keep_raw,
                                key=message.key, headers=message.headers)
                if record.malformed:
                    self.status.count("records_malformed")
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
