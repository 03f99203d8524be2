"""kafka-python 3.0.12 never completes a group join that ended between two polls (logger.kafka_join_fix).

A consumer polled with ``timeout_ms=0`` every half second, the way the forward
reader stays in its group while an export retry waits, against the real broker.
Without the fix its join always ends between two polls and is either thrown away
and sent again (never stable in 15 s, generation 27) or, when the rejoin was no
longer needed by the time it ended, never completed at all (rebalancing for good).
"""

from __future__ import annotations

import time

from kafka.coordinator.base import BaseCoordinator
from kafka.structs import MemberState

from logger import kafka_client, kafka_join_fix


def test_importing_the_kafka_client_module_installs_the_fix_on_the_pinned_kafka_python():
    # On another version this fails on purpose: check whether upstream changed
    # join_group_async or need_rejoin, then update or drop logger.kafka_join_fix.
    assert kafka_client.kafka_join_fix is kafka_join_fix
    assert BaseCoordinator.join_group_async is kafka_join_fix._join_group_completing_a_finished_join
    assert BaseCoordinator.need_rejoin is kafka_join_fix._need_rejoin_until_the_join_is_completed
    assert kafka_join_fix.install()


def test_a_member_polled_with_no_wait_between_pauses_joins_once_and_stays_stable(kafka, topic, run_id):
    name = topic(1)
    consumer = kafka.consumer(group_id=f"join-{run_id}", enable_auto_commit=False)
    consumer.subscribe([name])
    try:
        _poll_until(consumer, lambda: True, "never stable")
        for _ in range(6):  # and it stays in that generation
            consumer.poll(timeout_ms=0)
            time.sleep(0.5)
        metadata = consumer.group_metadata()
        assert metadata.state == MemberState.STABLE
        assert metadata.generation_id <= 2, f"rejoined: generation {metadata.generation_id}"
        assert consumer.assignment() == {(name, 0)}
    finally:
        consumer.close()


def test_a_leaders_rejoin_for_new_partitions_that_ends_between_polls_is_completed(kafka, topic, run_id):
    # The leader rejoins because the topic's partitions changed (kafka-python compares
    # the metadata it assigned with to what it sees now). Its own assignment in that
    # join makes the two equal again, so once the join has ended between two polls
    # nothing says it still has to be completed: without the fix the member stays
    # "rebalancing" for good and every commit is refused. The forward reader met this
    # at start-up, when its first assignment was made before kafka-python had read the
    # topic's metadata (CI: nothing committed before the stop).
    name = topic(1)
    consumer = kafka.consumer(group_id=f"grow-{run_id}", enable_auto_commit=False, metadata_max_age_ms=200)
    consumer.subscribe([name])
    try:
        _poll_until(consumer, lambda: consumer.assignment() == {(name, 0)}, "first join")
        generation = consumer.group_metadata().generation_id
        kafka.add_partitions(name, 2)
        _poll_until(consumer, lambda: consumer.group_metadata().generation_id > generation, "the rejoin")
        _poll_until(consumer, lambda: consumer.assignment() == {(name, 0), (name, 1)}, "the rejoin's end")
        consumer.commit()  # taken: kafka-python refuses a commit while the member rebalances
    finally:
        consumer.close()


def _poll_until(consumer, condition, what: str, timeout: float = 20.0) -> None:
    """Poll with ``timeout_ms=0`` every half second (joins end between polls) until ``condition``."""
    deadline = time.monotonic() + timeout
    while not (condition() and consumer.group_metadata().state == MemberState.STABLE):
        metadata = consumer.group_metadata()
        assert time.monotonic() < deadline, (
            f"{what}: not done in {timeout:g} s; member {metadata.state}, generation {metadata.generation_id}")
        consumer.poll(timeout_ms=0)
        time.sleep(0.5)
