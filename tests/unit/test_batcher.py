"""Batching by count, bytes and age, on a fake clock; how long tail fetches may wait."""

from __future__ import annotations

import pytest

from logger.backoff import Backoff
from logger.batcher import Batcher
from logger.config import Settings
from logger.tail_reader import tail_fetch_config
from logger.records import decode


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def records(n: int, size: int = 10):
    return [decode(b"x" * size) for _ in range(n)]


def test_ready_when_full():
    batcher = Batcher(3, 1.0, clock=Clock())
    batcher.add(records(2))
    assert not batcher.ready() and batcher.room == 1
    batcher.add(records(1))
    assert batcher.ready()
    assert len(batcher.take()) == 3 and len(batcher) == 0 and not batcher.ready()


def test_ready_when_bytes_reach_the_bound():
    batcher = Batcher(100, 1.0, max_bytes=25, clock=Clock())
    batcher.add(records(2, size=10))
    assert not batcher.ready()
    batcher.add(records(1, size=10))
    assert batcher.ready()


def test_ready_when_the_oldest_record_waited_long_enough():
    clock = Clock()
    batcher = Batcher(100, 0.5, clock=clock)
    assert batcher.time_left() == 0.5 and not batcher.ready()
    batcher.add(records(1))
    clock.now += 0.3
    assert abs(batcher.time_left() - 0.2) < 1e-9 and not batcher.ready()
    batcher.add(records(1))  # a later record does not push the deadline back
    clock.now += 0.2
    assert batcher.ready() and batcher.time_left() == 0


def test_records_that_queued_while_the_reader_was_busy_do_not_wait_a_whole_window_again():
    clock = Clock()
    batcher = Batcher(100, 0.05, clock=clock)
    last_poll = clock.now
    clock.now += 0.04  # the previous batch took 40 ms to fan out; these arrived meanwhile
    batcher.add(records(3), since=last_poll)
    assert abs(batcher.time_left() - 0.01) < 1e-9 and not batcher.ready()
    clock.now += 0.01
    assert batcher.ready()
    batcher.take()
    batcher.add(records(1), since=clock.now + 1)  # a "since" in the future counts from now
    assert abs(batcher.time_left() - 0.05) < 1e-9


@pytest.mark.parametrize(("window_ms", "wait_ms"), [(50, 10), (1, 1), (2_000, 400), (60_000, 500)])
def test_the_broker_holds_tail_fetches_for_a_fifth_of_the_batch_window(window_ms, wait_ms):
    config = tail_fetch_config(Settings.from_env({"TAIL_BATCH_INTERVAL_MS": str(window_ms)}))
    assert config["fetch_max_wait_ms"] == wait_ms and config["fetch_min_bytes"] > 0


def test_backoff_doubles_to_a_cap_and_honours_retry_after():
    import random
    backoff = Backoff(1.0, 8.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(6)]
    caps = [1, 2, 4, 8, 8, 8]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps))
    assert backoff.next(at_least=20.0) == 20.0
    backoff.reset()
    assert backoff.next() <= 1.0


def test_the_byte_bound_is_reached_exactly_and_resets_with_each_batch():
    batcher = Batcher(100, 60.0, max_bytes=30, clock=Clock())
    first = records(2, size=10)
    batcher.add(first)
    assert not batcher.ready(), "20 of 30 bytes"
    batcher.add(records(1, size=9))
    assert not batcher.ready(), "29 of 30 bytes"
    batcher.add(records(1, size=1))
    assert batcher.ready(), "30 of 30 bytes"
    taken = batcher.take()
    assert taken[:2] == first and len(taken) == 4 and len(batcher) == 0
    batcher.add(records(1, size=29))
    assert not batcher.ready(), "the count starts again from zero"


def test_an_empty_batcher_is_never_ready_and_waits_a_whole_window():
    clock = Clock()
    batcher = Batcher(1, 0.5, clock=clock)
    clock.now += 1000
    assert not batcher.ready() and batcher.time_left() == 0.5 and batcher.room == 1


def test_backoff_defaults_and_the_retry_after_ceiling():
    backoff = Backoff(rng=FixedRandom())
    assert (backoff.initial_s, backoff.max_s) == (0.5, 30.0)
    assert backoff.next() == 0.5, "no Retry-After: the backoff alone"
    assert Backoff(0.5, 1.0, rng=FixedRandom()).next(at_least=100) == 10.0, "Retry-After is capped at 10x the cap"
    assert Backoff(0.5, 1.0, rng=FixedRandom()).next(at_least=9.5) == 9.5


class FixedRandom:
    """uniform(a, b) → b: the top of the jitter range."""

    def uniform(self, low: float, high: float) -> float:
        return high
