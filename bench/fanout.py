"""The fan-out benchmark suite (issue #3): logger-service against an asyncio ``websockets`` peer.

    python -m bench.fanout [--quick] [--only NAME ...] [--repeat N] [--repeat-small N] [--json PATH]

One run starts a real Kafka broker (``devstack.kafka.KafkaBroker``), then for each
scenario the service under real Gunicorn (``devstack.service.ServiceProcess``, one
worker, ``FORWARD_ENABLED=false`` for the hub scenarios) and the peer
(``bench.peer``), one at a time, each fed from the same topic and driven by the
same load-client process (``bench.clients``). Scenarios:

1. ``idle``       -- RSS of the serving process with 1k/5k/10k idle clients, minus RSS at 0 → KB per connection;
2. ``throughput`` -- 1k and 10k clients, ~8 KB batches (10 records of ~800 B) produced faster than
   either server can fan out: deliveries/s and the server's CPU%;
3. ``latency``    -- 2,000 records/s, 1k clients: produce → receive latency p50/p99;
4. ``stalled``    -- 1k clients, then 10 more that never read: the others' rate and latency, and RSS growth;
5. ``startup``    -- launch → first 200 from ``GET /health``, median of 5 (and the floor:
                      bare Gunicorn + gevent-websocket + Flask, ``bench.floor_app``);
6. ``forward``    -- records/s from Kafka through a real Rotel collector, against the stock
   OpenTelemetry logging path (``bench.forward``);
7. ``scoped``     -- the cost of token scopes (issue 14), ours against ours: 10k clients over 100
   scopes against 10k unscoped (admin) clients, same producer rate, one server per phase (auth on,
   HS256, tokens sent as ``Authorization: Bearer``). Two scoped phases: scopes that each match
   every record (the like-for-like deliveries/s ratio) and seller scopes that each match 1/100
   (deliveries per CPU-second); see docs/BENCHMARKS.md.

Prints a table (metric | ours | peer | ratio; with ``--repeat``/``--repeat-small``
the median of the runs) and writes every raw number, the machine and the command to ``--json``.
Everything binds to 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import forward
from bench.procstat import CpuMeter, MachineMeter, make_record, raise_nofile, rss_kb, wait_rss_stable
from devstack.kafka import KafkaBroker
from devstack.ports import free_port
from devstack.service import ServiceProcess

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("idle", "throughput", "latency", "stalled", "startup", "forward", "scoped")
SMALL = ("latency", "stalled", "startup")  # at most ~1,000 clients: cheap enough to repeat
NOISE_SENSITIVE = ("throughput", "latency", "stalled", "scoped")  # rates and latencies: rerun when the machine was busy


@dataclass
class Sizes:
    """How big each scenario is: the full run, or ``--quick``."""

    idle_levels: tuple[int, ...] = (1_000, 5_000, 10_000)
    throughput_clients: tuple[int, ...] = (1_000, 10_000)
    # Offered load, records/s (batches of 10 ≈ 8 KB): above what either server sustains,
    # so the measured rate is the server's (Kafka holds the backlog).
    throughput_rate: dict[int, int] = field(default_factory=lambda: {1_000: 1_500, 10_000: 200})
    throughput_seconds: float = 10.0
    latency_clients: int = 1_000
    latency_rate: int = 2_000
    latency_seconds: float = 10.0
    stalled_clients: int = 1_000
    stalled_extra: int = 10
    stalled_rate: int = 2_000
    stalled_baseline_seconds: float = 10.0
    stalled_seconds: float = 30.0
    startup_launches: int = 5
    forward_records: int = 200_000
    # scoped: the throughput scenario's load (batches of 10 ≈ 8 KB, above what 10k clients take)
    scoped_clients: int = 10_000
    scopes: int = 100
    scoped_rate: int = 200
    scoped_seconds: float = 10.0
    warmup_seconds: float = 3.0


QUICK = Sizes(idle_levels=(100, 300), throughput_clients=(200,), throughput_rate={200: 2_500},
              throughput_seconds=3.0, latency_clients=200, latency_seconds=3.0, stalled_clients=200,
              stalled_extra=5, stalled_baseline_seconds=3.0, stalled_seconds=6.0, startup_launches=2,
              forward_records=20_000, scoped_clients=500, scopes=50, scoped_rate=2_500, scoped_seconds=3.0,
              warmup_seconds=1.5)

THROUGHPUT_RECORD_BYTES = 800  # 10 of them per batch: ≈ 8 KB messages
LATENCY_RECORD_BYTES = 120  # a short log line; ~240 bytes once normalised for clients


# -- the load-client process ------------------------------------------------------------------

class ClientProcess:
    """One ``bench.clients`` subprocess, driven line by line."""

    def __init__(self, log_dir: Path, name: str) -> None:
        self.stderr = open(log_dir / f"{name}.stderr.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.clients"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1)
        self.ready = self.read(30)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"load clients did not answer within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load clients exited with {self.proc.poll()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"load clients: {reply.get('error')}\n{reply.get('trace', '')}")
        return reply

    def write(self, cmd: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.write("quit")
            self.read(30)
        except Exception:  # noqa: BLE001 - it is going away anyway
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


class Clients:
    """The load clients and, apart from them, the probes: the clients that measure.

    A real client has a machine to itself; here a thousand share one Python
    process, whose loop would add its own queueing to every latency it took
    (a batch reaches 1,000 sockets at once, and the last one read waits for
    the other 999). So the sampled clients (every ``sample_every``-th) live in
    a second process that does nothing else, connected together with the load
    and in the same group, and the two processes' counters are merged.
    """

    def __init__(self, log_dir: Path) -> None:
        self.load = ClientProcess(log_dir, "clients")
        self.probe = ClientProcess(log_dir, "probes")

    @property
    def pids(self) -> dict[str, int]:
        return {"clients": self.load.pid, "probes": self.probe.pid}

    def call(self, cmd: str, timeout: float = 180.0, **args: Any) -> dict[str, Any]:
        for proc in (self.load, self.probe):
            proc.write(cmd, **args)
        replies = [proc.read(timeout) for proc in (self.load, self.probe)]
        return _merge_stats(*replies) if cmd == "stats" else replies[0]

    def connect(self, port: int, n: int, sample_every: int = 0, **args: Any) -> dict[str, Any]:
        probes = -(-n // sample_every) if sample_every else 0  # the clients i % sample_every == 0 of before
        self.load.write("connect", port=port, n=n - probes, **args)
        if probes:
            self.probe.write("connect", port=port, n=probes, sample_every=1, **args)
        reply = self.load.read(180)
        if probes:
            probed = self.probe.read(180)
            reply["connected"] += probed["connected"]
            reply["errors"] = {**reply["errors"], **probed["errors"]}
        if reply["connected"] < n:
            print(f"    ! only {reply['connected']}/{n} clients connected: {reply['errors']}", flush=True)
        return reply

    def close(self) -> None:
        self.load.close()
        self.probe.close()


_SUMMED = ("clients", "open", "sampled_clients", "messages", "bytes", "records_sampled", "sampled_messages", "lost")


def _merge_stats(load: dict[str, Any], probe: dict[str, Any]) -> dict[str, Any]:
    """One summary per group over both processes (latency comes from the probes only)."""
    out: dict[str, Any] = {"ok": True}
    for name in set(load) | set(probe):
        if name == "ok":
            continue
        a, b = load.get(name), probe.get(name)
        if a is None or b is None or not b["clients"]:
            out[name] = a or b
            continue
        if not a["clients"]:
            out[name] = b
            continue
        g = {key: a[key] + b[key] for key in _SUMMED}
        g["records_per_message"] = (round(g["records_sampled"] / g["sampled_messages"], 2)
                                    if g["sampled_messages"] else None)
        g["other"] = dict(Counter(a["other"]) + Counter(b["other"]))
        g["close_codes"] = dict(Counter(a["close_codes"]) + Counter(b["close_codes"]))
        g["since"], g["now"] = min(a["since"], b["since"]), max(a["now"], b["now"])
        g["first"] = min(x for x in (a["first"], b["first"]) if x) if a["first"] or b["first"] else 0.0
        g["last"] = max(a["last"], b["last"])
        pa, pb = a["per_client_messages"], b["per_client_messages"]
        g["per_client_messages"] = {"min": min(pa["min"], pb["min"]), "median": pa["median"],
                                    "max": max(pa["max"], pb["max"])}
        if "latency_ms" in b or "latency_ms" in a:
            g["latency_ms"] = b.get("latency_ms") or a.get("latency_ms")
        out[name] = g
    return out


# -- the two servers ----------------------------------------------------------------------------

def _get_json(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
        return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the benchmark dies (no orphaned peer)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Ours:
    """logger-service under Gunicorn, one worker, tail path only."""

    name = "ours"

    def __init__(self, ctx: Context, batch_size: int = 500, batch_interval_ms: int = 50,
                 env: dict[str, str] | None = None) -> None:
        self.svc = ServiceProcess({"KAFKA_BROKER_URL": ctx.kafka.bootstrap, "KAFKA_TOPIC": ctx.topic,
                                   "FORWARD_ENABLED": "false", "TAIL_BATCH_SIZE": str(batch_size),
                                   "TAIL_BATCH_INTERVAL_MS": str(batch_interval_ms), "ACCESS_LOG": "false",
                                   **(env or {})},
                                  workers=1, log_dir=ctx.log_dir)
        self.pid = 0

    @property
    def port(self) -> int:
        return self.svc.port

    def launch(self) -> None:
        self.svc.launch()

    def health(self) -> dict[str, Any] | None:
        return self.svc.health()

    def start(self) -> Ours:
        self.svc.start(timeout=60, ready=lambda h: h["kafka"]["tail"]["state"] == "ok")
        health = self.svc.health()
        assert health is not None
        self.pid = health["worker"]  # the Gunicorn worker, not the master
        return self

    def stop(self) -> None:
        self.svc.stop(timeout=30)


class Peer:
    """``bench.peer``: asyncio websockets + kafka-python."""

    name = "peer"

    def __init__(self, ctx: Context, batch_size: int = 500, batch_interval_ms: int = 50) -> None:
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "bench.peer", "--port", str(self.port), "--brokers", ctx.kafka.bootstrap,
                    "--topic", ctx.topic, "--batch-size", str(batch_size),
                    "--batch-interval-ms", str(batch_interval_ms)]
        self.log_path = ctx.log_dir / f"peer-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid

    def health(self) -> dict[str, Any] | None:
        return _get_json(f"http://127.0.0.1:{self.port}/health")

    def start(self) -> Peer:
        self.launch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            health = self.health()
            if health and health["kafka"]["tail"]["state"] == "ok":
                return self
            time.sleep(0.05)
        raise TimeoutError(f"peer not ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Floor(Peer):
    """``bench.floor_app`` under Gunicorn with gevent-websocket's worker: the architecture alone."""

    name = "floor"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        # -c /dev/null: no configuration file (by default Gunicorn loads ./gunicorn.conf.py, ours).
        self.cmd = [sys.executable, "-m", "gunicorn", "-c", "/dev/null", "--worker-class",
                    "geventwebsocket.gunicorn.workers.GeventWebSocketWorker", "--workers", "1",
                    "--bind", f"127.0.0.1:{self.port}", "bench.floor_app:app"]
        self.log_path = ctx.log_dir / f"floor-{self.port}.log"


Server = Ours | Peer


# -- load --------------------------------------------------------------------------------------

class Producer:
    """Produces records at a steady rate from a thread until stopped (or ``max_seconds``)."""

    def __init__(self, ctx: Context, rate: int, record_bytes: int, max_seconds: float = 600.0,
                 sellers: int = 0) -> None:
        self.producer = ctx.kafka.producer(linger_ms=2, acks=1)
        self.topic = ctx.topic
        self.rate = rate
        self.record_bytes = record_bytes
        self.sellers = sellers  # records carry seller.id = seller-<seq % sellers>
        self.max_seconds = max_seconds
        self.sent = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.producer.flush(timeout=30)
        self.producer.close(timeout=10)

    def _run(self) -> None:
        began = time.monotonic()
        step = max(self.rate // 200, 1)  # at most ~5 ms of records per send burst
        while not self._stop.is_set():
            elapsed = time.monotonic() - began
            if elapsed > self.max_seconds:
                break
            due = min(int(elapsed * self.rate), self.sent + step)
            if due <= self.sent:
                self._stop.wait(0.002)
                continue
            for seq in range(self.sent, due):
                self.producer.send(self.topic, make_record(seq, self.record_bytes, sellers=self.sellers))
            self.sent = due
        self.seconds = time.monotonic() - began

    @property
    def achieved_rate(self) -> float:
        elapsed = self.seconds or 1e-9
        return self.sent / elapsed


@dataclass
class Context:
    kafka: KafkaBroker
    topic: str
    clients: Clients
    log_dir: Path
    sizes: Sizes
    order: tuple[str, ...] = ("ours", "peer")
    noise: list[float] = field(default_factory=list)  # CPU% other work used in each measurement window

    def server(self, side: str, **kwargs: Any) -> Server:
        return Ours(self, **kwargs) if side == "ours" else Peer(self, **kwargs)


def _settle(pid: int, timeout: float = 60.0) -> dict[str, Any]:
    rss = rss_kb(pid)
    return wait_rss_stable(pid, tolerance_kb=max(256, rss // 200), timeout=timeout)


def _say(text: str) -> None:
    print(f"  {text}", flush=True)


# -- scenarios ---------------------------------------------------------------------------------

Row = dict[str, Any]


def row(metric: str, ours: float | None, peer: float | None, unit: str = "", better: str = "") -> Row:
    return {"metric": metric, "ours": ours, "peer": peer, "unit": unit, "better": better}


def scenario_idle(ctx: Context) -> tuple[dict[str, Any], list[Row]]:
    raw: dict[str, Any] = {}
    for side in ctx.order:
        srv = ctx.server(side).start()
        try:
            base = _settle(srv.pid)
            levels = []
            current = 0
            for n in ctx.sizes.idle_levels:
                conn = ctx.clients.connect(srv.port, n - current, group="idle", concurrency=256)
                current = n
                settled = _settle(srv.pid)
                health = srv.health() or {}
                connected = ctx.clients.call("stats")["idle"]["open"]
                levels.append({"clients": n, "connected": connected, "server_clients": health.get("clients"),
                               "connect_seconds": conn["seconds"], "connect_errors": conn["errors"],
                               **settled, "kb_per_client": round((settled["rss_kb"] - base["rss_kb"]) / n, 2)})
                _say(f"{side}: {n} idle clients: RSS {settled['rss_kb'] / 1024:.1f} MiB, "
                     f"{levels[-1]['kb_per_client']} KB/client (settled={settled['settled']})")
            raw[side] = {"pid": srv.pid, "rss_0_kb": base["rss_kb"], "levels": levels}
        finally:
            ctx.clients.call("close")
            srv.stop()
    rows = [row("idle RSS, 0 clients", raw["ours"]["rss_0_kb"] / 1024, raw["peer"]["rss_0_kb"] / 1024,
                "MiB", "lower")]
    for i, n in enumerate(ctx.sizes.idle_levels):
        o, p = raw["ours"]["levels"][i], raw["peer"]["levels"][i]
        rows.append(row(f"idle RSS, {n:,} clients", o["rss_kb"] / 1024, p["rss_kb"] / 1024, "MiB", "lower"))
        rows.append(row(f"idle KB per client @ {n:,}", o["kb_per_client"], p["kb_per_client"], "KB", "lower"))
    return raw, rows


class HealthProbe:
    """Times ``GET /health`` every half second while a measurement runs (a starved server answers late)."""

    def __init__(self, srv: Server, every: float = 0.5) -> None:
        self.srv = srv
        self.every = every
        self.times_ms: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            began = time.monotonic()
            if self.srv.health() is None:  # no answer within 2 s
                self.failed += 1
            else:
                self.times_ms.append((time.monotonic() - began) * 1000)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        t = sorted(self.times_ms)
        return {"n": len(t), "failed_2s": self.failed, "median": round(t[len(t) // 2], 1) if t else None,
                "max": round(t[-1], 1) if t else None}


class Meters:
    """CPU of the server, the load clients, the broker, this process and the whole machine over a window.

    ``others_percent`` is what the rest of the machine (other work sharing it)
    used meanwhile; it is also appended to ``ctx.noise``.
    """

    def __init__(self, ctx: Context, srv: Server) -> None:
        self.ctx = ctx
        self.meters = {"server": CpuMeter(srv.pid), "bench": CpuMeter(os.getpid()),
                       **{name: CpuMeter(pid) for name, pid in ctx.clients.pids.items()}}
        broker_pid = ctx.kafka._proc.pid if ctx.kafka._proc else None  # noqa: SLF001 - read-only use
        if broker_pid:
            self.meters["broker"] = CpuMeter(broker_pid)
        self.machine = MachineMeter()

    def start(self) -> None:
        for m in self.meters.values():
            m.start()
        self.machine.start()

    def stop(self) -> dict[str, Any]:
        cpu: dict[str, Any] = {name: m.stop() for name, m in self.meters.items()}
        cpu["machine_busy_percent"] = self.machine.stop()
        cpu["others_percent"] = round(cpu["machine_busy_percent"] - sum(
            v["cpu_percent"] for v in cpu.values() if isinstance(v, dict)), 1)
        self.ctx.noise.append(cpu["others_percent"])
        return cpu


def _measure(ctx: Context, srv: Server, seconds: float, group: str = "normal") -> dict[str, Any]:
    """Counters of the clients, CPU (see :class:`Meters`) and /health times over ``seconds``."""
    meters = Meters(ctx, srv)
    ctx.clients.call("stats", reset=True)
    meters.start()
    rss0 = rss_kb(srv.pid)
    with HealthProbe(srv) as health:
        time.sleep(seconds)
    stats = ctx.clients.call("stats", reset=True)
    cpu = meters.stop()
    g = stats[group]
    window = g["now"] - g["since"]
    out = {"window_seconds": round(window, 3), "deliveries": g["messages"],
           "records_per_s_per_client": _per_client_rate(g, window),
           "deliveries_per_s": round(g["messages"] / window, 1), "bytes_per_s": round(g["bytes"] / window),
           "records_per_message": g["records_per_message"], "latency_ms": g.get("latency_ms"),
           "per_client_messages": g["per_client_messages"], "other_messages": g["other"],
           "close_codes": g["close_codes"], "lost": g["lost"], "open": g["open"],
           "server_cpu_percent": cpu["server"]["cpu_percent"], "cpu": cpu,
           "rss_start_kb": rss0, "rss_end_kb": rss_kb(srv.pid), "health_ms": health.summary(), "groups": stats}
    cpu_s = cpu["server"]["cpu_seconds"]
    out["deliveries_per_cpu_s"] = round(g["messages"] / cpu_s, 1) if cpu_s else None
    return out


def _per_client_rate(g: dict[str, Any], window: float) -> float | None:
    """Records per second that one sampled client received (they all should get every record)."""
    if not g.get("sampled_clients") or window <= 0:
        return None
    return round(g["records_sampled"] / g["sampled_clients"] / window, 1)


def scenario_throughput(ctx: Context) -> tuple[dict[str, Any], list[Row]]:
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    for n in ctx.sizes.throughput_clients:
        rate = ctx.sizes.throughput_rate[n]
        per: dict[str, Any] = {}
        for side in ctx.order:
            srv = ctx.server(side, batch_size=10, batch_interval_ms=100).start()
            try:
                conn = ctx.clients.connect(srv.port, n, sample_every=max(n // 50, 1))
                with Producer(ctx, rate, THROUGHPUT_RECORD_BYTES) as producer:
                    time.sleep(ctx.sizes.warmup_seconds)
                    m = _measure(ctx, srv, ctx.sizes.throughput_seconds)
                m.update(clients=n, connected=conn["connected"], offered_records_per_s=rate,
                         produced_records_per_s=round(producer.achieved_rate, 1))
                per[side] = m
                _say(f"{side}: {n} clients: {m['deliveries_per_s']:,.0f} deliveries/s, "
                     f"server CPU {m['server_cpu_percent']}%, clients CPU {m['cpu']['clients']['cpu_percent']}%, "
                     f"machine {m['cpu']['machine_busy_percent']}% (others {m['cpu']['others_percent']}%), "
                     f"/health {m['health_ms']}, "
                     f"{m['records_per_message']} records/msg, {m['bytes_per_s'] / 1e6:.0f} MB/s")
            finally:
                ctx.clients.call("close")
                srv.stop()
        raw[str(n)] = per
        o, p = per["ours"], per["peer"]
        rows += [row(f"fan-out {n:,} clients: deliveries/s", o["deliveries_per_s"], p["deliveries_per_s"], "/s", "higher"),
                 row(f"fan-out {n:,} clients: server CPU", o["server_cpu_percent"], p["server_cpu_percent"], "%"),
                 row(f"fan-out {n:,} clients: deliveries per CPU-second", o["deliveries_per_cpu_s"],
                     p["deliveries_per_cpu_s"], "", "higher"),
                 row(f"fan-out {n:,} clients: slowest GET /health", o["health_ms"]["max"], p["health_ms"]["max"],
                     "ms", "lower")]
    return raw, rows


def _lat(m: dict[str, Any], key: str) -> float | None:
    return (m.get("latency_ms") or {}).get(key)


def scenario_latency(ctx: Context) -> tuple[dict[str, Any], list[Row]]:
    n, rate = ctx.sizes.latency_clients, ctx.sizes.latency_rate
    raw: dict[str, Any] = {"clients": n, "records_per_s": rate, "record_bytes": LATENCY_RECORD_BYTES}
    for side in ctx.order:
        srv = ctx.server(side).start()  # the service's default batching: 500 records or 50 ms
        try:
            ctx.clients.connect(srv.port, n, sample_every=20)
            with Producer(ctx, rate, LATENCY_RECORD_BYTES) as producer:
                time.sleep(ctx.sizes.warmup_seconds)
                m = _measure(ctx, srv, ctx.sizes.latency_seconds)
            m["produced_records_per_s"] = round(producer.achieved_rate, 1)
            raw[side] = m
            _say(f"{side}: latency {m['latency_ms']}, {m['deliveries_per_s']:,.0f} deliveries/s, "
                 f"CPU {m['server_cpu_percent']}%, machine {m['cpu']['machine_busy_percent']}% "
                 f"(others {m['cpu']['others_percent']}%)")
        finally:
            ctx.clients.call("close")
            srv.stop()
    o, p = raw["ours"], raw["peer"]
    return raw, [row(f"latency @ {rate:,} rec/s, {n:,} clients: p50", _lat(o, "p50"), _lat(p, "p50"), "ms", "lower"),
                 row(f"latency @ {rate:,} rec/s, {n:,} clients: p99", _lat(o, "p99"), _lat(p, "p99"), "ms", "lower"),
                 row(f"latency run: records/s per client (of {rate:,} produced)", o["records_per_s_per_client"],
                     p["records_per_s_per_client"], "/s", "higher"),
                 row("latency run: server CPU", o["server_cpu_percent"], p["server_cpu_percent"], "%", "lower")]


def scenario_stalled(ctx: Context) -> tuple[dict[str, Any], list[Row]]:
    s = ctx.sizes
    raw: dict[str, Any] = {"clients": s.stalled_clients, "stalled": s.stalled_extra, "records_per_s": s.stalled_rate}
    for side in ctx.order:
        srv = ctx.server(side).start()
        try:
            ctx.clients.connect(srv.port, s.stalled_clients, sample_every=20)
            with Producer(ctx, s.stalled_rate, LATENCY_RECORD_BYTES):
                time.sleep(s.warmup_seconds)
                before = _measure(ctx, srv, s.stalled_baseline_seconds)
                ctx.clients.connect(srv.port, s.stalled_extra, group="stalled", stall=True, rcvbuf=4096)
                rss0 = rss_kb(srv.pid)
                series = []
                ctx.clients.call("stats", reset=True)
                meter = Meters(ctx, srv)
                meter.start()
                began = time.monotonic()
                while time.monotonic() - began < s.stalled_seconds:
                    time.sleep(1.0)
                    series.append(rss_kb(srv.pid))
                stats = ctx.clients.call("stats", reset=True)
                cpu = meter.stop()
                health_after = srv.health() or {}
            g = stats["normal"]
            window = g["now"] - g["since"]
            with_stalled = {"window_seconds": round(window, 3), "deliveries_per_s": round(g["messages"] / window, 1),
                            "records_per_s_per_client": _per_client_rate(g, window),
                            "latency_ms": g.get("latency_ms"), "per_client_messages": g["per_client_messages"],
                            "close_codes": g["close_codes"], "lost": g["lost"],
                            "server_cpu_percent": cpu["server"]["cpu_percent"], "cpu": cpu,
                            "rss_before_stall_kb": before["rss_end_kb"],
                            "stalled_group": stats.get("stalled"), "rss_start_kb": rss0, "rss_series_kb": series,
                            "rss_growth_kb": max(series) - rss0 if series else None,
                            "rss_growth_last_10s_kb": (series[-1] - series[-11]) if len(series) > 10 else None,
                            "server_clients_after": health_after.get("clients"),
                            "server_hub_counters_after": health_after.get("hub")}
            raw[side] = {"without": before, "with": with_stalled}
            _say(f"{side}: without stalled {before['deliveries_per_s']:,.0f}/s p99 {_lat(before, 'p99')} ms; "
                 f"with {with_stalled['deliveries_per_s']:,.0f}/s p99 {_lat(with_stalled, 'p99')} ms; "
                 f"RSS +{with_stalled['rss_growth_kb'] / 1024:.1f} MiB")
        finally:
            ctx.clients.call("close")
            srv.stop()
    o, p = raw["ours"], raw["peer"]
    tag = f"{s.stalled_clients:,} + {s.stalled_extra} stalled"
    return raw, [
        row(f"{tag}: deliveries/s without stalled", o["without"]["deliveries_per_s"], p["without"]["deliveries_per_s"], "/s", "higher"),
        row(f"{tag}: deliveries/s with stalled", o["with"]["deliveries_per_s"], p["with"]["deliveries_per_s"], "/s", "higher"),
        row(f"{tag}: records/s per normal client without stalled", o["without"]["records_per_s_per_client"],
            p["without"]["records_per_s_per_client"], "/s", "higher"),
        row(f"{tag}: records/s per normal client with stalled", o["with"]["records_per_s_per_client"],
            p["with"]["records_per_s_per_client"], "/s", "higher"),
        row(f"{tag}: p99 latency without stalled", _lat(o["without"], "p99"), _lat(p["without"], "p99"), "ms", "lower"),
        row(f"{tag}: p99 latency with stalled", _lat(o["with"], "p99"), _lat(p["with"], "p99"), "ms", "lower"),
        row(f"{tag}: RSS growth over {s.stalled_seconds:.0f} s", o["with"]["rss_growth_kb"] / 1024,
            p["with"]["rss_growth_kb"] / 1024, "MiB", "lower"),
    ]


def scenario_startup(ctx: Context) -> tuple[dict[str, Any], list[Row]]:
    raw: dict[str, Any] = {}
    for side in ctx.order:
        runs = []
        for _ in range(ctx.sizes.startup_launches):
            srv = ctx.server(side)
            try:
                began = time.monotonic()
                srv.launch()
                first = ready = None
                while time.monotonic() - began < 60:
                    health = srv.health()
                    now = time.monotonic()
                    if health is not None and first is None:
                        first = now - began
                    if health is not None and health["kafka"]["tail"]["state"] == "ok":
                        ready = now - began
                        break
                    time.sleep(0.01)
                runs.append({"first_200_s": round(first, 3) if first else None,
                             "tail_ready_s": round(ready, 3) if ready else None})
            finally:
                srv.stop()
        raw[side] = {"runs": runs,
                     "median_first_200_s": statistics.median(r["first_200_s"] for r in runs if r["first_200_s"]),
                     "median_tail_ready_s": statistics.median(r["tail_ready_s"] for r in runs if r["tail_ready_s"])}
        _say(f"{side}: first 200 {raw[side]['median_first_200_s']} s, tail ready {raw[side]['median_tail_ready_s']} s")
    # The floor: Gunicorn + gevent-websocket + Flask answering /health, none of our code, launched
    # as many times after both sides: the least any service of this architecture takes here now.
    floor_runs = []
    for _ in range(ctx.sizes.startup_launches):
        floor = Floor(ctx)
        try:
            began = time.monotonic()
            floor.launch()
            while floor.health() is None:
                if time.monotonic() - began > 60:
                    raise TimeoutError(f"the floor never answered /health: {floor.log_path.read_text()[-2000:]}")
                time.sleep(0.01)
            floor_runs.append(round(time.monotonic() - began, 3))
        finally:
            floor.stop()
    raw["floor"] = {"first_200_s": floor_runs, "median_first_200_s": statistics.median(floor_runs)}
    _say(f"floor: first 200 {raw['floor']['median_first_200_s']} s")
    o, p = raw["ours"], raw["peer"]
    return raw, [row("start-up: launch → first /health 200", o["median_first_200_s"] * 1000,
                     p["median_first_200_s"] * 1000, "ms", "lower"),
                 row("start-up floor (Gunicorn + gevent-websocket + Flask, no service) → first 200",
                     raw["floor"]["median_first_200_s"] * 1000, p["median_first_200_s"] * 1000, "ms", "lower"),
                 row("start-up: launch → Kafka tail ready", o["median_tail_ready_s"] * 1000,
                     p["median_tail_ready_s"] * 1000, "ms", "lower")]


def scenario_forward(ctx: Context) -> tuple[dict[str, Any], list[Row]]:
    raw = forward.run(ctx.kafka, ctx.sizes.forward_records, str(ctx.log_dir))
    o, p = raw["ours"], raw["stock"]
    for side, r in (("ours", o), ("stock OTel", p)):
        _say(f"{side}: complete={r['complete']} {r['received']:,} received ({r['distinct_seq']:,} distinct), "
             f"{r['records_per_s_wall']} rec/s wall, {r['records_per_s_steady']} rec/s steady, "
             f"CPU {r['sender_cpu_seconds']} s")
    n = ctx.sizes.forward_records
    return raw, [row(f"forward {n:,} records: rec/s, launch → all at collector", o["records_per_s_wall"],
                     p["records_per_s_wall"], "/s", "higher"),
                 row(f"forward {n:,} records: rec/s, first → last at collector", o["records_per_s_steady"],
                     p["records_per_s_steady"], "/s", "higher"),
                 row(f"forward {n:,} records: records per sender CPU-second", o["records_per_cpu_s"],
                     p["records_per_cpu_s"], "", "higher"),
                 row(f"forward {n:,} records: distinct records at receiver", o["distinct_seq"], p["distinct_seq"])]


SCOPED_SECRET = "bench-scoped-shared-secret-0123456789abcdef"  # HS256 needs 32+ bytes
SCOPED_PHASES = ("unscoped", "every_record", "sellers")


def scoped_tokens(scopes: int) -> dict[str, list[str]]:
    """The tokens of each phase; client i sends token i % len (``bench.clients``)."""
    import jwt  # only this scenario needs PyJWT

    def sign(claims: dict[str, Any]) -> str:
        return jwt.encode({**claims, "exp": int(time.time()) + 3600}, SCOPED_SECRET, algorithm="HS256")
    every_service = [f"svc-{i}" for i in range(7)]  # make_record's services: each record is in all of them
    return {
        "unscoped": [sign({"sub": "admin", "logs.all": True})],
        # 100 distinct filters that each let every record through: the same deliveries as unscoped,
        # plus what scoping costs (a group, a match per record and an encoding per scope and batch).
        "every_record": [sign({"sub": f"team-{i}", "logs.services": every_service + [f"team-{i}"]})
                         for i in range(scopes)],
        # What sellers do: each scope matches its seller's 1/100 of the records.
        "sellers": [sign({"sub": f"user-{i}", "seller_id": f"seller-{i}"}) for i in range(scopes)],
    }


def scenario_scoped(ctx: Context) -> tuple[dict[str, Any], list[Row]]:
    s = ctx.sizes
    n = s.scoped_clients
    env = {"AUTH_JWT_SECRET": SCOPED_SECRET, "AUTH_ATTRIBUTE_CLAIMS": "seller.id=seller_id"}
    tokens = scoped_tokens(s.scopes)
    phases = SCOPED_PHASES if ctx.order[0] == "ours" else tuple(reversed(SCOPED_PHASES))
    raw: dict[str, Any] = {"clients": n, "scopes": s.scopes, "offered_records_per_s": s.scoped_rate}
    # One producer for the whole run: every phase sees the same rate and the same records
    # (each carrying one of the sellers' ids); each phase gets a fresh server, so no phase
    # inherits another's backlog.
    with Producer(ctx, s.scoped_rate, THROUGHPUT_RECORD_BYTES, sellers=s.scopes) as producer:
        for phase in phases:
            srv = Ours(ctx, batch_size=10, batch_interval_ms=100, env=env).start()
            try:
                conn = ctx.clients.connect(srv.port, n, sample_every=max(n // 50, 1), tokens=tokens[phase])
                time.sleep(ctx.sizes.warmup_seconds)
                m = _measure(ctx, srv, s.scoped_seconds)
                per_client = m["records_per_s_per_client"]
                m.update(connected=conn["connected"], connect_errors=conn["errors"],
                         record_deliveries_per_s=round(per_client * conn["connected"]) if per_client else None)
                raw[phase] = m
                _say(f"{phase}: {n} clients, {len(tokens[phase])} token(s): {m['deliveries_per_s']:,.0f} "
                     f"deliveries/s, {per_client} records/s per client, server CPU {m['server_cpu_percent']}%, "
                     f"{m['deliveries_per_cpu_s']} deliveries per CPU-s, others {m['cpu']['others_percent']}%")
            finally:
                ctx.clients.call("close")
                srv.stop()
    raw["produced_records_per_s"] = round(producer.achieved_rate, 1)
    u, e, v = raw["unscoped"], raw["every_record"], raw["sellers"]
    tag = f"{n:,} clients, {s.scopes} scopes"
    return raw, [
        row(f"{tag} matching every record vs unscoped: deliveries/s", e["deliveries_per_s"], u["deliveries_per_s"],
            "/s", "higher"),
        row(f"{tag} matching every record vs unscoped: server CPU", e["server_cpu_percent"],
            u["server_cpu_percent"], "%", "lower"),
        row(f"{tag} matching every record vs unscoped: deliveries per CPU-second", e["deliveries_per_cpu_s"],
            u["deliveries_per_cpu_s"], "", "higher"),
        row(f"{tag}, seller scopes (1/{s.scopes} each) vs unscoped: deliveries/s", v["deliveries_per_s"],
            u["deliveries_per_s"], "/s"),
        row(f"{tag}, seller scopes vs unscoped: records/s per client", v["records_per_s_per_client"],
            u["records_per_s_per_client"], "/s"),
        row(f"{tag}, seller scopes vs unscoped: record deliveries/s (records × clients)",
            v["record_deliveries_per_s"], u["record_deliveries_per_s"], "/s"),
        row(f"{tag}, seller scopes vs unscoped: deliveries per CPU-second", v["deliveries_per_cpu_s"],
            u["deliveries_per_cpu_s"], "", "higher"),
    ]


RUNNERS: dict[str, Callable[[Context], tuple[dict[str, Any], list[Row]]]] = {
    "idle": scenario_idle, "throughput": scenario_throughput, "latency": scenario_latency,
    "stalled": scenario_stalled, "startup": scenario_startup, "forward": scenario_forward,
    "scoped": scenario_scoped,
}
PEER_LABELS = {"forward": "peer / stock OTel", "scoped": "ours unscoped"}


# -- table -------------------------------------------------------------------------------------

def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """One row per metric: the median over repeated runs of ours and of peer."""
    out: list[Row] = []
    for i, first in enumerate(runs[0]):
        same = [r[i] for r in runs if i < len(r) and r[i]["metric"] == first["metric"]]
        merged = dict(first)
        for side in ("ours", "peer"):
            values = [r[side] for r in same if r[side] is not None]
            merged[side] = statistics.median(values) if values else None
            merged[f"{side}_runs"] = [r[side] for r in same]
        out.append(merged)
    return out


def table(rows: list[Row], peer_label: str = "peer") -> str:
    lines = [f"| metric | ours | {peer_label} | ratio ours/peer |", "|---|---:|---:|---:|"]
    for r in rows:
        ratio = (r["ours"] / r["peer"]) if r["ours"] is not None and r["peer"] else None
        name = r["metric"] + (f" ({r['unit']})" if r["unit"] else "")
        lines.append(f"| {name} | {_fmt(r['ours'])} | {_fmt(r['peer'])} | "
                     f"{f'{ratio:.2f}' if ratio is not None else '–'} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    import websockets
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": sys.version.split()[0],
                            "platform": platform.platform(), "websockets": websockets.__version__,
                            "load_average_at_start": os.getloadavg()}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["mem_total_kb"] = int(next(line.split()[1] for line in open("/proc/meminfo")
                                        if line.startswith("MemTotal")))
    except (OSError, StopIteration):
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a minute or two")
    parser.add_argument("--only", action="append", choices=SCENARIOS, metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    parser.add_argument("--repeat", type=int, default=1, help="run each scenario N times; the table shows medians")
    parser.add_argument("--repeat-small", type=int, default=0, metavar="N",
                        help=f"run the small scenarios ({', '.join(SMALL)}) N times (overrides --repeat for them)")
    parser.add_argument("--max-others", type=float, default=60.0, metavar="PCT",
                        help="a rate/latency run during which other work used more CPU than this (100 = one core) "
                             "is discarded and run again, up to --attempts times (default 60)")
    parser.add_argument("--attempts", type=int, default=3, help="tries per run, see --max-others (default 3)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "fanout.json"), help="where to write raw results")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their folder is printed)")
    args = parser.parse_args(argv)

    nofile = raise_nofile()  # Gunicorn, the peer and the clients inherit it

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every finally: servers stop
    signal.signal(signal.SIGTERM, interrupted)
    sizes = QUICK if args.quick else Sizes()
    names = [s for s in SCENARIOS if not args.only or s in args.only]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    command = " ".join([Path(sys.executable).name, "-m", "bench.fanout", *(argv if argv is not None else sys.argv[1:])])
    results: dict[str, Any] = {"command": command, "machine": machine_info(), "nofile": nofile,
                               "sizes": sizes.__dict__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "scenarios": {}, "rows": []}
    print(f"bench.fanout: {', '.join(names)}; logs in {log_dir}", flush=True)
    began = time.monotonic()
    all_rows: list[Row] = []
    with KafkaBroker(log_dir / "kafka") as kafka:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        kafka.create_topic(topic, 3)
        clients = Clients(log_dir)
        try:
            for name in names:
                runs: list[list[Row]] = []
                raws: list[dict[str, Any]] = []
                repeat = args.repeat_small if (args.repeat_small and name in SMALL) else args.repeat
                for i in range(repeat):
                    # Alternate who goes first, so warm caches and drift do not favour one side.
                    order = ("ours", "peer") if i % 2 == 0 else ("peer", "ours")
                    ctx = Context(kafka, topic, clients, log_dir, sizes, order)
                    print(f"[{name} {i + 1}/{repeat}]", flush=True)
                    t0 = time.monotonic()
                    for attempt in range(1, args.attempts + 1):
                        ctx.noise = []
                        try:
                            raw, rows = RUNNERS[name](ctx)
                        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others
                            print(f"  ! {name} failed: {type(exc).__name__}: {exc}", flush=True)
                            raws.append({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
                            break
                        raw["seconds"] = round(time.monotonic() - t0, 1)
                        raw["others_percent_max"] = max(ctx.noise, default=0.0)
                        raw["attempt"] = attempt
                        noisy = name in NOISE_SENSITIVE and raw["others_percent_max"] > args.max_others
                        if noisy and attempt < args.attempts:
                            print(f"  ~ other work used {raw['others_percent_max']}% CPU during a measurement "
                                  f"(> {args.max_others}%): run discarded, again", flush=True)
                            raws.append({**raw, "discarded": True})
                            continue
                        raw["noisy"] = noisy
                        raws.append(raw)
                        runs.append(rows)
                        break
                if not runs:
                    results["scenarios"][name] = {"runs": raws, "rows": []}
                    continue
                merged = median_rows(runs)
                results["scenarios"][name] = {"runs": raws, "rows": merged}
                all_rows += merged
                print(table(merged, PEER_LABELS.get(name, "peer")), flush=True)
        finally:
            clients.close()
    results["rows"] = all_rows
    results["seconds"] = round(time.monotonic() - began, 1)
    results["load_average_at_end"] = os.getloadavg()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nbench.fanout: {results['seconds']} s; medians of the runs shown; "
          f"peer = asyncio websockets {results['machine']['websockets']} (forward: stock OpenTelemetry logging)\n")
    print(table(all_rows))
    print(f"\nraw results: {out}")
    if not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
