"""Give memory freed after a burst back to the system (glibc's ``malloc_trim``).

Frames of tens of KiB (replay chunks, a backlog's batches) come from glibc's
heap, below its mmap threshold. Freed, they stay in the process: glibc only
shrinks the heap from the top, and a long-lived object allocated later pins
it. 120 clients that asked for a replay and left kept 17 MB of a worker's
RSS for good (issue 12). ``malloc_trim(0)`` also returns the free pages in the
middle of the heap (``MADV_DONTNEED``). It walks the heap (a few ms for
100 MB), so the hub calls it from its keepalive loop, at most once a second
and only after clients with a backlog have gone. Elsewhere than glibc it is
a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

_libc: Any = None


def _load() -> Any:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        _libc = libc if libc is not None and hasattr(libc, "malloc_trim") else False
    return _libc


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system; False where there is no malloc_trim."""
    libc = _load()
    if not libc:
        return False
    libc.malloc_trim(0)
    return True
