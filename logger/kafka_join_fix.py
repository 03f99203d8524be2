"""A workaround for kafka-python 3.0.12: a group join that ends between two polls is never completed.

``BaseCoordinator.join_group_async`` keeps the JoinGroup → SyncGroup task of a
join under way across polls, so that a short ``poll(timeout_ms=…)`` does not
send a second JoinGroup. Only a poll that awaits the task to its end completes
the join (marks the member stable, starts heartbeats, hands the assignment to
the consumer). kafka-python's I/O loop runs on its own (a greenlet here), so a
join often ends *between* two polls, and then:

1. while a rejoin is still needed, the next poll finds the task done
   (``if self._join_task is None or self._join_task.is_done``,
   ``kafka/coordinator/base.py`` line 490), never reads its result and joins
   again. When every join takes longer than the poll that starts it (a busy
   broker, or a forward reader polling with ``timeout_ms=0`` while an export
   retry waits), the member never becomes stable: a stock consumer polled with
   ``timeout_ms=0`` every half second rejoined 27 times in 15 s;
2. when the need went away meanwhile, no poll looks at the task again
   (``ConsumerCoordinator.poll`` joins only ``if self.need_rejoin()``): the
   member stays "rebalancing" for good, without heartbeats, and every commit
   is refused. The need goes away by itself when the leader rejoined because
   the topic's partitions changed: its own assignment in that join makes the
   metadata it assigned with equal to what it sees. The forward reader met
   this at start-up, when its first assignment was made before kafka-python
   had read the topic's metadata (55 of 131 starts here): CI saw nothing
   committed before a stop.

The fix: a join whose task has not been completed still counts as needed
(:func:`_need_rejoin_until_the_join_is_completed`), and a task that ended well
is completed the way ``join_group_async`` does after awaiting it (the lines
after ``self._join_task = None`` on success) instead of being sent again
(:func:`_join_group_completing_a_finished_join`). ``tests/integration/
test_kafka_join_fix.py`` shows both on a real broker.

Installed once, by :mod:`logger.kafka_client`, and only on the version it was
written against (3.0.12, the latest release on 2026-11-30; no upstream report
of it found in dpkp/kafka-python's issues that day). On a kafka-python
upgrade, check whether those lines changed and drop this module if so:
``test_kafka_join_fix.py`` fails on any other version to make sure someone does.
"""

from __future__ import annotations

from typing import Any

import kafka
from kafka.coordinator.base import BaseCoordinator
from kafka.structs import MemberState

FIXED_VERSION = "3.0.12"  # the version whose coordinator this was written against


def _need_rejoin_until_the_join_is_completed(self: BaseCoordinator) -> bool:
    # _join_task is None again once a join is completed or failed; a task still there
    # is a join in flight or one that ended between polls and waits to be completed.
    return _upstream_need_rejoin(self) or self._join_task is not None


async def _join_group_completing_a_finished_join(self: BaseCoordinator, timeout_ms: Any = None) -> bool:
    finished = self._join_task
    # A member thrown out meanwhile (reset_generation: UNJOINED) joins anew instead.
    if finished is not None and finished.succeeded() and self.state is MemberState.REBALANCING:
        # What kafka-python does after awaiting a join that succeeded.
        self._join_task = None
        with self._lock:
            self.rejoining = False
            self.rejoin_needed = False
            self.state = MemberState.STABLE
            self._enable_heartbeat()
        generation = self._generation
        await self._on_join_complete_async(generation.generation_id, generation.member_id,
                                           generation.protocol, finished.value)
        return True
    return await _upstream_join_group_async(self, timeout_ms)


_upstream_need_rejoin = BaseCoordinator.need_rejoin
_upstream_join_group_async = BaseCoordinator.join_group_async


def install() -> bool:
    """Replace ``need_rejoin`` and ``join_group_async`` on the version it fixes; True if in place."""
    if kafka.__version__ != FIXED_VERSION:
        return False
    BaseCoordinator.need_rejoin = _need_rejoin_until_the_join_is_completed
    BaseCoordinator.join_group_async = _join_group_completing_a_finished_join
    return True
