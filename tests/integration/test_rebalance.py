"""A second forward worker joins the group mid-stream and leaves again: nothing lost, ≤ 1 % twice.

Issue 15 point 6. Partitions move twice (to the newcomer, and back when it stops
with SIGTERM). Before a partition goes, its old owner commits what it exported
and drops what it read but did not export (``ForwardRebalance``), so the
next owner neither re-exports the one nor misses the other. Batches gather for
the production default (``FORWARD_BATCH_INTERVAL_MS=500``), so that what a
rebalance catches in a batch is as large as in production.
"""

from __future__ import annotations

from tests.integration.test_soak import TOTAL, Producer, duplicates_once_all_arrived

DEFAULT_BATCH = {"FORWARD_BATCH_INTERVAL_MS": "500"}


def test_a_worker_that_joins_and_leaves_mid_stream_loses_nothing_and_duplicates_at_most_one_percent(
        kafka, topic, service, receiver, run_id):
    name = topic(3)
    group = f"group-{run_id}"
    first = service(name, group=group, **DEFAULT_BATCH)
    producer = Producer(kafka, name, run_id)  # TOTAL numbered records at a bounded rate
    producer.start()
    try:
        producer.wait_for(TOTAL // 5)
        second = service(name, group=group, **DEFAULT_BATCH)  # joins: partitions move to it
        second.wait_until(lambda: second.health()["kafka"]["forward"].get("partitions", 0) > 0, 30,
                          "the second worker to own partitions")
        producer.wait_for(TOTAL * 3 // 5)
        second.signal(15)  # leaves: its partitions move back while records flow
        assert second.wait(30) == 0
        producer.join(120)
    finally:
        producer.stop.set()
    assert not producer.failed, f"{len(producer.failed)} sends failed"
    produced = set(producer.acked)
    assert len(produced) == TOTAL

    duplicates = duplicates_once_all_arrived(first, receiver, run_id, produced)
    assert first.health()["kafka"]["forward"]["partitions"] == 3, "the first worker owns every partition again"
    forward = first.health()["kafka"]["forward"]
    print(f"rebalance: {TOTAL} records, a worker joined and left, 0 lost, "
          f"{duplicates} duplicates ({duplicates / TOTAL:.2%}) at the collector; the first worker handed over "
          f"{forward.get('records_handed_over', 0)} records read but not exported")
    assert duplicates <= TOTAL // 100, f"{duplicates} duplicates, more than 1 % of {TOTAL}"
