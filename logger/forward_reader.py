"""The forward reader: consumer group ``KAFKA_GROUP_ID``, at-least-once to the collector.

It shares the topic's partitions with the group's other members, so each
record goes to the collector once per group. A batch takes three steps, each
in one place:

1. **export** (:meth:`ForwardReader._export_until_accepted`): one attempt at a
   time, retried with capped backoff (never sooner than ``Retry-After``) while
   nothing new is read; abandoned only at shutdown, uncommitted;
2. **set aside** what the collector refuses for good, and record batches that
   could not be decoded: to ``DEAD_LETTER_TOPIC`` (:meth:`_set_aside`,
   :meth:`_dead_letter_range`), or counted and logged without one;
3. **commit** (:meth:`_commit`) the next offset of each partition, only for
   what was exported or set aside, finishing a rebalance first if one is under
   way (:meth:`_poll_paused`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import orjson
from gevent.event import Event
from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors
from kafka.structs import MemberState, OffsetAndMetadata

from logger import metrics
from logger.backoff import Backoff
from logger.batcher import Batcher
from logger.config import Settings
from logger.errors import ExportError
from logger.kafka_client import TopicMissing, consumer_config
from logger.reader import Reader
from logger.records import LogRecord
from logger.replay import Gap
from logger.status import OK, STARTING, ComponentStatus

log = logging.getLogger(__name__)

LAG_UPDATE_S = 2.0
REJOIN_WAIT_S = 10.0  # how long a commit waits for a rebalance to finish before giving up


class ForwardReader(Reader):
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
            raise TopicMissing(f"Kafka topic {self.settings.kafka_topic!r} does not exist "
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
            log.error("collector rejected %d records permanently and DEAD_LETTER_TOPIC is not set; "
                      "they are skipped: %s", len(batch), reason)
            return True
        try:
            self.dead_letter(batch, reason)
        except Exception as exc:  # noqa: BLE001 - retried like an export
            log.warning("dead-lettering %d records failed (%s); retrying", len(batch), exc)
            return False
        self.status.count("records_dead_lettered", len(batch))
        log.error("collector rejected %d records permanently (%s); sent to dead-letter topic %r",
                  len(batch), reason, self.settings.dead_letter_topic)
        return True
