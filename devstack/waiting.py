"""Wait on a condition with a deadline: how every test and harness waits (never a blind sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] | None = None,
               interval: float = 0.05) -> Any:
    """Return ``condition()``'s first truthy result; raise TimeoutError naming ``what`` (and ``detail()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    extra = f"\n{detail()}" if detail else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{extra}")
