"""50,000 idle clients on one worker (issue #15, "more clients per worker").

    python -m bench.many [--clients 50000] [--sources 4] [--health 20] [--batches 3] [--json PATH]

One Gunicorn worker (``WS_MAX_CLIENTS`` raised above the count; Gunicorn's
``worker_connections`` follows it), ``FORWARD_ENABLED=false``, otherwise defaults,
on a real broker. ``bench.clients`` opens the clients in steps of 5,000, bound in
turn to the loopback source addresses 127.0.0.2, 127.0.0.3, ... (one address has
only ~28,000 ephemeral ports), from several
``bench.clients`` processes of at most 15,000 clients each. ``RLIMIT_NOFILE`` is
raised (as root with CAP_SYS_RESOURCE) to 65,536 for this process, the clients and
the server, which inherit it; where the hard limit is lower and cannot be raised,
the run says so and measures as many clients as fit in one worker.

Measures:

* worker RSS at 0 clients and at each step once stable → KB per client, and at each step
  5 ``GET /health`` and 3 batches to everyone (below), for the curves of ``--plot``;
* ``GET /health`` with every client connected: ``--health`` requests, 0.25 s apart;
* one batch to everyone: a record is produced (time t0) and the clients' counters
  are polled until every client has received it; the time from t0 to the last
  client's receipt (and to the first), ``--batches`` times.

Everything binds to 127.0.0.x; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.fanout import ClientProcess, _settle
from bench.procstat import CpuMeter, make_record, raise_nofile, rss_kb
from devstack.kafka import KafkaBroker
from devstack.service import ServiceProcess

ROOT = Path(__file__).resolve().parent.parent
STEP = 5_000
PER_PROCESS = 15_000  # clients per load-client process: each process is bound by its own RLIMIT_NOFILE
SPARE_FDS = 300  # what a worker needs besides its clients: listener, Kafka, metrics files, ...


class ManyClients:
    """Enough ``bench.clients`` processes for ``n`` clients, driven together; one group, ``normal``."""

    def __init__(self, log_dir: Path, n: int) -> None:
        self.procs = [ClientProcess(log_dir, f"clients-{i}") for i in range(-(-n // PER_PROCESS))]
        self.open = [0] * len(self.procs)

    def connect(self, port: int, n: int, sources: list[str]) -> dict[str, Any]:
        """Add ``n`` clients, to the least loaded processes first."""
        share: list[int] = [0] * len(self.procs)
        for _ in range(n):
            i = min(range(len(self.procs)), key=lambda k: self.open[k] + share[k])
            share[i] += 1
        began = time.monotonic()
        for proc, k in zip(self.procs, share):
            if k:
                proc.write("connect", port=port, n=k, concurrency=256, timeout=170, sources=sources)
        connected, errors = 0, {}
        for i, (proc, k) in enumerate(zip(self.procs, share)):
            if k:
                reply = proc.read(180)
                connected += reply["connected"]
                self.open[i] += reply["connected"]
                errors.update(reply["errors"])
        return {"connected": connected, "errors": errors, "seconds": round(time.monotonic() - began, 3)}

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """Summed over the processes: messages, open clients; first and last receipt (wall clock)."""
        for proc in self.procs:
            proc.write("stats", reset=reset)
        groups = [proc.read(60).get("normal") for proc in self.procs]
        groups = [g for g in groups if g]
        firsts = [g["first"] for g in groups if g["first"]]
        return {"messages": sum(g["messages"] for g in groups), "open": sum(g["open"] for g in groups),
                "first": min(firsts) if firsts else 0.0, "last": max((g["last"] for g in groups), default=0.0),
                "per_client": {"min": min((g["per_client_messages"]["min"] for g in groups), default=0),
                               "max": max((g["per_client_messages"]["max"] for g in groups), default=0)}}

    def close(self) -> None:
        for proc in self.procs:
            proc.close()


def _say(text: str) -> None:
    print(f"  {text}", flush=True)


def health_times(svc: ServiceProcess, n: int) -> dict[str, Any]:
    times, answers = [], []
    for _ in range(n):
        began = time.monotonic()
        health = svc.health()
        if health is not None:
            times.append(round((time.monotonic() - began) * 1000, 1))
            answers.append(health.get("clients"))
        time.sleep(0.25)
    t = sorted(times)
    return {"n": n, "answered": len(t), "ms": times, "median_ms": round(statistics.median(t), 1) if t else None,
            "max_ms": t[-1] if t else None, "clients_reported": answers[-1] if answers else None}


def batch_to_all(clients: ManyClients, producer: Any, topic: str, seq: int, want: int,
                 timeout: float = 60.0) -> dict[str, Any]:
    """Produce one record; wait until ``want`` clients have each received one message."""
    clients.stats(reset=True)
    t0 = time.time()
    producer.send(topic, make_record(seq, 120))
    producer.flush(timeout=10)
    g: dict[str, Any] = {"messages": 0}
    while time.time() - t0 < timeout:
        time.sleep(0.2)
        g = clients.stats()
        if g["messages"] >= want:
            break
    out = {"clients": want, "received": g["messages"], "per_client": g.get("per_client"),
           "first_ms": round((g["first"] - t0) * 1000, 1) if g.get("first") else None,
           "last_ms": round((g["last"] - t0) * 1000, 1) if g.get("last") else None}
    _say(f"batch {seq}: {out['received']:,}/{want:,} clients got it; first after {out['first_ms']} ms, "
         f"last after {out['last_ms']} ms")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.many", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50_000)
    parser.add_argument("--sources", type=int, default=4, help="source addresses 127.0.0.2 … 127.0.0.(1+N)")
    parser.add_argument("--health", type=int, default=20, help="GET /health requests with everyone connected")
    parser.add_argument("--batches", type=int, default=3, help="single-record batches timed to every client")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "many.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "many-clients.png"),
                        help="PNG of the curves (medians over --replot's files, or this run)")
    parser.add_argument("--replot", nargs="+", metavar="JSON", help="only redraw --plot from these results")
    args = parser.parse_args(argv)
    if args.replot:
        print(plot([json.loads(Path(p).read_text()) for p in args.replot], Path(args.plot)))
        return 0
    nofile = raise_nofile()  # Gunicorn and the client processes inherit it
    if nofile < args.clients + SPARE_FDS:
        print(f"bench.many: RLIMIT_NOFILE is {nofile:,} here (the hard limit, and no CAP_SYS_RESOURCE to raise "
              f"it): one worker cannot hold {args.clients:,} clients; measuring "
              f"{nofile - SPARE_FDS:,} instead", flush=True)
        args.clients = nofile - SPARE_FDS

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-many-"))
    results: dict[str, Any] = {"command": " ".join(["python -m bench.many", *(argv or sys.argv[1:])]),
                               "nofile": nofile, "clients_wanted": args.clients, "sources": sources,
                               "load_average_at_start": os.getloadavg(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"bench.many: {args.clients:,} clients from {', '.join(sources)}; logs in {log_dir}", flush=True)
    with KafkaBroker(log_dir / "kafka") as kafka:
        topic = f"many-{uuid.uuid4().hex[:8]}"
        kafka.create_topic(topic, 3)
        svc = ServiceProcess({"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": topic, "FORWARD_ENABLED": "false",
                              "WS_MAX_CLIENTS": str(args.clients + 10_000), "ACCESS_LOG": "false",
                              "LOG_LEVEL": "warning"}, workers=1, log_dir=log_dir)
        svc.start(timeout=60, ready=lambda h: h["kafka"]["tail"]["state"] == "ok")
        clients = ManyClients(log_dir, args.clients)
        producer = kafka.producer(linger_ms=0, acks=1)
        try:
            health = svc.health()
            assert health is not None
            pid = health["worker"]
            base = _settle(pid)
            results["rss_0_kb"] = base["rss_kb"]
            _say(f"worker {pid}: RSS at 0 clients {base['rss_kb'] / 1024:.1f} MiB")
            levels, current = [], 0
            while current < args.clients:
                n = min(STEP, args.clients - current)
                conn = clients.connect(svc.port, n, sources)
                current += conn["connected"]
                settled = _settle(pid)
                level = {"clients": current, "connect_seconds": conn["seconds"], "errors": conn["errors"],
                         **settled, "kb_per_client": round((settled["rss_kb"] - base["rss_kb"]) / current, 2),
                         "load_average": os.getloadavg()[0]}
                levels.append(level)
                _say(f"{current:,} clients (+{conn['connected']:,} in {conn['seconds']} s): RSS "
                     f"{settled['rss_kb'] / 1024:.1f} MiB, {level['kb_per_client']} KB/client; load "
                     f"{level['load_average']:.2f}")
                level["health"] = health_times(svc, 5)
                level["batches"] = [batch_to_all(clients, producer, topic, i, current) for i in range(3)]
                if conn["connected"] < n:
                    break
            results["levels"] = levels
            cpu = CpuMeter(pid)
            cpu.start()
            time.sleep(10)
            results["idle_worker_cpu"] = cpu.stop()
            _say(f"worker CPU with {current:,} idle clients: {results['idle_worker_cpu']['cpu_percent']} %")
            results["health"] = health_times(svc, args.health)
            _say(f"/health with {current:,} clients: median {results['health']['median_ms']} ms, max "
                 f"{results['health']['max_ms']} ms (reports {results['health']['clients_reported']} clients)")
            open_now = clients.stats()["open"]
            results["batches"] = [batch_to_all(clients, producer, topic, i, open_now) for i in range(args.batches)]
            results["rss_end_kb"] = rss_kb(pid)
            results["load_average_at_end"] = os.getloadavg()
        finally:
            producer.close()
            clients.close()
            svc.stop(timeout=30)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"raw results: {out}")
    print(f"plot: {plot([results], Path(args.plot))}")
    return 0


def plot(runs: list[dict[str, Any]], path: Path) -> str:
    """KB per client, /health and produce → last client against clients: medians over the runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_n: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        for level in run.get("levels", []):
            by_n.setdefault(level["clients"], []).append(level)
    ns = sorted(by_n)

    def med(values: list[Any]) -> float:
        return statistics.median(v for v in values if v is not None)
    kb = [med([x["kb_per_client"] for x in by_n[n]]) for n in ns]
    last = [med([b["last_ms"] for x in by_n[n] for b in x.get("batches", [])]) for n in ns]
    first = [med([b["first_ms"] for x in by_n[n] for b in x.get("batches", [])]) for n in ns]
    health = [med([t for x in by_n[n] for t in x.get("health", {}).get("ms", [])]) for n in ns]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(ns, kb, "o-")
    a.axhline(2.0, color="tab:red", ls=":", lw=1, label="target: 2 KB")
    a.set_ylim(0, max(max(kb) * 1.3, 2.5))
    a.set_xlabel("idle clients on one worker")
    a.set_ylabel("worker RSS per client (KiB)")
    a.set_title("Memory per idle client", fontsize=10)
    a.legend()
    a.grid(alpha=0.3)
    b.plot(ns, last, "o-", label="produce → last client has the batch")
    b.plot(ns, first, "^-", label="produce → first client")
    b.plot(ns, health, "s-", label="GET /health")
    b.axhline(100, color="tab:red", ls=":", lw=1, label="/health target: 100 ms")
    b.set_xlabel("idle clients on one worker")
    b.set_ylabel("ms (medians)")
    b.set_title("One batch to everyone, and /health", fontsize=10)
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
