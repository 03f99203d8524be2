"""Small helpers shared by the benchmark processes.

* /proc readings: resident memory (``VmRSS``) and CPU time (utime + stime) of a pid;
* :func:`raise_nofile`: lift ``RLIMIT_NOFILE`` so 10,000 sockets fit in one process
  (children started afterwards inherit the raised limit);
* :func:`make_record`: the JSON log lines the benchmarks produce into Kafka.
"""

from __future__ import annotations

import os
import resource
import time

import orjson

CLK_TCK = os.sysconf("SC_CLK_TCK")
WANTED_NOFILE = 65_536


def raise_nofile(wanted: int = WANTED_NOFILE) -> int:
    """Raise the soft (and, as root, the hard) open-file limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):  # not root: as far as the hard limit allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


class CpuMeter:
    """CPU% of a pid between :meth:`start` and :meth:`stop` (100 = one core busy)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu0 = self._t0 = 0.0

    def start(self) -> None:
        self._cpu0, self._t0 = cpu_seconds(self.pid), time.monotonic()

    def stop(self) -> dict[str, float]:
        cpu, elapsed = cpu_seconds(self.pid) - self._cpu0, time.monotonic() - self._t0
        return {"cpu_seconds": round(cpu, 3), "wall_seconds": round(elapsed, 3),
                "cpu_percent": round(100.0 * cpu / elapsed, 1) if elapsed > 0 else 0.0}


class MachineMeter:
    """Busy CPU of the whole machine between :meth:`start` and :meth:`stop`, in % (200 = 2 cores busy)."""

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # all but idle and iowait; all

    def start(self) -> None:
        self._busy0, self._all0 = self._read()

    def stop(self) -> float:
        busy, total = self._read()
        return round(100.0 * (os.cpu_count() or 1) * (busy - self._busy0) / max(total - self._all0, 1), 1)


def wait_rss_stable(pid: int, *, interval: float = 0.5, window: int = 4, tolerance_kb: int = 256,
                    timeout: float = 30.0) -> dict[str, int | float | bool]:
    """Poll RSS until ``window`` consecutive readings lie within ``tolerance_kb``.

    Returns the last reading, how long it took and whether it settled before
    ``timeout`` (a reading is returned either way, flagged).
    """
    began = time.monotonic()
    readings: list[int] = []
    while True:
        readings.append(rss_kb(pid))
        recent = readings[-window:]
        if len(recent) == window and max(recent) - min(recent) <= tolerance_kb:
            return {"rss_kb": recent[-1], "settled": True, "seconds": round(time.monotonic() - began, 2)}
        if time.monotonic() - began > timeout:
            return {"rss_kb": recent[-1], "settled": False, "seconds": round(time.monotonic() - began, 2)}
        time.sleep(interval)


_FILLER = "abcdefghijklmnopqrstuvwxyz0123456789" * 64
_LEVELS = ("info", "info", "info", "warn", "error", "debug")


def make_record(seq: int, size: int, *, sent: bool = True, sellers: int = 0) -> bytes:
    """One JSON log line of about ``size`` bytes, carrying its produce time in ``sent`` (ns).

    From 180 bytes up it has a nested ``http`` object and a float attribute too;
    below that only level, service, message, ``seq`` (and ``sent``): ~100 bytes at least.
    With ``sellers``, it belongs to seller ``seller-<seq % sellers>`` (``seller.id``).
    """
    head: dict[str, object] = {
        "level": _LEVELS[seq % len(_LEVELS)],
        "service": f"svc-{seq % 7}",
        "message": "",
        "seq": seq,
    }
    if sellers:
        head["seller"] = {"id": f"seller-{seq % sellers}"}
    if size >= 180:
        head["http"] = {"method": "GET", "path": f"/api/orders/{seq % 977}", "status": 200}
        head["duration_ms"] = (seq % 1000) / 10
    if sent:
        head["sent"] = time.time_ns()
    base = len(orjson.dumps(head))
    head["message"] = "request handled " + _FILLER[:max(size - base - 16, 0)]
    return orjson.dumps(head)
