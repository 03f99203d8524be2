"""A workaround for kafka-python 3.0.12: a group join that ends between two polls is thrown away.

``BaseCoordinator.join_group_async`` keeps the JoinGroup → SyncGroup task of a
join under way across polls, so that a short ``poll(timeout_ms=…)`` does not
send a second JoinGroup. But it starts a new one when it finds the task
*done* (``if self._join_task is None or self._join_task.is_done``,
``kafka/coordinator/base.py`` line 490) and never reads that task's result.
kafka-python's I/O loop runs on its own (a greenlet here), so a join often ends
between two polls: the member had joined, but drops it and joins again. When
every join takes longer than the poll that starts it (a busy broker, or a
forward reader polling with ``timeout_ms=0`` while an export retry waits), the
member never becomes stable. CI saw exactly that: a forward reader stuck
"rejoining the consumer group" for good.
``tests/integration/test_kafka_join_fix.py`` shows it on a real broker:
polled with ``timeout_ms=0`` every half second, a stock consumer rejoined 27
times in 15 s and was never stable.

The fix does what ``join_group_async`` does when it awaited the task itself
(the lines after ``self._join_task = None`` on success): mark the member
stable and hand the assignment to the consumer. Installed once, by
:mod:`logger.kafka_client`, and only on the version it was written against
(3.0.12, the latest release on 2026-11-30; no upstream report of it found in
dpkp/kafka-python's issues that day). On a kafka-python upgrade, check whether
that condition changed and drop this module if so:
``test_kafka_join_fix.py`` fails on any other version to make sure someone does.
"""

from __future__ import annotations

from typing import Any

import kafka
from kafka.coordinator.base import BaseCoordinator
from kafka.structs import MemberState

FIXED_VERSION = "3.0.12"  # the version whose join_group_async this was written against


async def _join_group_keeping_a_finished_join(self: BaseCoordinator, timeout_ms: Any = None) -> bool:
    finished = self._join_task
    if finished is not None and finished.succeeded() and self.need_rejoin():
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


_upstream_join_group_async = BaseCoordinator.join_group_async


def install() -> bool:
    """Replace ``join_group_async`` on the version it fixes; True if it is in place."""
    if kafka.__version__ != FIXED_VERSION:
        return False
    BaseCoordinator.join_group_async = _join_group_keeping_a_finished_join
    return True
