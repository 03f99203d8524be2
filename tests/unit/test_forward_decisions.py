"""The forward path's decisions, against a fake clock, a scripted collector and a fake consumer.

What is committed (``offset + 1`` of the highest exported record per partition), when (only
after the collector accepted the batch, or it was set aside for good), after which answer
(429/5xx/unreachable are retried, 400/413 are not) and how long a retry waits (backoff, never
sooner than ``Retry-After``, capped). No Kafka, no network, no real waiting: each test runs in
milliseconds, so a mutation of any of these decisions fails here at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import TopicPartition
from kafka import errors as kafka_errors
from kafka.structs import MemberState

from logger import otlp
from logger.config import Settings
from logger.errors import ExportError
from logger.forward_reader import ForwardReader
from logger.otlp import OtlpSink
from logger.records import LogRecord, decode
from logger.status import ComponentStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeAbandon:
    """Stands in for the shutdown Event: waiting moves the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock, at: float | None = None) -> None:
        self.clock = clock
        self.at = at  # the clock time at which shutdown gives up on the export
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return self.at is not None and self.clock.now >= self.at

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if self.at is not None and self.clock.now + timeout >= self.at:
            self.clock.now = max(self.clock.now, self.at)
            return True
        self.clock.now += timeout
        return False


class FakeConsumer:
    """The parts of KafkaConsumer the forward path's decisions touch, recording each call."""

    def __init__(self, partitions: Sequence[int] = (0, 1), topic: str = "logs") -> None:
        self.assigned = {TopicPartition(topic, p) for p in partitions}
        self.paused: set[TopicPartition] = set()
        self.calls: list[tuple[str, Any]] = []
        self.commit_errors: list[Exception] = []  # raised by the next commits, in order

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        # Fetching from a partition that is not paused would read new records.
        self.calls.append(("poll", frozenset(self.assigned - self.paused)))
        return {}

    def group_metadata(self) -> Any:
        return SimpleNamespace(state=MemberState.STABLE)

    def commit(self, offsets: dict) -> None:
        self.calls.append(("commit", {(tp.partition): meta.offset for tp, meta in offsets.items()}))
        if self.commit_errors:
            raise self.commit_errors.pop(0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", (tp.partition, offset)))

    def commits(self) -> list[dict[int, int]]:
        return [arg for name, arg in self.calls if name == "commit"]


class ScriptedCollector:
    """``export`` answers from a script: None accepts, an ExportError refuses."""

    def __init__(self, clock: FakeClock, answers: list[ExportError | None], consumer: FakeConsumer) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.consumer = consumer
        self.attempts: list[float] = []  # clock time of each attempt

    def __call__(self, batch: Sequence[LogRecord]) -> None:
        self.attempts.append(self.clock.now)
        assert not self.consumer.commits(), "nothing is committed before an export is accepted"
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def record(partition: int, offset: int) -> LogRecord:
    return decode(json.dumps({"message": f"{partition}:{offset}"}).encode(), topic="logs", partition=partition,
                  offset=offset, keep_raw=True)


BATCH = [record(0, 5), record(0, 7), record(0, 6), record(1, 3)]  # not in offset order within partition 0


def unavailable(retry_after: float | None = None) -> ExportError:
    return ExportError("HTTP 503", status=503, retriable=True, retry_after=retry_after)


def rejected() -> ExportError:
    return ExportError("HTTP 400", status=400, retriable=False)


def forward(answers: list[ExportError | None], *, abandon_at: float | None = None, dead_letter: Any = None,
            retry_max_s: float = 30.0, consumer: FakeConsumer | None = None):
    clock = FakeClock()
    consumer = consumer or FakeConsumer()
    collector = ScriptedCollector(clock, answers, consumer)
    abandon = FakeAbandon(clock, None if abandon_at is None else clock.now + abandon_at)
    reader = ForwardReader(Settings(retry_backoff_max_s=retry_max_s), ComponentStatus("forward"), collector,
                           abandon, dead_letter=dead_letter, clock=clock)
    return reader, consumer, collector, clock


def waits_between(collector: ScriptedCollector) -> list[float]:
    return [later - earlier for earlier, later in zip(collector.attempts, collector.attempts[1:])]


def test_an_accepted_batch_commits_the_next_offset_of_each_partitions_highest_record():
    reader, consumer, collector, _ = forward([None])
    reader._deliver(consumer, BATCH)
    assert len(collector.attempts) == 1
    assert consumer.commits() == [{0: 8, 1: 4}], "offset + 1 of the highest exported record, per partition"
    assert reader.status.counters["records_committed"] == 4


def test_a_retriable_failure_is_retried_and_committed_only_after_the_collector_accepts():
    reader, consumer, collector, _ = forward([unavailable(), unavailable(), None])
    reader._deliver(consumer, BATCH)
    assert len(collector.attempts) == 3
    assert consumer.commits() == [{0: 8, 1: 4}]
    assert reader.status.counters["export_retries"] == 2
    first, second = waits_between(collector)
    assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0, "capped exponential backoff from 0.5 s"


def test_a_retry_waits_at_least_the_collectors_retry_after():
    reader, consumer, collector, _ = forward([unavailable(retry_after=7.0), None])
    reader._deliver(consumer, BATCH)
    (wait,) = waits_between(collector)
    assert 7.0 <= wait < 7.5, f"retried after {wait:.2f} s, not after Retry-After's 7 s"
    assert consumer.commits() == [{0: 8, 1: 4}]


def test_while_a_retry_waits_nothing_new_is_read_and_the_group_hears_from_us():
    reader, consumer, collector, _ = forward([unavailable(retry_after=5.0), None])
    reader._deliver(consumer, BATCH)
    polls = [fetchable for name, fetchable in consumer.calls if name == "poll"]
    assert len(polls) >= 5, "polled (paused) about once a second to stay in the group"
    assert all(fetchable == frozenset() for fetchable in polls), "every owned partition was paused while polling"
    assert consumer.paused == set(), "and resumed afterwards"
    assert len(reader.batcher) == 0


def test_backoff_grows_to_the_configured_cap_and_no_further():
    reader, consumer, collector, _ = forward([unavailable()] * 8 + [None], retry_max_s=2.0)
    reader._deliver(consumer, BATCH)
    waits = waits_between(collector)
    assert len(waits) == 8
    assert all(wait <= 2.0 + 1e-9 for wait in waits)
    assert all(wait >= 1.0 for wait in waits[3:]), "from the fourth retry on, between cap/2 and the cap"


def test_an_export_abandoned_at_shutdown_commits_nothing():
    reader, consumer, collector, clock = forward([unavailable()] * 100, abandon_at=3.0)
    reader._deliver(consumer, BATCH)
    assert consumer.commits() == [], "offsets of a batch the collector never accepted stay uncommitted"
    assert collector.attempts and collector.attempts[-1] < clock.now
    assert "records_committed" not in reader.status.counters


def test_a_batch_refused_for_good_without_a_dead_letter_topic_is_counted_and_skipped(caplog):
    reader, consumer, collector, _ = forward([rejected()])
    reader._deliver(consumer, BATCH)
    assert len(collector.attempts) == 1, "a 400 is not retried"
    assert reader.status.counters["records_rejected"] == 4
    assert "collector rejected 4 records permanently and DEAD_LETTER_TOPIC is not set" in caplog.text
    assert consumer.commits() == [{0: 8, 1: 4}], "the offsets move on past the poison batch"


def test_a_batch_refused_for_good_goes_to_the_dead_letter_topic_before_the_offsets_move():
    letters: list[tuple[list[int], str]] = []
    consumer = FakeConsumer()

    def dead_letter(batch: Sequence[LogRecord], reason: str) -> None:
        assert not consumer.commits()
        letters.append(([r.offset for r in batch], reason))
    reader, consumer, collector, _ = forward([rejected()], dead_letter=dead_letter, consumer=consumer)
    reader._deliver(consumer, BATCH)
    assert letters == [([5, 7, 6, 3], "HTTP 400")]
    assert reader.status.counters["records_dead_lettered"] == 4
    assert consumer.commits() == [{0: 8, 1: 4}]


def test_a_failing_dead_letter_write_is_retried_like_an_export():
    failures = [RuntimeError("broker down")]

    def dead_letter(batch: Sequence[LogRecord], reason: str) -> None:
        if failures:
            raise failures.pop()
    reader, consumer, collector, _ = forward([rejected(), rejected()], dead_letter=dead_letter)
    reader._deliver(consumer, BATCH)
    assert len(collector.attempts) == 2 and 0.25 <= waits_between(collector)[0] <= 0.5
    assert reader.status.counters["records_dead_lettered"] == 4
    assert consumer.commits() == [{0: 8, 1: 4}]


def test_a_failed_commit_is_counted_and_the_reader_goes_on():
    consumer = FakeConsumer()
    consumer.commit_errors = [kafka_errors.CommitFailedError("rebalanced away")]
    reader, consumer, collector, _ = forward([None], consumer=consumer)
    reader._deliver(consumer, BATCH)
    assert consumer.commits() == [{0: 8, 1: 4}], "tried once; the new owner re-reads (duplicates, not a loss)"
    assert reader.status.counters["commit_failures"] == 1
    assert "records_committed" not in reader.status.counters


def test_a_commit_during_a_rebalance_is_retried_for_the_partitions_still_owned():
    consumer = FakeConsumer()
    consumer.commit_errors = [kafka_errors.RebalanceInProgressError()]
    reader, consumer, collector, _ = forward([None], consumer=consumer)
    consumer.assigned = {TopicPartition("logs", 0)}  # partition 1 went to another member
    reader._deliver(consumer, BATCH)
    assert consumer.commits() == [{0: 8, 1: 4}, {0: 8}]
    assert ("seek", (0, 8)) in consumer.calls, "the rejoin reset positions to the old commit: seek past the batch"


# -- which answers are retriable: OtlpSink.export with a scripted transport ------------------------


class Answer:
    """What the exporter's HTTP client returns for one POST."""

    def __init__(self, status_code: int | None, headers: dict[str, str] | None = None, error: str = "") -> None:
        self.status_code = status_code
        self.reason = "reason"
        self.error = error or None
        self._headers = headers or {}

    def headers(self) -> dict[str, str]:
        return self._headers


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch):
    answers: list[Answer] = []
    monkeypatch.setattr(otlp, "_post", lambda exporter, payload: answers.pop(0))
    return OtlpSink("http://127.0.0.1:9/v1/logs", ComponentStatus("collector")), answers


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504])
def test_unreachable_throttled_and_server_errors_are_retriable(sink, status):
    exporter, answers = sink
    answers.append(Answer(status, {"retry-after": "12"}, error="connection refused" if status is None else ""))
    with pytest.raises(ExportError) as failed:
        exporter.export([record(0, 1)])
    assert failed.value.retriable and failed.value.status == status
    assert failed.value.retry_after == (None if status is None else 12.0)
    assert exporter.status.state == "degraded"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 415, 422, 501])
def test_other_answers_are_not_retriable(sink, status):
    exporter, answers = sink
    answers.append(Answer(status, {"retry-after": "12"}))
    with pytest.raises(ExportError) as failed:
        exporter.export([record(0, 1)])
    assert not failed.value.retriable and failed.value.status == status and failed.value.retry_after is None
    assert f"HTTP {status}" in str(failed.value)


@pytest.mark.parametrize("status", [200, 202, 204, 299])
def test_any_2xx_is_accepted(sink, status):
    exporter, answers = sink
    answers.append(Answer(status))
    exporter.export([record(0, 1), record(0, 2)])
    assert exporter.status.counters["records_exported"] == 2 and exporter.status.state == "ok"


@pytest.mark.parametrize("status", [199, 300, 304])
def test_just_outside_2xx_is_a_failure(sink, status):
    exporter, answers = sink
    answers.append(Answer(status))
    with pytest.raises(ExportError):
        exporter.export([record(0, 1)])


def test_an_unparseable_retry_after_means_no_advice(sink):
    exporter, answers = sink
    answers.append(Answer(503, {"retry-after": "soon"}))
    with pytest.raises(ExportError) as failed:
        exporter.export([record(0, 1)])
    assert failed.value.retriable and failed.value.retry_after is None


def test_an_empty_batch_is_not_sent(sink):
    exporter, answers = sink
    exporter.export([])  # answers is empty: a POST would raise IndexError
