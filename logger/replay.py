"""The replay ring: the last N records this worker broadcast, for ``?tail=K`` and resume.

Bounded by count and by bytes. Besides the records it keeps, per partition,
the last offset broadcast and the lowest offset still held, which is what
tells a resuming client whether what it missed is still here or is a gap.
Pure logic: the hub calls it from one greenlet at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from logger.filters import Filter
from logger.records import LogRecord

Partition = tuple[str, int]
RECORD_OVERHEAD = 200  # bytes a held record costs beyond its value, roughly


# Why a client misses a range (the protocol's gap reasons): not in the replay ring, a record
# batch that could not be decoded, or records the live tail skipped to stay within TAIL_MAX_LAG_S.
NOT_IN_REPLAY, UNDECODABLE, OVERLOAD = "not_in_replay", "undecodable", "overload"
SKIPS_KEPT = 64  # skipped ranges remembered for clients resuming from before them


@dataclass(frozen=True)
class Gap:
    topic: str
    partition: int
    first: int  # first offset the client missed that is no longer here
    last: int
    reason: str = NOT_IN_REPLAY
    error: str = ""  # what made it undecodable, or how far behind the tail was

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"topic": self.topic, "partition": self.partition, "from": self.first,
                                  "to": self.last, "reason": self.reason}
        if self.error:
            out["error"] = self.error
        return out


class ReplayRing:
    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._records: deque[LogRecord] = deque()
        self._bytes = 0
        self._last: dict[Partition, int] = {}  # last offset broadcast, per partition
        self._floor: dict[Partition, int] = {}  # lowest offset still held (or next to come)
        self._skips: deque[Gap] = deque(maxlen=SKIPS_KEPT)  # ranges the tail skipped

    def __len__(self) -> int:
        return len(self._records)

    def add(self, records: list[LogRecord]) -> None:
        for record in records:
            key = (record.topic, record.partition)
            self._floor.setdefault(key, record.offset)
            self._last[key] = record.offset
            if self.max_records:
                self._records.append(record)
                self._bytes += record.size + RECORD_OVERHEAD
            else:  # replay is off: nothing is held, everything before is a gap
                self._floor[key] = record.offset + 1
        while self._records and (len(self._records) > self.max_records or self._bytes > self.max_bytes):
            old = self._records.popleft()
            self._bytes -= old.size + RECORD_OVERHEAD
            self._floor[(old.topic, old.partition)] = old.offset + 1

    def mark_start(self, topic: str, partition: int, next_offset: int) -> None:
        """The tail starts reading ``partition`` at ``next_offset``: anything before it was
        never here, so a client resuming from further back is told about the gap."""
        key = (topic, partition)
        if key not in self._last:
            self._last[key] = next_offset - 1
            self._floor[key] = next_offset

    def skip(self, gap: Gap) -> None:
        """The tail skipped ``gap`` (undecodable, or shed under overload): the stream moves
        past it, and a client resuming from before it is told, with the reason."""
        key = (gap.topic, gap.partition)
        if self._last.get(key, -1) < gap.last:
            self._last[key] = gap.last
        if not self.max_records:
            self._floor[key] = gap.last + 1
        self._skips.append(gap)

    def positions(self) -> list[str]:
        """Where the live stream stands: ``topic:partition:offset`` of the last record broadcast."""
        return [f"{topic}:{partition}:{offset}" for (topic, partition), offset in sorted(self._last.items())]

    def tail(self, wanted: Filter, count: int) -> list[LogRecord]:
        """The last ``count`` records that match, oldest first."""
        found: list[LogRecord] = []
        for record in reversed(self._records):
            if len(found) >= count:
                break
            if wanted.matches(record):
                found.append(record)
        found.reverse()
        return found

    def since(self, wanted: Filter, seen: dict[Partition, int]) -> tuple[list[LogRecord], list[Gap]]:
        """What a client that saw up to ``seen`` (inclusive, per partition) missed:
        the matching records still held, and the ranges that are not."""
        gaps = []
        for key, offset in sorted(seen.items()):
            last = self._last.get(key)
            if last is None or last <= offset:
                continue  # nothing newer was broadcast on that partition
            floor = self._floor.get(key, last + 1)
            if floor > offset + 1:
                gaps.append(Gap(key[0], key[1], offset + 1, floor - 1))
        for skip in self._skips:
            seen_offset = seen.get((skip.topic, skip.partition))
            if seen_offset is not None and skip.last > seen_offset:
                first = max(skip.first, seen_offset + 1)
                gaps.append(Gap(skip.topic, skip.partition, first, skip.last, skip.reason, skip.error))
        missed = [r for r in self._records
                  if (r.topic, r.partition) in seen and r.offset > seen[(r.topic, r.partition)]
                  and wanted.matches(r)]
        return missed, gaps


def parse_positions(text: str) -> dict[Partition, int]:
    """``topic:partition:offset[,…]`` → {(topic, partition): offset}; ValueError if malformed."""
    seen: dict[Partition, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        topic, partition, offset = item.rsplit(":", 2)
        if not topic or int(partition) < 0 or int(offset) < -1:
            raise ValueError(item)
        seen[(topic, int(partition))] = int(offset)
    if len(seen) > 10_000:
        raise ValueError("too many positions")
    return seen
