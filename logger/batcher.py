"""Size- and time-bounded batching, as pure logic (no I/O, no greenlets).

A reader loop adds records as it polls them and asks the batcher two things:
how long it may block in the next poll (:meth:`time_left`), and whether the
batch is ready to hand on (:meth:`ready`). A batch is ready when it holds
``max_records`` records or ``max_bytes`` bytes of values, or when its oldest
record has waited ``max_wait_s``.

"Waited" counts from when a record could first have been seen, which the
reader may pass as ``since``: records that queued up in Kafka while the
reader was busy handing on the previous batch have waited that long already,
and should not wait a whole window more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from logger.records import LogRecord


class Batcher:
    def __init__(self, max_records: int, max_wait_s: float, max_bytes: int = 1 << 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_records = max_records
        self.max_wait_s = max_wait_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._records: list[LogRecord] = []
        self._bytes = 0
        self._deadline = 0.0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def room(self) -> int:
        """How many more records fit; a reader polls at most this many."""
        return max(self.max_records - len(self._records), 1)

    def add(self, records: Iterable[LogRecord], since: float | None = None) -> None:
        """Add polled records; ``since`` (on the batcher's clock) is the earliest they can have arrived."""
        for record in records:
            if not self._records:
                now = self._clock()
                self._deadline = (now if since is None else min(since, now)) + self.max_wait_s
            self._records.append(record)
            self._bytes += record.size

    def ready(self) -> bool:
        if not self._records:
            return False
        return (len(self._records) >= self.max_records or self._bytes >= self.max_bytes
                or self._clock() >= self._deadline)

    def time_left(self) -> float:
        """Seconds until the current batch is due; ``max_wait_s`` when empty."""
        if not self._records:
            return self.max_wait_s
        return max(self._deadline - self._clock(), 0.0)

    def drop(self, unwanted: Callable[[LogRecord], bool]) -> list[LogRecord]:
        """Remove the records ``unwanted`` picks (a rebalance took their partition) and
        return them; the rest keep their order and their deadline."""
        dropped = [record for record in self._records if unwanted(record)]
        if dropped:
            self._records = [record for record in self._records if not unwanted(record)]
            self._bytes = sum(record.size for record in self._records)
        return dropped

    def take(self) -> list[LogRecord]:
        records, self._records, self._bytes = self._records, [], 0
        return records
