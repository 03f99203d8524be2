"""The tail reader: every partition, from the end, no group, no commits: feeds the live hub.

Every worker and replica reads the whole topic for its own clients, so Kafka
is the broadcast bus. It starts at the end, picks up partitions added later,
and after a reconnect goes on from where it was. Two policies keep it live:
bounded staleness (``TAIL_MAX_LAG_S``: a tail that falls behind skips to the
end and says which ranges it skipped) and no work without readers (with the
replay ring off and no client, it pauses every partition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors

from logger.batcher import Batcher
from logger.config import Settings
from logger.kafka_client import TopicMissing, consumer_config
from logger.reader import Reader
from logger.records import LogRecord
from logger.replay import OVERLOAD, Gap
from logger.status import OK, ComponentStatus, iso_time

log = logging.getLogger(__name__)

TAIL_FETCH_MIN_BYTES = 256 * 1024  # a fetch answers at once when this much is waiting
IDLE_RESUME_SLACK_S = 1.0  # an idle tail resumes this long before the first client connected (clock skew)
SHEDDING_SHOWN_S = 10.0  # /health shows the tail as shedding for this long after it last skipped ahead


def tail_fetch_config(settings: Settings) -> dict[str, int]:
    """Let the broker gather records for a fifth of a batch window before it answers.

    A steady trickle of records then costs a few fetches per window instead of
    one per produce request. kafka-python's network code is Python: at 2,000
    records/s those fetches were a quarter of the worker's CPU (48 % → 36 %).
    Capped at kafka-python's own default wait (500 ms) for long windows.
    """
    window_ms = int(settings.tail_batch_interval_s * 1000)
    return {"fetch_min_bytes": TAIL_FETCH_MIN_BYTES, "fetch_max_wait_ms": min(max(window_ms // 5, 1), 500)}


class TailReader(Reader):
    """All partitions, from the end, no group: feeds the live hub."""

    role = "tail"
    live = True

    def __init__(self, settings: Settings, status: ComponentStatus,
                 broadcast: Callable[[list[LogRecord]], Any],
                 positioned: Callable[[str, int, int], None] | None = None,
                 announce_gap: Callable[[Gap], None] | None = None,
                 listening_since: Callable[[], float | None] | None = None) -> None:
        super().__init__(settings, status, Batcher(settings.tail_batch_size, settings.tail_batch_interval_s,
                                                   settings.batch_max_bytes))
        self.broadcast = broadcast  # the hub: every client of this worker
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
            raise TopicMissing(f"Kafka topic {topic!r} does not exist at {','.join(self.settings.kafka_brokers)} "
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
        except (kafka_errors.KafkaError, TopicMissing) as exc:
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
            # The ends first, then the times: a partition with no record since then is read from
            # the end it had *before* that question. seek_to_end() would resolve the end at the
            # next fetch and skip whatever was produced meanwhile (a client's first records).
            ends = consumer.end_offsets(list(partitions))
            starts = consumer.offsets_for_times({tp: int((since - IDLE_RESUME_SLACK_S) * 1000) for tp in partitions})
            for tp in partitions:
                start = starts.get(tp)
                consumer.seek(tp, start.offset if start is not None else ends[tp])
            consumer.resume(*partitions)
            self._idle = False
            del self.status.details["idle"]

    def _deliver(self, consumer: KafkaConsumer, batch: list[LogRecord]) -> None:
        for record in batch:
            self._next_offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        self.broadcast(batch)
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
        self.status.count("records_shed", skipped)
        self._last_shed = time.monotonic()
        self.status.details["shedding"] = {"last": iso_time(time.time()), "behind_s": round(behind, 1)}
        log.warning("%s: skipped %d records to the end of every partition", error, skipped)
