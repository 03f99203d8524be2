"""The forward path's decisions, against a fake clock, a scripted collector and a fake consumer.

What is committed (``offset + 1`` of the highest exported record per partition), when (only
after the collector accepted the batch, or it was set aside for good), after which answer
(429/5xx/unreachable are retried, 400/413 are not) and how long a retry waits (backoff, never
sooner than ``Retry-After``, capped). No Kafka, no network, no real waiting: each test runs in
milliseconds, so a mutation of any of these decisions fails here at once.
"""

from __future__ import annotations

import inspect
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
from logger.forward_reader import COMMIT_TIMEOUT_MS, HANDOVER_WAIT_S, ForwardRebalance, ForwardReader
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
    """The parts of KafkaConsumer the forward path's decisions touch, recording each call.

    ``poll`` first runs the next scripted rebalance through the reader's listener (as
    kafka-python does, before it fetches), then returns what is waiting past the position
    of every partition that is not paused (``waiting``: partition -> end offset).
    """

    def __init__(self, partitions: Sequence[int] = (0, 1), topic: str = "logs") -> None:
        self.topic = topic
        self.assigned = {TopicPartition(topic, p) for p in partitions}
        self.paused: set[TopicPartition] = set()
        self.calls: list[tuple[str, Any]] = []
        self.commit_errors: list[Exception] = []  # raised by the next commits, in order
        self.positions: dict[int, int] = {}
        self.waiting: dict[int, int] = {}
        self.rebalances: list[tuple[str, set[int] | None]] = []  # (protocol, assignment after), one per poll
        self.listener: Any = None
        self._coordinator = self  # the listener's commit goes through the coordinator
        self.state = MemberState.STABLE
        self.clock: FakeClock | None = None

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.listener = listener

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        assert set(partitions) <= self.assigned, "kafka-python refuses to pause what it does not own"
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.calls.append(("poll timeout", timeout_ms))
        if self.clock is not None:
            self.clock.now += timeout_ms / 1000  # a poll waits its timeout when nothing comes
        if self.rebalances:
            self._rebalance(*self.rebalances.pop(0))
        fetchable = self.assigned - self.paused
        # Fetching from a partition that is not paused would read new records.
        self.calls.append(("poll", frozenset(fetchable)))
        polled = {}
        for tp in sorted(fetchable):
            start, end = self.positions.get(tp.partition, 0), self.waiting.get(tp.partition, 0)
            if start < end:
                polled[tp] = [SimpleNamespace(offset=o, value=json.dumps({"message": f"{tp.partition}:{o}"}).encode(),
                                              timestamp=0, key=None, headers=[]) for o in range(start, end)]
                self.positions[tp.partition] = end
        return polled

    def _rebalance(self, protocol: str, assigned_after: set[int] | None) -> None:
        """Revoke, then assign, through the listener, the way kafka-python's coordinator does
        inside poll(): eager revokes every partition before the new assignment and then
        announces the whole of it ("eager-begin" and "eager-end": the two halves, when the
        join takes more than one poll); cooperative changes the assignment first, then
        revokes only what went and announces only what was added."""
        before = self.assigned
        after = {TopicPartition(self.topic, p) for p in assigned_after or ()}
        if protocol in ("eager", "eager-begin"):
            run(self.listener.on_partitions_revoked(set(before)))
            self.state = MemberState.REBALANCING  # the JoinGroup is sent after the revocation
        if protocol in ("eager", "eager-end"):
            self.state = MemberState.STABLE
            self._assign(after)
            run(self.listener.on_partitions_assigned(set(after)))
        if protocol == "cooperative":
            self._assign(after)
            if before - after:
                run(self.listener.on_partitions_revoked(before - after))
            if after - before:
                run(self.listener.on_partitions_assigned(after - before))

    def _assign(self, partitions: set[TopicPartition]) -> None:
        """A partition we keep keeps its state (position, pause); a new one starts at the commit."""
        for tp in partitions - self.assigned:
            self.positions[tp.partition] = self.committed().get(tp.partition, 0)
        self.assigned = set(partitions)
        self.paused &= self.assigned

    def group_metadata(self) -> Any:
        return SimpleNamespace(state=self.state)

    def commit(self, offsets: dict, timeout_ms: int | None = None) -> None:
        self.calls.append(("commit", {(tp.partition): meta.offset for tp, meta in offsets.items()}))
        self.calls.append(("commit timeout", timeout_ms))
        if self.state is not MemberState.STABLE:  # kafka-python refuses it without asking the group
            raise kafka_errors.RebalanceInProgressError("the consumer is undergoing a rebalance")
        if self.commit_errors:
            raise self.commit_errors.pop(0)

    async def _commit_offsets_sync_async(self, offsets: dict, timeout_ms: int | None = None) -> None:
        self.commit(offsets, timeout_ms)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assigned, "kafka-python refuses to seek a partition it does not own"
        self.calls.append(("seek", (tp.partition, offset)))
        self.positions[tp.partition] = offset

    def commits(self) -> list[dict[int, int]]:
        return [arg for name, arg in self.calls if name == "commit"]

    def committed(self) -> dict[int, int]:
        """What the group holds: the last commit of each partition."""
        out: dict[int, int] = {}
        for offsets in self.commits():
            out.update(offsets)
        return out


def run(coroutine: Any) -> Any:
    """Run one of the listener's coroutines to its end, as kafka-python's I/O loop would."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the listener waited for something that never comes")


class ScriptedCollector:
    """``export`` answers from a script: None accepts, an ExportError refuses."""

    def __init__(self, clock: FakeClock, answers: list[ExportError | None], consumer: FakeConsumer) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.consumer = consumer
        self.attempts: list[float] = []  # clock time of each attempt
        self.accepted: list[tuple[int, int]] = []  # (partition, offset) of each record accepted

    def __call__(self, batch: Sequence[LogRecord]) -> None:
        self.attempts.append(self.clock.now)
        committed = self.consumer.committed()
        assert all(committed.get(r.partition, 0) <= r.offset for r in batch), \
            "nothing of a batch is committed before the collector accepts it"
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        self.accepted += [(r.partition, r.offset) for r in batch]


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
    consumer.clock = clock
    collector = ScriptedCollector(clock, answers, consumer)
    abandon = FakeAbandon(clock, None if abandon_at is None else clock.now + abandon_at)
    reader = ForwardReader(Settings(retry_backoff_max_s=retry_max_s), ComponentStatus("forward"), collector,
                           abandon, dead_letter=dead_letter, clock=clock)
    consumer.subscribe(["logs"], listener=ForwardRebalance(reader, consumer))
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


def test_every_commit_has_a_deadline_inside_the_drain_budget():
    reader, consumer, collector, _ = forward([None])
    reader._deliver(consumer, BATCH)
    assert [arg for name, arg in consumer.calls if name == "commit timeout"] == [COMMIT_TIMEOUT_MS]
    assert COMMIT_TIMEOUT_MS <= 5_000, "not kafka-python's default of request_timeout_ms (30 s)"


# -- rebalances: what the old owner commits and hands back, what a retry may read ------------------


def polls(consumer: FakeConsumer) -> list[frozenset]:
    return [fetchable for name, fetchable in consumer.calls if name == "poll"]


def deliver_all(reader: ForwardReader, consumer: FakeConsumer, batch: list[LogRecord]) -> None:
    """Deliver the batch, then whatever went back into the batcher, as the reader loop would."""
    reader._deliver(consumer, batch)
    while len(reader.batcher):
        reader._deliver(consumer, reader.batcher.take())


def test_a_partition_assigned_during_a_retry_is_not_read_until_the_retry_ends():
    """Issue 13: the rebalance's new partition has records waiting; none may join a batch
    while the retry waits."""
    consumer = FakeConsumer(partitions=(0, 1))
    consumer.waiting = {2: 50}  # partition 2, offsets 0-49, waits for whoever owns it
    consumer.rebalances = [("eager", {0, 1, 2})]  # 0 and 1 revoked and given back, and 2 added
    reader, consumer, collector, _ = forward([unavailable(retry_after=3.0), None], consumer=consumer)
    reader._deliver(consumer, [record(0, 5), record(1, 3)])
    assert all(fetchable == frozenset() for fetchable in polls(consumer)), "every partition stayed paused"
    assert consumer.positions.get(2, 0) == 0, "partition 2 was not read: its position did not move"
    assert consumer.paused == set(), "all three resumed when the retry ended"
    assert collector.accepted == [(0, 5), (1, 3)], "the retry went on with the partitions we kept, and only them"
    assert len(reader.batcher) == 0 and "records_handed_over" not in reader.status.counters
    assert consumer.commits() == [{0: 6, 1: 4}]


@pytest.mark.parametrize("protocol", ["eager", "cooperative"])
def test_a_retry_goes_on_with_the_partitions_still_owned_and_hands_over_the_rest(protocol):
    consumer = FakeConsumer(partitions=(0, 1))
    consumer.rebalances = [(protocol, {0})]  # partition 1 moves to another member
    reader, consumer, collector, _ = forward([unavailable(retry_after=2.0), None], consumer=consumer)
    deliver_all(reader, consumer, list(BATCH))
    assert sorted(collector.accepted) == [(0, 5), (0, 6), (0, 7)], "each record of partition 0 once"
    assert consumer.commits() == [{0: 8}], "partition 1's record is its new owner's to export and commit"
    assert reader.status.counters["records_committed"] == 3
    assert reader.status.counters["records_handed_over"] == 1
    assert not [call for call in consumer.calls if call[0] == "seek"], "a partition that went needs no seek"


def test_a_rebalance_that_takes_two_polls_during_a_retry_loses_nothing():
    """The revocation comes in the retry's one poll, the assignment in the next poll, the
    one the refused commit makes: the batch in flight is not held back meanwhile, and
    nothing is lost."""
    consumer = FakeConsumer(partitions=(0, 1))
    consumer.rebalances = [("eager-begin", None), ("eager-end", {0, 1})]
    reader, consumer, collector, _ = forward([unavailable(), None], consumer=consumer)
    reader._deliver(consumer, list(BATCH))
    assert polls(consumer) == [frozenset(), frozenset()], "the retry's poll and the commit's, both paused"
    consumer.poll()  # the reader loop's next poll
    reader.batcher.add([record(0, 8)])  # and what the loop reads next joins the batch
    deliver_all(reader, consumer, reader.batcher.take())
    assert sorted(collector.accepted) == [(0, 5), (0, 6), (0, 7), (0, 8), (1, 3)]
    assert consumer.committed() == {0: 9, 1: 4}
    assert "records_handed_over" not in reader.status.counters


def test_a_join_that_does_not_end_during_a_retry_does_not_stop_the_retry():
    """The CI failure of test_coming_from_go: the group revoked every partition in the
    retry's first poll and the join never ended (kafka-python 3.0.12 drops a join that
    finished between two polls and sends another, so a retry's poll(timeout_ms=0) once a
    second never sees one end). The batch must go on being retried, not wait on the join."""
    consumer = FakeConsumer(partitions=(0, 1))
    consumer.rebalances = [("eager-begin", None)]  # revoked, never assigned
    reader, consumer, collector, _ = forward([unavailable()] * 3 + [None], consumer=consumer)
    reader._deliver(consumer, list(BATCH))
    assert len(collector.attempts) == 4 and reader.status.counters["export_retries"] == 3
    assert sorted(collector.accepted) == [(0, 5), (0, 6), (0, 7), (1, 3)]


def test_while_a_join_is_under_way_a_retry_polls_long_enough_for_it_to_end():
    """kafka-python 3.0.12 drops a join that ended between two polls: polled with
    timeout_ms=0 once a second, the join never ends while the collector is down."""
    consumer = FakeConsumer(partitions=(0,))
    consumer.state = MemberState.REBALANCING
    reader, consumer, collector, _ = forward([unavailable(), None], consumer=consumer)
    reader._deliver(consumer, [record(0, 5)])
    timeouts = [arg for name, arg in consumer.calls if name == "poll timeout"]
    assert timeouts and all(timeout > 0 for timeout in timeouts)
    consumer.calls.clear()
    consumer.state = MemberState.STABLE
    reader._stay_in_group(consumer)
    assert [arg for name, arg in consumer.calls if name == "poll timeout"] == [0], "a stable group: no wait"


def test_a_join_that_does_not_end_leaves_the_batch_being_gathered_to_go_out():
    """The CI failure of test_tls: the group revoked every partition while the first record
    waited in the batch, and the join never ended: the record must still go out when due."""
    consumer = FakeConsumer(partitions=(0, 1))
    reader, consumer, collector, _ = forward([None], consumer=consumer)
    reader.batcher.add([record(0, 8)])
    consumer.rebalances = [("eager-begin", None)]
    consumer.poll()
    assert [(r.partition, r.offset) for r in reader.batcher.take()] == [(0, 8)]


def test_a_batch_due_during_a_join_waits_for_it_to_say_which_partitions_went():
    """test_rebalance under load (3.87 % duplicates): a batch was exported while a join was
    under way, its commit was refused (the member was rebalancing), and the partition that
    went was exported again by its new owner from the last commit."""
    consumer = FakeConsumer(partitions=(0, 1))
    reader, consumer, collector, _ = forward([None], consumer=consumer)
    reader.batcher.add([record(0, 5), record(1, 3), record(1, 4)])
    consumer.rebalances = [("eager-begin", None), ("eager-end", {0})]
    consumer.poll()  # the reader loop's poll: every partition revoked, the join under way
    reader._deliver(consumer, reader.batcher.take())
    assert collector.accepted == [(0, 5)], "partition 1 went: its next owner exports its records"
    assert consumer.committed() == {0: 6}
    assert reader.status.counters["records_handed_over"] == 2
    assert "commit_failures" not in reader.status.counters


def test_a_join_that_does_not_end_holds_a_batch_back_for_a_bounded_time_only():
    consumer = FakeConsumer(partitions=(0, 1))
    reader, consumer, collector, clock = forward([None], consumer=consumer)
    consumer.rebalances = [("eager-begin", None)]  # revoked, never assigned
    consumer.poll()
    started = clock.now
    reader._deliver(consumer, [record(0, 5), record(1, 3)])
    assert sorted(collector.accepted) == [(0, 5), (1, 3)], "exported all the same"
    assert collector.attempts[0] - started == pytest.approx(HANDOVER_WAIT_S, abs=0.11)


@pytest.mark.parametrize("protocol", ["eager", "cooperative"])
def test_before_a_partition_goes_its_exported_offsets_are_committed_and_its_unexported_records_handed_over(
        protocol):
    consumer = FakeConsumer(partitions=(0, 1))
    consumer.commit_errors = [kafka_errors.KafkaTimeoutError("commit timed out")]
    reader, consumer, collector, _ = forward([None], consumer=consumer)
    reader._deliver(consumer, list(BATCH))  # exported; the commit {0: 8, 1: 4} timed out
    reader.batcher.add([record(0, 8), record(1, 4), record(1, 5)])
    consumer.positions = consumer.waiting = {0: 9, 1: 6}  # read up to there
    consumer.rebalances = [(protocol, {0})]
    assert consumer.poll() == {}, "the rebalance ran in this poll; partition 0 has nothing new"
    assert consumer.commits()[-1][1] == 4, "partition 1's exported records were committed before it went"
    assert [arg for name, arg in consumer.calls if name == "commit timeout"][-1] == COMMIT_TIMEOUT_MS
    assert reader.status.counters["revoke_commits"] == 1
    assert [(r.partition, r.offset) for r in reader.batcher.take()] == [(0, 8)], \
        "partition 1's records left the batch, partition 0's stayed"
    assert reader.status.counters["records_handed_over"] == 2
    reader._deliver(consumer, [record(0, 8)])
    assert consumer.commits()[-1] == {0: 9}


def test_a_failed_commit_before_a_partition_goes_is_counted_and_does_not_break_the_rebalance(caplog):
    consumer = FakeConsumer(partitions=(0, 1))
    consumer.commit_errors = [kafka_errors.KafkaTimeoutError("commit timed out")] * 2
    reader, consumer, collector, _ = forward([None], consumer=consumer)
    reader._deliver(consumer, list(BATCH))
    consumer.rebalances = [("eager", {0})]
    consumer.poll()  # the listener must not raise: kafka-python would re-raise it from poll()
    assert reader.status.counters["commit_failures"] == 2
    assert "may re-export some records" in caplog.text
    assert consumer.assigned == {TopicPartition("logs", 0)}


def test_lost_partitions_are_handed_over_without_a_commit():
    consumer = FakeConsumer(partitions=(0, 1))
    consumer.commit_errors = [kafka_errors.KafkaTimeoutError("commit timed out")]
    reader, consumer, collector, _ = forward([None], consumer=consumer)
    reader._deliver(consumer, list(BATCH))
    reader.batcher.add([record(0, 8)])
    run(consumer.listener.on_partitions_lost({TopicPartition("logs", 0), TopicPartition("logs", 1)}))
    assert consumer.commits() == [{0: 8, 1: 4}], "only the first, failed commit: an evicted member cannot commit"
    assert len(reader.batcher) == 0 and reader.status.counters["records_handed_over"] == 1


def test_the_kafka_python_coroutine_the_listener_commits_with_is_still_there():
    """The listener awaits kafka-python's own pre-rebalance commit (a private coroutine, so
    an upgrade could remove it: the rebalance test would only see more duplicates)."""
    from kafka.coordinator.consumer import ConsumerCoordinator
    commit = ConsumerCoordinator._commit_offsets_sync_async
    assert inspect.iscoroutinefunction(commit)
    assert list(inspect.signature(commit).parameters) == ["self", "offsets", "timeout_ms"]


def test_records_a_paused_poll_returns_all_the_same_are_put_back_not_batched():
    consumer = FakeConsumer(partitions=(0,))
    consumer.waiting = {0: 20}
    consumer.positions = {0: 10}
    reader, consumer, collector, _ = forward([unavailable(), None], consumer=consumer)
    consumer.pause = lambda *partitions: None  # a pause that did not take
    reader._deliver(consumer, [record(0, 9)])
    assert len(reader.batcher) == 0
    assert consumer.positions[0] == 10, "the position went back to the first record returned"


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
