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
   what was exported or set aside, within ``COMMIT_TIMEOUT_MS``, finishing a
   rebalance first if one is under way (:meth:`_poll_paused`).

A **rebalance** is handled in one place, :class:`ForwardRebalance`: before a
partition goes, what was exported from it is committed, and what was read from
it but not exported is dropped once the group says it went (its next owner
reads it from that commit), so nothing is sent twice or missed; partitions we
keep keep their records, in place, however long the join takes. A batch that
falls due during a join waits for it, ``HANDOVER_WAIT_S`` at most, so that what
went is not exported too. Partitions assigned while a retry waits stay paused
until it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from gevent.event import Event
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
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
# How long a retry's poll waits for a join under way, so that a rebalance during an outage
# ends in about one round trip rather than over several one-second waits. (A join that ends
# between two polls counts too: logger.kafka_join_fix.)
JOIN_WAIT_S = 0.2
# How long a batch due while a join is under way waits for it to say which partitions went:
# exported before that, its records of those partitions could not be committed (the member
# is rebalancing) and their next owner would export them again. Bounded: a join that does not
# end must not hold the pipeline (the batch then goes out as before).
HANDOVER_WAIT_S = 2.0
# A commit's deadline (kafka-python's default is request_timeout_ms, 30 s): it must fit in
# the drain budget (READERS_SHARE of GRACEFUL_TIMEOUT - 3 s, 10 s by default) with the last
# export; a commit that blocked longer made the drain abandon it (issue 15). A commit that
# times out is counted as failed: its records may come twice, never zero times.
COMMIT_TIMEOUT_MS = 5_000


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
        # The batch being exported. A rebalance while it waits for a retry takes out
        # the records of the partitions that went: their next owner reads them.
        self._in_flight: list[LogRecord] = []
        # Per partition, the next offset after records the collector accepted but the
        # group has not taken yet (a commit failed or timed out): committed with the next
        # batch, or before a rebalance takes the partition away.
        self._uncommitted: dict[TopicPartition, int] = {}
        # True while we poll only to stay in the group (a retry waits, a rejoin finishes):
        # nothing may be read then, from partitions a rebalance assigns meanwhile neither.
        self._holding = False
        # Partitions revoked but still ours until the join ends (the eager protocol): their
        # records stay where they are, exported or retried as usual, until the assignment
        # says which of them went (see release_partitions).
        self._handing_over: set[TopicPartition] = set()

    def _open(self) -> KafkaConsumer:
        consumer = KafkaConsumer(group_id=self.settings.kafka_group_id,
                                 auto_offset_reset=self.settings.kafka_auto_offset_reset,
                                 session_timeout_ms=self.settings.kafka_session_timeout_ms,
                                 **consumer_config(self.settings, self.role))
        if not consumer.partitions_for_topic(self.settings.kafka_topic):
            raise TopicMissing(f"Kafka topic {self.settings.kafka_topic!r} does not exist "
                                f"at {','.join(self.settings.kafka_brokers)} (check KAFKA_TOPIC)")
        self._uncommitted.clear()  # a new consumer starts from the group's commits
        self._handing_over.clear()
        consumer.subscribe([self.settings.kafka_topic], listener=ForwardRebalance(self, consumer))
        return consumer  # "ok" once the group is joined, see _tick

    def _tick(self, consumer: KafkaConsumer) -> None:
        self.status.counters["partitions"] = len(consumer.assignment())
        if time.monotonic() >= self._next_lag_update:
            self._next_lag_update = time.monotonic() + LAG_UPDATE_S
            self._update_lag(consumer)
        joined = _group_stable(consumer)
        if joined and self.status.state != OK:
            self.status.set(OK)
        elif not joined and self.status.state == OK:
            self.status.set(STARTING, "rejoining the consumer group")

    def _deliver(self, consumer: KafkaConsumer, batch: list[LogRecord]) -> None:
        self._in_flight = batch
        try:
            if self._handing_over and not _group_stable(consumer):
                # Revoked, not yet reassigned: the join drops from the batch what went.
                self._poll_paused(consumer, HANDOVER_WAIT_S)
            if not self._export_until_accepted(consumer):
                return
            exported = self._in_flight  # less what a rebalance took away during a retry
        finally:
            self._in_flight = []
        if not exported:
            return
        highest: dict[tuple[str, int], int] = {}
        for record in exported:
            where = (record.topic, record.partition)
            if highest.get(where, -1) < record.offset:
                highest[where] = record.offset
        for (topic, partition), offset in highest.items():
            tp = TopicPartition(topic, partition)
            self._uncommitted[tp] = max(self._uncommitted.get(tp, 0), offset + 1)
        if self._commit(consumer, dict(self._uncommitted)):
            self.status.count("records_committed", len(exported))
        else:
            # Committed with the next batch, or when the partition is revoked; if both fail
            # the next owner re-reads from the last commit: twice, never zero times.
            self.status.count("commit_failures")
            log.warning("commit of %d exported records failed; they will be re-delivered", len(exported))

    def _commit(self, consumer: KafkaConsumer, next_offsets: dict[TopicPartition, int]) -> bool:
        """Commit the next offset to read per partition; True if the group took it."""
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in next_offsets.items()}
        rejoined = False
        for _attempt in range(3):
            try:
                consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
                self._taken(offsets)
                if rejoined:  # positions were reset to the old commit by the rejoin
                    for tp, offset in offsets.items():
                        consumer.seek(tp, offset.offset)
                return True
            except kafka_errors.RebalanceInProgressError:
                # The group is rebalancing: finish joining, then commit what we still own.
                self._poll_paused(consumer, REJOIN_WAIT_S)
                if not _group_stable(consumer):
                    log.warning("the consumer group did not finish rebalancing within %g s (%s); "
                                "committing later", REJOIN_WAIT_S, _join_state(consumer))
                rejoined = True
                offsets = {tp: offset for tp, offset in offsets.items() if tp in consumer.assignment()}
                if not offsets:
                    return False
            except kafka_errors.KafkaError as exc:
                log.warning("commit failed: %s", exc)
                return False
        return False

    def _taken(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """The group took these offsets: what they cover is no longer uncommitted."""
        for tp, offset in offsets.items():
            if self._uncommitted.get(tp, -1) <= offset.offset:
                self._uncommitted.pop(tp, None)

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

    def _export_until_accepted(self, consumer: KafkaConsumer) -> bool:
        """Export the batch in flight, retrying retriable failures with capped backoff (never
        sooner than the collector's ``Retry-After``) until accepted, dead-lettered, handed
        over by a rebalance, or abandoned at shutdown (False).

        Nothing new is read meanwhile: the one batch in flight is the whole
        backlog in memory (backpressure), and Kafka keeps the rest.
        """
        backoff = Backoff(0.5, self.settings.retry_backoff_max_s)
        while self._in_flight:
            try:
                self.export(self._in_flight)
                return True
            except ExportError as exc:
                if not exc.retriable and self._set_aside(self._in_flight, str(exc)):
                    return True
                self.status.count("export_retries")
                if not self._wait_for_retry(consumer, backoff.next(exc.retry_after or 0.0)):
                    log.warning("shutdown: %d records not exported, offsets left uncommitted", len(self._in_flight))
                    return False
        # Every partition of the batch went to other members during a retry: their next
        # owners read those records from the last commit.
        return True

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
        max.poll.interval.ms does not cost our partitions; a join under way gets
        ``JOIN_WAIT_S`` to end."""
        self._poll_paused(consumer, 0 if _group_stable(consumer) else JOIN_WAIT_S)

    def _poll_paused(self, consumer: KafkaConsumer, wait_s: float) -> None:
        """Poll with every partition paused: it reads nothing, but keeps us in the group and
        lets a rebalance complete (for up to ``wait_s``). Partitions a rebalance assigns
        meanwhile are paused as they come (:meth:`take_back_partitions`): their records
        would otherwise fill the next batch in the middle of a retry (issue 13)."""
        deadline = self._clock() + wait_s
        consumer.pause(*consumer.assignment())
        self._holding = True
        try:
            while True:
                self._unread(consumer, consumer.poll(timeout_ms=100 if wait_s else 0, max_records=self.batcher.room))
                if _group_stable(consumer) or self._clock() >= deadline:
                    return
        finally:
            self._holding = False
            consumer.resume(*consumer.assignment())

    @staticmethod
    def _unread(consumer: KafkaConsumer, polled: dict[TopicPartition, list[Any]]) -> None:
        """Put back what a paused poll returned all the same (kafka-python returns nothing
        of a paused partition, but a listener that failed would leave a new one unpaused):
        keeping it would read during a retry, dropping it would skip records never exported."""
        for tp, messages in polled.items():
            if messages and tp in consumer.assignment():
                consumer.seek(tp, messages[0].offset)

    # -- rebalances (kafka-python calls these through ForwardRebalance, inside our poll) -----------

    def release_partitions(self, consumer: KafkaConsumer, revoked: set[TopicPartition]
                           ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Partitions are about to go: drop what was read from those already gone, and
        return what was exported but not committed, to commit now.

        What was not exported is not exported by us if its partition goes: the next owner
        reads it from the last commit anyway, so it would go twice. Under the eager
        protocol (kafka-python's default assignors) every partition is revoked *before*
        the group says who gets what, and it stays assigned until then: those records stay
        where they are (the batch being gathered, the one being retried) until
        :meth:`take_back_partitions` knows which partitions went. Taking them out here
        made them hostages of the join: a join that did not end (see
        :mod:`logger.kafka_join_fix`) left them neither exported nor retried, and the
        retry of an unreachable collector stopped. A partition already gone
        (cooperative) drops them at once.
        """
        owned = consumer.assignment()
        self._drop_records(lambda tp: tp in revoked and tp not in owned)
        self._handing_over |= revoked & owned
        return {tp: OffsetAndMetadata(self._uncommitted.pop(tp), "", -1)
                for tp in revoked if tp in self._uncommitted}

    def take_back_partitions(self, consumer: KafkaConsumer, assigned: set[TopicPartition]) -> None:
        """The rebalance is done: records of revoked partitions that went are dropped from
        the batch being gathered and the one being retried (their next owner reads them);
        those of partitions we kept stay (kafka-python 3 keeps a retained partition's
        position, so they are not read twice). While we hold (a retry waits), new
        partitions wait too: :meth:`_poll_paused` resumes them."""
        went = self._handing_over - assigned
        self._handing_over = set()
        self._drop_records(lambda tp: tp in went)
        if self._holding and assigned:
            consumer.pause(*assigned)

    def _drop_records(self, gone: Callable[[TopicPartition], bool]) -> None:
        """Forget the records of partitions that are ``gone``, gathered or in flight: never
        exported, never committed, their next owner reads them from the last commit."""
        def of_gone(record: LogRecord) -> bool:
            return gone(TopicPartition(record.topic, record.partition))
        kept = [r for r in self._in_flight if not of_gone(r)]
        dropped = len(self._in_flight) - len(kept) + len(self.batcher.drop(of_gone))
        self._in_flight = kept
        if dropped:
            self.status.count("records_handed_over", dropped)

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


def _group_stable(consumer: KafkaConsumer) -> bool:
    """Joined, and not in the middle of a rebalance: commits are taken."""
    return consumer.group_metadata().state == MemberState.STABLE


def _join_state(consumer: KafkaConsumer) -> str:
    """Where kafka-python's group membership stands, for a warning about a join that does not
    end: enough to tell a join still under way from one that was never completed
    (logger.kafka_join_fix)."""
    try:
        coordinator = consumer._coordinator  # private: read only, for this one line
        task = coordinator._join_task
        return (f"member state {coordinator.state}, generation {coordinator._generation.generation_id}, "
                f"rejoin needed {coordinator.need_rejoin()}, join under way {task is not None and not task.is_done}, "
                f"coordinator {coordinator.coordinator_id}")
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never stop the reader
        return f"state unknown: {exc!r}"


class ForwardRebalance(AsyncConsumerRebalanceListener):
    """The forward reader's rebalance listener: commit what was exported, hand over the rest.

    kafka-python 3 runs a rebalance listener on its own I/O loop (a greenlet under
    gevent), inside our ``poll()`` or ``close()``, never while we export. A plain
    ``ConsumerRebalanceListener`` may not commit there: ``commit()`` waits for that very
    loop and raises RuntimeError on it (dpkp/kafka-python#2968), and whatever it blocks
    on stops heartbeats. This async variant awaits the commit on the loop instead, the
    way kafka-python's own pre-rebalance auto-commit does
    (``ConsumerCoordinator._on_join_prepare_async``, kafka-python 3.0.12, pinned), with
    ``COMMIT_TIMEOUT_MS`` as its deadline. The listener must not raise: kafka-python would
    re-raise it from ``poll()`` and the reader would reconnect.
    """

    def __init__(self, reader: ForwardReader, consumer: KafkaConsumer) -> None:
        self.reader = reader
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            offsets = self.reader.release_partitions(self.consumer, set(revoked))
            if offsets:
                # A private coroutine: the public commit() cannot run on the I/O loop, and
                # commit_async() has no deadline but request_timeout_ms.
                await self.consumer._coordinator._commit_offsets_sync_async(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
                self.reader.status.count("revoke_commits")
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            self.reader.status.count("commit_failures")
            log.warning("before giving up partitions %s: %s; their next owner may re-export some records",
                        sorted(tp.partition for tp in revoked), exc)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Evicted from the group (a session that expired): the group takes no commit from
        us now, kafka-python forgets the positions, and the next owners (us too, after
        rejoining) read from the last commit."""
        try:
            self.reader.release_partitions(self.consumer, set(lost))
            self.reader.take_back_partitions(self.consumer, set())
        except Exception:  # noqa: BLE001 - see the class docstring
            log.exception("handing over lost partitions failed")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            self.reader.take_back_partitions(self.consumer, set(assigned))
        except Exception:  # noqa: BLE001 - see the class docstring
            log.exception("taking back the partitions we kept failed")
