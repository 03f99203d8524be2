"""Record batches kafka-python cannot decode: say which, so a reader skips exactly that one.

kafka-python decompresses and checks a record batch inside ``poll()``. When
that fails (a codec library missing, a corrupt payload, a CRC mismatch, a
record that does not parse), ``poll()`` raises for the whole fetch, and the
exception says neither the partition nor where the batch ends. A reader that
reconnects on it loops forever: it fetches the same batch again, and while it
loops no other partition is read either (kafka-python 3.0.12; the fetcher
keeps the failing partition's records first in line).

The work-around, in this one place: :func:`install` wraps the three methods of
``DefaultRecordBatch`` that decode (``validate_crc``, ``__iter__``,
``__next__``) so a failure raises :class:`UndecodableBatch`, which carries the
batch's offset range (its header is readable even when its records are not)
and the reason. :func:`failing_partition` reads from the fetcher which
partition it was draining. The reader then seeks past the batch: nothing else
is skipped, and no reconnect happens. Kafka 4 writes only record format v2
(``DefaultRecordBatch``), so older formats need no wrapping.
"""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition
from kafka.errors import UnsupportedCodecError
from kafka.record.default_records import DefaultRecordBatch

CODECS = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class UndecodableBatch(Exception):
    """A record batch whose records cannot be read; ``first``..``last`` are its offsets."""

    def __init__(self, first: int, last: int, reason: str) -> None:
        super().__init__(f"offsets {first}-{last}: {reason}")
        self.first = first
        self.last = last
        self.reason = reason


def install() -> None:
    """Wrap kafka-python's batch decoding once per process (idempotent)."""
    if getattr(DefaultRecordBatch, "_logger_service_contained", False):
        return
    validate_crc, iterate, next_record = (DefaultRecordBatch.validate_crc, DefaultRecordBatch.__iter__,
                                          DefaultRecordBatch.__next__)

    def checked_validate_crc(batch: DefaultRecordBatch) -> bool:
        if not validate_crc(batch):
            raise UndecodableBatch(batch.base_offset, batch.last_offset, "CRC mismatch: the batch is corrupt")
        return True

    def checked_iter(batch: DefaultRecordBatch) -> DefaultRecordBatch:
        try:
            return iterate(batch)  # decompresses
        except Exception as exc:  # noqa: BLE001 - any codec's error: zlib, lz4, zstd, snappy
            raise UndecodableBatch(batch.base_offset, batch.last_offset, _codec_reason(batch, exc)) from exc

    def checked_next(batch: DefaultRecordBatch) -> Any:
        try:
            return next_record(batch)
        except StopIteration:
            raise
        except Exception as exc:  # noqa: BLE001 - kafka-python's CorruptRecordError, or worse
            raise UndecodableBatch(batch.base_offset, batch.last_offset, f"corrupt record: {exc}") from exc

    DefaultRecordBatch.validate_crc = checked_validate_crc  # type: ignore[method-assign]
    DefaultRecordBatch.__iter__ = checked_iter  # type: ignore[method-assign]
    DefaultRecordBatch.__next__ = checked_next  # type: ignore[method-assign]
    DefaultRecordBatch._logger_service_contained = True  # type: ignore[attr-defined]


def _codec_reason(batch: DefaultRecordBatch, exc: BaseException) -> str:
    codec = CODECS.get(batch.compression_type, f"codec {batch.compression_type}")
    if isinstance(exc, UnsupportedCodecError):
        return f"{codec} compression is not supported here: {exc}"
    return f"{codec} decompression failed: {type(exc).__name__}: {exc}"


def failing_partition(consumer: Any) -> TopicPartition | None:
    """The partition whose records the consumer's fetcher was reading when poll() raised.

    Private API of kafka-python 3.0.12 (``Fetcher._next_partition_records``), read
    only here; None if it is not there, and the caller falls back to reconnecting.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    records = getattr(fetcher, "_next_partition_records", None)
    return getattr(records, "topic_partition", None)
