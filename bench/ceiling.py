"""How many records/s one worker takes in (issue #15, "know the ceiling").

    python -m bench.ceiling [--quick] [--only tail|forward] [--repeat N] [--json PATH] [--plots DIR]

**Tail path** (poll, decode, replay ring, fan-out), one Gunicorn worker,
``FORWARD_ENABLED=false``, ``TAIL_MAX_LAG_S=0`` (the tail never sheds, so what
it takes in is what it can follow), the replay ring on (default 5,000 records:
with ``REPLAY_RECORDS=0`` and no client the tail would pause), default batching
(500 records or 50 ms), records of ~120 bytes, with 0, 100 and 1,000 idle
``bench.clients`` connected. For each client count:

1. *steps*: a producer thread in this process offers 2k, 5k, 10k, 20k, 30k, 40k records/s
   in turn (1.5 s warm-up, then a window); intake = the growth of ``/health``
   ``kafka.tail.records_in`` over the window, with the worker's CPU %. Below the
   ceiling intake = offered; above it intake flattens while the CPU sits at one core.
2. *drain*: the worker is stopped (SIGSTOP), a backlog of records is written,
   the worker resumes (SIGCONT) and the time it takes to read the backlog gives its
   records/s flat out with the producer no longer competing for the two cores.
   This is the ceiling quoted: the highest steady rate it could keep up with
   (a steady rate above it grows the lag without bound).

**Forward path**: ``bench.forward``'s set-up (pre-filled topic, a real Rotel
collector, the counting receiver), ``TAIL_ENABLED=false``, with
``WEB_CONCURRENCY`` 1 and 2: records/s from the first to the last record at the
receiver, and the CPU of every worker.

Plots (matplotlib, Agg) go to ``docs/ceiling-tail.png`` and ``docs/ceiling-forward.png``.
Everything binds to 127.0.0.1; every loop is bounded in count and time.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import forward
from bench.fanout import Clients, Producer
from bench.procstat import CpuMeter, MachineMeter, cpu_seconds, make_record, raise_nofile
from devstack.kafka import KafkaBroker
from devstack.service import ServiceProcess

ROOT = Path(__file__).resolve().parent.parent
TAIL_RECORD_BYTES = 120


@dataclass
class Sizes:
    clients: tuple[int, ...] = (0, 100, 1_000)
    rates: tuple[int, ...] = (2_000, 5_000, 10_000, 20_000, 30_000, 40_000)
    step_seconds: float = 5.0
    warmup_seconds: float = 1.5
    backlog: int = 200_000
    forward_records: int = 200_000
    forward_workers: tuple[int, ...] = (1, 2)


QUICK = Sizes(clients=(0, 100), rates=(2_000, 10_000), step_seconds=3.0, backlog=30_000, forward_records=30_000)


@dataclass
class Topic:
    """What ``bench.fanout.Producer`` needs: a broker and a topic."""

    kafka: KafkaBroker
    topic: str


def _say(text: str) -> None:
    print(f"  {text}", flush=True)


def _records_in(svc: ServiceProcess) -> int:
    health = svc.health()
    if health is None:
        raise RuntimeError("the service did not answer /health")
    return int(health["kafka"]["tail"].get("records_in", 0))


def _wait_idle(svc: ServiceProcess, timeout: float = 30.0) -> int:
    """Wait until the tail's intake stops growing (the backlog of a step is read)."""
    last, deadline = _records_in(svc), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _records_in(svc)
        if now == last:
            return now
        last = now
    return last


def tail_steps(svc: ServiceProcess, kafka: KafkaBroker, topic: str, pid: int, s: Sizes) -> list[dict[str, Any]]:
    steps = []
    for rate in s.rates:
        _wait_idle(svc)
        with Producer(Topic(kafka, topic), rate, TAIL_RECORD_BYTES, max_seconds=60) as producer:
            time.sleep(s.warmup_seconds)
            sent0, in0, t0 = producer.sent, _records_in(svc), time.monotonic()
            cpu, machine = CpuMeter(pid), MachineMeter()
            cpu.start()
            machine.start()
            time.sleep(s.step_seconds)
            sent1, in1, t1 = producer.sent, _records_in(svc), time.monotonic()
            c = cpu.stop()
            busy = machine.stop()
        step = {"offered": rate, "produced_per_s": round((sent1 - sent0) / (t1 - t0), 1),
                "intake_per_s": round((in1 - in0) / (t1 - t0), 1), "worker_cpu_percent": c["cpu_percent"],
                "machine_busy_percent": busy, "load_average": os.getloadavg()[0]}
        steps.append(step)
        _say(f"step {rate:,}/s: produced {step['produced_per_s']:,.0f}/s, intake {step['intake_per_s']:,.0f}/s, "
             f"worker CPU {c['cpu_percent']} %, machine {busy} %")
    return steps


def tail_drain(svc: ServiceProcess, kafka: KafkaBroker, topic: str, pid: int, backlog: int) -> dict[str, Any]:
    """SIGSTOP the worker, write ``backlog`` records, SIGCONT: how fast does it read them?"""
    start = _wait_idle(svc)
    os.kill(pid, signal.SIGSTOP)
    try:
        producer = kafka.producer(linger_ms=20, batch_size=512 * 1024, acks=1)
        began = time.monotonic()
        for seq in range(backlog):
            producer.send(topic, make_record(seq, TAIL_RECORD_BYTES))
        producer.flush(timeout=120)
        producer.close()
        fill_s = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGCONT)
    cpu0, t0, machine = cpu_seconds(pid), time.monotonic(), MachineMeter()
    machine.start()
    deadline, n = t0 + 120, start
    while time.monotonic() < deadline and n < start + backlog:
        time.sleep(0.1)
        n = _records_in(svc)
    # The last reading may come up to 0.1 s late: the rate errs low, by < 1 % at these sizes.
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    out = {"backlog": backlog, "fill_seconds": round(fill_s, 2), "read": n - start, "seconds": round(elapsed, 2),
           "records_per_s": round((n - start) / elapsed, 1), "worker_cpu_percent": round(100 * cpu / elapsed, 1),
           "records_per_cpu_s": round((n - start) / cpu, 1) if cpu else None,
           "machine_busy_percent": machine.stop(), "load_average": os.getloadavg()[0]}
    _say(f"drain {backlog:,}: {out['records_per_s']:,.0f} records/s, worker CPU {out['worker_cpu_percent']} %, "
         f"{out['records_per_cpu_s']:,.0f} per CPU-second, machine {out['machine_busy_percent']} %")
    return out


def run_tail(kafka: KafkaBroker, clients: Clients, n: int, s: Sizes, log_dir: Path) -> dict[str, Any]:
    topic = f"ceiling-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 3)
    svc = ServiceProcess({"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": topic, "FORWARD_ENABLED": "false",
                          "TAIL_MAX_LAG_S": "0", "ACCESS_LOG": "false", "LOG_LEVEL": "warning"},
                         workers=1, log_dir=log_dir)
    svc.start(timeout=60, ready=lambda h: h["kafka"]["tail"]["state"] == "ok")
    try:
        health = svc.health()
        assert health is not None
        pid = health["worker"]
        if n:
            conn = clients.connect(svc.port, n, group="idle", concurrency=256)
            _say(f"{conn['connected']:,} clients connected in {conn['seconds']} s")
        out = {"clients": n, "load_average_at_start": os.getloadavg()[0],
               "steps": tail_steps(svc, kafka, topic, pid, s), "drain": tail_drain(svc, kafka, topic, pid, s.backlog)}
        if n:
            out["client_stats"] = clients.call("stats", reset=True).get("idle")
        return out
    finally:
        if n:
            clients.call("close")
        svc.stop(timeout=30)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run_forward(kafka: KafkaBroker, workers: int, count: int, log_dir: Path) -> dict[str, Any]:
    """``bench.forward``'s ours-side, with ``workers`` Gunicorn workers; CPU summed over the workers."""
    from devstack.collector import RotelCollector

    topic = f"forward-{uuid.uuid4().hex[:8]}"
    prefill = forward.prefill(kafka, topic, count)
    load0 = os.getloadavg()[0]
    with forward.CountingReceiver() as rx, RotelCollector(rx.base_url, debug_log=False,
                                                          logs_batch_max_size=forward.ROTEL_BATCH_MAX,
                                                          log_dir=str(log_dir / "rotel")) as rotel:
        svc = ServiceProcess({"KAFKA_BROKER_URL": kafka.bootstrap, "KAFKA_TOPIC": topic,
                              "KAFKA_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}", "KAFKA_AUTO_OFFSET_RESET": "earliest",
                              "TAIL_ENABLED": "false", "FORWARD_ENABLED": "true",
                              "FORWARD_BATCH_SIZE": str(forward.FORWARD_BATCH), "OTLP_ENDPOINT": rotel.endpoint,
                              "ACCESS_LOG": "false", "LOG_LEVEL": "warning"}, workers=workers, log_dir=log_dir)
        cpu: dict[int, float] = {}
        # (time, records at the receiver, workers' CPU seconds), every 0.1 s: the steady part
        # of the run (20 % → 90 % of the records) leaves out start-up and a group rebalance.
        samples: list[tuple[float, int, float]] = []
        machine = MachineMeter()
        machine.start()
        began = time.monotonic()
        svc.launch()
        try:
            assert svc.proc is not None
            while time.monotonic() - began < 300 and rx.records < count:
                for pid in _children(svc.proc.pid):
                    try:
                        cpu[pid] = cpu_seconds(pid)
                    except (OSError, ValueError):
                        pass
                samples.append((time.monotonic(), rx.records, sum(cpu.values())))
                time.sleep(0.1)
            wall = time.monotonic() - began
        finally:
            busy = machine.stop()
            svc.stop(timeout=30)
        span = rx.last - rx.first
        total_cpu = sum(cpu.values())
        lo = next((x for x in samples if x[1] >= 0.2 * count), None)
        hi = next((x for x in samples if x[1] >= 0.9 * count), None)
        steady = (lo and hi and hi[0] > lo[0]) and {
            "records_per_s": round((hi[1] - lo[1]) / (hi[0] - lo[0]), 1),
            "worker_cpu_percent": round(100 * (hi[2] - lo[2]) / (hi[0] - lo[0]), 1)}
        out = {"workers": workers, "records": count, "prefill": prefill, "received": rx.records,
               "complete": rx.records >= count, "wall_seconds": round(wall, 2),
               "first_to_last_seconds": round(span, 3),
               "records_per_s_first_to_last": round(count / span, 1) if span else None,
               # A run too short for the 0.1 s samples to find a steady span: first → last instead.
               "steady": bool(steady),
               "records_per_s": steady["records_per_s"] if steady else (round(count / span, 1) if span else None),
               "worker_cpu_percent": steady["worker_cpu_percent"] if steady else (
                   round(100 * total_cpu / span, 1) if span else None),
               "worker_cpu_seconds": {str(k): round(v, 2) for k, v in cpu.items()},
               "records_per_cpu_s": round(count / total_cpu, 1) if total_cpu else None,
               "machine_busy_percent": busy, "load_average_at_start": load0, "load_average": os.getloadavg()[0],
               "distinct_seq": rx.distinct_seq()}
    _say(f"forward, {workers} worker(s): {out['records_per_s']} records/s steady (20-90 %), "
         f"{out['records_per_s_first_to_last']} first → last, workers' CPU {out['worker_cpu_percent']} % "
         f"(steady), {out['records_per_cpu_s']} per CPU-second (all), "
         f"{out['distinct_seq']:,} distinct, machine {busy} %")
    return out


# -- tables and plots ----------------------------------------------------------------------------

def _median(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def tables(results: dict[str, Any]) -> str:
    """Markdown tables: medians over the runs (steps per offered rate, drains, forward)."""
    lines = []
    tail = results.get("tail") or {}
    if tail:
        lines += ["| clients | offered /s | produced /s | taken in /s | worker CPU % |", "|---:|---:|---:|---:|---:|"]
        for n, runs in sorted(tail.items(), key=lambda kv: int(kv[0])):
            for i, step in enumerate(runs[0]["steps"]):
                same = [r["steps"][i] for r in runs]
                lines.append(f"| {int(n):,} | {step['offered']:,} | "
                             f"{_median([x['produced_per_s'] for x in same]):,.0f} | "
                             f"{_median([x['intake_per_s'] for x in same]):,.0f} | "
                             f"{_median([x['worker_cpu_percent'] for x in same])} |")
        lines += ["", "| clients | drain records/s (runs) | worker CPU % | records per worker CPU-second | "
                  "machine busy % | load avg |", "|---:|---:|---:|---:|---:|---:|"]
        for n, runs in sorted(tail.items(), key=lambda kv: int(kv[0])):
            d = [r["drain"] for r in runs]
            each = ", ".join(f"{x['records_per_s']:,.0f}" for x in d)
            lines.append(f"| {int(n):,} | {_median([x['records_per_s'] for x in d]):,.0f} ({each}) | "
                         f"{_median([x['worker_cpu_percent'] for x in d])} | "
                         f"{_median([x['records_per_cpu_s'] for x in d]):,.0f} | "
                         f"{_median([x['machine_busy_percent'] for x in d])} | "
                         f"{_median([x['load_average'] for x in d]):.1f} |")
    fwd = results.get("forward") or {}
    if fwd:
        lines += ["", "| workers | records/s, 20→90 % (runs) | first → last | workers' CPU % | "
                  "records per CPU-second | distinct | load avg |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for w, runs in sorted(fwd.items(), key=lambda kv: int(kv[0])):
            each = ", ".join(f"{r['records_per_s']:,.0f}" for r in runs if r["records_per_s"])
            lines.append(f"| {w} | {_median([r['records_per_s'] for r in runs]):,.0f} ({each}) | "
                         f"{_median([r['records_per_s_first_to_last'] for r in runs]):,.0f} | "
                         f"{_median([r['worker_cpu_percent'] for r in runs])} | "
                         f"{_median([r['records_per_cpu_s'] for r in runs]):,.0f} | "
                         f"{min(r['distinct_seq'] for r in runs):,} | "
                         f"{_median([r['load_average'] for r in runs]):.1f} |")
    return "\n".join(lines)



def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    tail = results.get("tail")
    if tail:
        fig, (a, c, b) = plt.subplots(1, 3, figsize=(16, 4.4))
        for n, runs in sorted(tail.items(), key=lambda kv: int(kv[0])):
            steps = [[r["steps"][i] for r in runs] for i in range(len(runs[0]["steps"]))]  # median per rate
            line, = a.plot([_median([x["intake_per_s"] for x in same]) for same in steps],
                           [_median([x["worker_cpu_percent"] for x in same]) for same in steps], "o-",
                           label=f"{int(n):,} clients")
            drains = [r["drain"] for r in runs]
            a.plot([d["records_per_s"] for d in drains], [d["worker_cpu_percent"] for d in drains], "*",
                   ms=13, color=line.get_color())
        a.set_xlabel("records/s taken in by the tail")
        a.set_ylabel("worker CPU % (100 = one core)")
        a.set_title("Tail: worker CPU against records/s taken in\n"
                    "(o produce-rate steps, medians; ★ each backlog drain)", fontsize=10)
        a.axhline(100, color="grey", lw=0.8, ls=":")
        a.legend()
        a.grid(alpha=0.3)
        ns = sorted(int(n) for n in tail)
        # CPU against clients at a fixed rate, where every client count kept up (taken in ≥ 95 % of produced).
        for i, step in enumerate(tail[str(ns[0])][0]["steps"]):
            points = []
            for n in ns:
                same = [r["steps"][i] for r in tail[str(n)]]
                if _median([x["intake_per_s"] for x in same]) >= 0.95 * _median([x["produced_per_s"] for x in same]):
                    points.append((n, _median([x["worker_cpu_percent"] for x in same])))
            if len(points) == len(ns):
                c.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{step['offered']:,} records/s")
        c.set_xscale("symlog", linthresh=100)
        c.set_xticks(ns, [f"{n:,}" for n in ns])
        c.set_xlabel("idle clients connected")
        c.set_ylabel("worker CPU % (100 = one core)")
        c.set_title("Tail: worker CPU against clients\n(rates every client count kept up with; medians)", fontsize=10)
        c.legend()
        c.grid(alpha=0.3)
        ceil = [statistics.median(r["drain"]["records_per_s"] for r in tail[str(n)]) for n in ns]
        per_cpu = [statistics.median(r["drain"]["records_per_cpu_s"] for r in tail[str(n)]) for n in ns]
        xs = range(len(ns))
        b.bar([x - 0.2 for x in xs], ceil, 0.4, label="records/s (drain of a backlog)")
        b.bar([x + 0.2 for x in xs], per_cpu, 0.4, label="records per worker CPU-second")
        b.set_xticks(list(xs), [f"{n:,}" for n in ns])
        b.set_xlabel("idle clients connected")
        b.set_ylabel("records/s")
        b.set_title("Tail ceiling against clients")
        b.legend()
        b.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        path = out_dir / "ceiling-tail.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    fwd = results.get("forward")
    if fwd:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        ws = sorted(int(w) for w in fwd)
        rate = [statistics.median(r["records_per_s"] for r in fwd[str(w)]) for w in ws]
        cpu = [statistics.median(r["worker_cpu_percent"] for r in fwd[str(w)]) for w in ws]
        lo = [rate[i] - min(r["records_per_s"] for r in fwd[str(w)]) for i, w in enumerate(ws)]
        hi = [max(r["records_per_s"] for r in fwd[str(w)]) - rate[i] for i, w in enumerate(ws)]
        ax.errorbar(ws, rate, yerr=[lo, hi], fmt="o-", capsize=4,
                    label="records/s, 20 → 90 % at the collector (median, range)")
        ax.set_ylim(0, max(rate) * 1.4)
        ax.set_xlim(0.7, 2.3)
        ax.set_xticks(ws)
        ax.set_xlabel("Gunicorn workers (WEB_CONCURRENCY)")
        ax.set_ylabel("records/s")
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(ws, cpu, "s--", color="tab:red", label="workers' CPU %, summed (200 = both cores)")
        ax2.set_ylabel("CPU %")
        ax2.set_ylim(0, 210)
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(lines, [str(x.get_label()) for x in lines], loc="upper center", fontsize=8)
        ax.set_title("Forward path on 2 shared cores", fontsize=10)
        fig.tight_layout()
        path = out_dir / "ceiling-forward.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("tail", "forward"), action="append")
    parser.add_argument("--repeat", type=int, default=1, help="drain and forward runs per point (medians plotted)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "ceiling.json"))
    parser.add_argument("--plots", default=str(ROOT / "docs"), help="folder for the PNG plots")
    parser.add_argument("--replot", action="store_true", help="only redraw the plots from --json")
    args = parser.parse_args(argv)
    out = Path(args.json)
    if args.replot:
        results = json.loads(out.read_text())
        print(tables(results))
        print("\n".join(plot(results, Path(args.plots))))
        return 0
    raise_nofile()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    s = QUICK if args.quick else Sizes()
    which = args.only or ["tail", "forward"]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ceiling-"))
    results: dict[str, Any] = {"command": " ".join(["python -m bench.ceiling", *(argv or sys.argv[1:])]),
                               "sizes": s.__dict__, "load_average_at_start": os.getloadavg(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"bench.ceiling: {', '.join(which)}; logs in {log_dir}", flush=True)
    with KafkaBroker(log_dir / "kafka") as kafka:
        if "tail" in which:
            results["tail"] = {}
            clients = Clients(log_dir)
            try:
                for n in s.clients:
                    for i in range(args.repeat):
                        print(f"[tail, {n:,} clients, {i + 1}/{args.repeat}] load {os.getloadavg()[0]:.2f}", flush=True)
                        results["tail"].setdefault(str(n), []).append(run_tail(kafka, clients, n, s, log_dir))
            finally:
                clients.close()
        if "forward" in which:
            results["forward"] = {}
            for i in range(args.repeat):
                for w in s.forward_workers:
                    print(f"[forward, {w} worker(s), {i + 1}/{args.repeat}] load {os.getloadavg()[0]:.2f}", flush=True)
                    results["forward"].setdefault(str(w), []).append(run_forward(kafka, w, s.forward_records, log_dir))
    results["load_average_at_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"raw results: {out}\n")
    print(tables(results))
    for path in plot(results, Path(args.plots)):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
