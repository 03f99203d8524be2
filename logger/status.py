"""What each stage reports about itself, for ``/health``, Prometheus and the log.

Each reader and the OTLP sink own one :class:`ComponentStatus`. It is the one
record of what happened to its stage: :meth:`ComponentStatus.count` adds to the
counter ``/health`` shows and, in the same call, to the Prometheus counter the
stage was given for that name (``exported``), so the two views cannot drift.
Counters are plain integers because every writer is a greenlet in one thread.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# States a component can be in. "ok" and "idle" (nothing to do yet) are healthy.
STARTING, OK, IDLE, DEGRADED, STOPPED, DISABLED = "starting", "ok", "idle", "degraded", "stopped", "disabled"


class Counts(Counter):
    """A component's counters, each event counted once: ``/health`` reads them, and a name
    given a Prometheus counter in ``exported`` moves that counter in the same call."""

    def __init__(self, exported: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.exported = exported or {}

    def add(self, name: str, amount: int = 1) -> None:
        self[name] += amount
        metric = self.exported.get(name)
        if metric is not None:
            metric.inc(amount)


@dataclass
class ComponentStatus:
    """State of one stage (a reader, the collector), with the last error and since when."""

    name: str
    state: str = STARTING
    error: str | None = None
    since: float = field(default_factory=time.time)
    # Prometheus counters (labelled children) that count the same events: name → counter.
    exported: dict[str, Any] = field(default_factory=dict, repr=False)
    counters: Counts = field(init=False)
    details: dict[str, Any] = field(default_factory=dict)  # latest facts worth showing, e.g. a skipped batch

    def __post_init__(self) -> None:
        self.counters = Counts(self.exported)

    def set(self, state: str, error: str | None = None) -> None:
        """Move to ``state``; log each change once, not once per retry."""
        if state == self.state and error == self.error:
            return
        if error and error != self.error:
            log.warning("%s is %s: %s", self.name, state, error)
        elif state != self.state:
            log.info("%s is %s", self.name, state)
        if state != self.state:
            self.since = time.time()
        self.state, self.error = state, error

    def count(self, name: str, amount: int = 1) -> None:
        """One event (or ``amount``): in /health, and in Prometheus if the name is exported."""
        self.counters.add(name, amount)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "since": iso_time(self.since), **self.counters, **self.details}
        if self.error:
            out["error"] = self.error
        return out


def iso_time(epoch: float) -> str:
    """Epoch seconds as ``2026-11-27T11:36:57Z``, for /health."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
