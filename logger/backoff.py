"""Capped exponential backoff with full jitter, as pure logic.

Reconnects and export retries both use it; the caller sleeps with
``stop.wait(backoff.next())`` so that shutdown interrupts the wait.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._attempt = 0
        self._rng = rng or random.Random()

    @property
    def attempts(self) -> int:
        return self._attempt

    def next(self, at_least: float = 0.0) -> float:
        """The next delay: uniform in [cap/2, cap] where cap doubles per attempt.

        ``at_least`` is a server's ``Retry-After``: never retry sooner than asked.
        """
        cap = min(self.initial_s * (2 ** self._attempt), self.max_s)
        self._attempt += 1
        return max(self._rng.uniform(cap / 2, cap), min(at_least, self.max_s * 10))

    def reset(self) -> None:
        self._attempt = 0
