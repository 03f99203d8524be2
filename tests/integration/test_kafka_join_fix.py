"""kafka-python 3.0.12 drops a group join that ended between two polls (logger.kafka_join_fix).

A consumer polled with ``timeout_ms=0`` every half second, the way the forward
reader stays in its group while an export retry waits, against the real broker.
Without the fix its join always ends between two polls, is thrown away and sent
again: it was never stable in 15 s and reached generation 27.
"""

from __future__ import annotations

import time

from kafka.coordinator.base import BaseCoordinator
from kafka.structs import MemberState

from logger import kafka_client, kafka_join_fix


def test_importing_the_kafka_client_module_installs_the_fix_on_the_pinned_kafka_python():
    # On another version this fails on purpose: check whether upstream changed
    # join_group_async, then update or drop logger.kafka_join_fix.
    assert kafka_client.kafka_join_fix is kafka_join_fix
    assert BaseCoordinator.join_group_async is kafka_join_fix._join_group_keeping_a_finished_join
    assert kafka_join_fix.install()


def test_a_member_polled_with_no_wait_between_pauses_joins_once_and_stays_stable(kafka, topic, run_id):
    name = topic(1)
    consumer = kafka.consumer(group_id=f"join-{run_id}", enable_auto_commit=False)
    consumer.subscribe([name])
    try:
        deadline = time.monotonic() + 20
        while consumer.group_metadata().state != MemberState.STABLE:
            assert time.monotonic() < deadline, (
                f"never stable in 20 s; generation {consumer.group_metadata().generation_id}")
            consumer.poll(timeout_ms=0)
            time.sleep(0.5)
        for _ in range(6):  # and it stays in that generation
            consumer.poll(timeout_ms=0)
            time.sleep(0.5)
        metadata = consumer.group_metadata()
        assert metadata.state == MemberState.STABLE
        assert metadata.generation_id <= 2, f"rejoined: generation {metadata.generation_id}"
        assert consumer.assignment() == {(name, 0)}
    finally:
        consumer.close()
