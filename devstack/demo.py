"""``python -m devstack.demo`` (``make demo``): the whole stack with synthetic logs, and the viewer.

Starts what ``make run`` starts -- a local Kafka and a Rotel collector unless
``KAFKA_BROKER_URL`` / ``OTLP_ENDPOINT`` point elsewhere, then the service
under Gunicorn -- prints the viewer's URL, and sends realistic logs to the
topic until Ctrl-C, which stops everything it started.

The logs come from five services (gateway, auth, orders, payments, search),
each writing its own JSON shape (``ts`` in epoch ms, ``@timestamp``,
``levelname``, ``service.name``, ``app``, a ``service`` object ...), so the
service's normalisation shows. Levels are weighted (mostly info, a little
warn and error, rare fatal), a payments incident bursts now and then (errors
cascade to orders and the gateway), and about one message in 150 is not JSON
at all (a panic, a traceback line, a half-written object). The rate is
bounded: ``--rate`` on average, ``--max-rate`` during a burst.

``python -m devstack.demo generate`` only generates, to the broker of a
running ``make run`` (or ``KAFKA_BROKER_URL``/``KAFKA_TOPIC``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timezone

SERVICES = ("gateway", "auth", "orders", "payments", "search")
LEVEL_WEIGHTS = {"trace": 3, "debug": 14, "info": 66, "warn": 11, "error": 5.5, "fatal": 0.5}
MALFORMED_RATE = 1 / 150

ROUTES = ("/api/orders", "/api/orders/{id}", "/api/cart", "/api/search", "/api/payments/{id}", "/api/session",
          "/api/products/{id}", "/healthz")
CARRIERS = ("DHL", "UPS", "PostNL", "GLS")
PROVIDERS = ("stripe", "adyen", "paypal")
DECLINES = ("insufficient funds", "card expired", "suspected fraud", "3-D Secure failed")
QUERIES = ("running shoes", "usb-c cable", "espresso machine", "rain jacket", "desk lamp", "noise cancelling",
           "kids bike", "mechanical keyboard", "yoga mat", "coffee beans")
MALFORMED = (
    b"panic: runtime error: invalid memory address or nil pointer dereference",
    b"Traceback (most recent call last):",
    b'  File "/app/worker.py", line 88, in handle',
    b"GC pause (G1 Evacuation Pause) 143ms",
    b'{"level": "info", "service": "orders", "message": "order A-10',
    b"\xff\xfe binary garbage \x00\x01",
)


class DemoLogs:
    """Makes one synthetic log value at a time; deterministic for a given seed."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.sequence = 0
        self.incident: str | None = None

    # -- helpers ------------------------------------------------------------------------

    def _id(self, prefix: str, digits: int = 5) -> str:
        return f"{prefix}-{self.rng.randrange(10 ** (digits - 1), 10 ** digits)}"

    def _trace(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _level(self) -> str:
        if self.incident:
            weights = {"trace": 1, "debug": 5, "info": 40, "warn": 20, "error": 32, "fatal": 2}
        else:
            weights = LEVEL_WEIGHTS
        return self.rng.choices(list(weights), weights=list(weights.values()))[0]

    def _service(self) -> str:
        weights = (30, 12, 22, 14, 22) if not self.incident else (30, 5, 20, 40, 5)
        return self.rng.choices(SERVICES, weights=weights)[0]

    # -- one record ---------------------------------------------------------------------

    def value(self, now: float | None = None) -> tuple[bytes, bytes]:
        """(key, value): the key is the service, so each service keeps its order in a partition."""
        self.sequence += 1
        now = time.time() if now is None else now
        if self.rng.random() < MALFORMED_RATE:
            return b"legacy-worker", self.rng.choice(MALFORMED)
        service = self._service()
        level = self._level()
        message, attributes = getattr(self, f"_{service}")(level)
        return service.encode(), json.dumps(self._shape(service, level, message, attributes, now)).encode()

    def _shape(self, service: str, level: str, message: str, attributes: dict, now: float) -> dict:
        iso = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if service == "gateway":  # nginx-ish JSON access logs
            return {"ts": int(now * 1000), "level": level.upper(), "service": service, "msg": message, **attributes}
        if service == "auth":  # Java: logback JSON encoder
            java = {"warn": "WARNING", "fatal": "FATAL"}.get(level, level.upper())
            return {"@timestamp": iso, "severity": java, "service.name": service, "message": message,
                    "logger": "com.example.auth.SessionService", **attributes}
        if service == "payments":  # Python logging
            python = {"warn": "WARNING", "fatal": "CRITICAL", "trace": "DEBUG"}.get(level, level.upper())
            return {"time": iso, "levelname": python, "app": service, "message": message, **attributes}
        if service == "search":
            return {"timestamp": iso, "level": level, "service": {"name": service, "version": "2.14.1"},
                    "message": message, **attributes}
        return {"timestamp": iso, "level": level, "service": service, "message": message, **attributes}

    def _gateway(self, level: str) -> tuple[str, dict]:
        route = self.rng.choice(ROUTES)
        path = route.replace("{id}", str(self.rng.randrange(1000, 99999)))
        method = "GET" if self.rng.random() < 0.7 else self.rng.choice(("POST", "PUT", "DELETE"))
        ms = round(self.rng.lognormvariate(3.0, 0.8), 1)
        status = 200
        message = f"{method} {path} {status} {ms}ms"
        if level in ("warn",):
            status = self.rng.choice((404, 429, 499))
            message = f"{method} {path} {status} {ms}ms" if status != 429 else \
                f"rate limit reached for client {self._id('key', 4)} on {route}"
        elif level in ("error", "fatal"):
            status = self.rng.choice((502, 503, 504))
            upstream = "payments" if self.incident else self.rng.choice(("orders", "payments", "search"))
            ms = round(self.rng.uniform(800, 5000), 1)
            message = f"upstream {upstream} answered {status} for {method} {path} after {ms}ms"
        elif level in ("debug", "trace"):
            message = f"route {route} matched; forwarding to {self.rng.choice(('orders', 'search', 'auth'))}"
        return message, {"http": {"method": method, "route": route, "status_code": status},
                         "duration_ms": ms, "client_ip": f"203.0.113.{self.rng.randrange(1, 255)}",
                         "trace_id": self._trace()}

    def _auth(self, level: str) -> tuple[str, dict]:
        user = self.rng.randrange(1000, 9999)
        attributes = {"user": {"id": user}, "method": self.rng.choice(("password", "sso", "passkey"))}
        message = {
            "trace": f"loading session for user {user}",
            "debug": f"session cache hit for user {user}",
            "info": self.rng.choice((f"user {user} signed in", f"token refreshed for user {user}",
                                     f"user {user} signed out")),
            "warn": f"failed sign-in for user {user} ({self.rng.randrange(2, 6)} attempts in 5 min)",
            "error": "JWKS refresh failed: connection reset by peer",
            "fatal": "signing key missing: refusing to issue tokens",
        }[level]
        return message, attributes

    def _orders(self, level: str) -> tuple[str, dict]:
        order = self._id("A")
        items = self.rng.randrange(1, 7)
        total = round(self.rng.uniform(9, 480), 2)
        attributes: dict = {"order": {"id": order, "items": items, "total_eur": total}}
        if level == "warn":
            ms = self.rng.randrange(400, 2500)
            attributes["db"] = {"statement": "SELECT * FROM orders WHERE customer_id = $1", "ms": ms}
            return f"slow query on orders_by_customer: {ms} ms", attributes
        if level in ("error", "fatal"):
            reason = "payment declined" if self.incident else self.rng.choice(
                ("payment declined", "inventory reservation timed out", "address validation failed"))
            return f"order {order} failed: {reason}", attributes
        return {
            "trace": f"pricing rules evaluated for {order}",
            "debug": f"cart {self._id('C')} recalculated ({items} items)",
            "info": self.rng.choice((f"order {order} created ({items} items, {total} EUR)",
                                     f"order {order} shipped via {self.rng.choice(CARRIERS)}",
                                     f"order {order} confirmed")),
        }[level], attributes

    def _payments(self, level: str) -> tuple[str, dict]:
        payment = self._id("P", 6)
        amount = round(self.rng.uniform(5, 600), 2)
        provider = self.rng.choice(PROVIDERS)
        attributes = {"payment": {"id": payment, "amount_eur": amount, "provider": provider}}
        message = {
            "trace": f"provider {provider} request signed",
            "debug": f"idempotency key {self._trace()[:12]} reserved",
            "info": f"payment {payment} authorized: {amount} EUR via {provider}",
            "warn": f"payment {payment} retried: {provider} timed out after 3000 ms",
            "error": (f"payment {payment} failed: {provider} unavailable (circuit open)" if self.incident
                      else f"payment {payment} declined: {self.rng.choice(DECLINES)}"),
            "fatal": "ledger write failed: no space left on device (/var/lib/ledger)",
        }[level]
        return message, attributes

    def _search(self, level: str) -> tuple[str, dict]:
        query = self.rng.choice(QUERIES)
        ms = round(self.rng.lognormvariate(2.5, 0.9), 1)
        hits = self.rng.randrange(0, 2400)
        attributes = {"query": query, "hits": hits, "duration_ms": ms}
        message = {
            "trace": f"scoring {hits} candidates for {query!r}",
            "debug": f"index shard {self.rng.randrange(0, 8)} refreshed",
            "info": f"query {query!r} returned {hits} hits in {ms} ms",
            "warn": f"query {query!r} took {ms * 40:.0f} ms (slow)",
            "error": f"shard {self.rng.randrange(0, 8)} unavailable: partial results for {query!r}",
            "fatal": "index corrupted: segment checksum mismatch",
        }[level]
        return message, attributes

    def values(self, count: int, start: float | None = None, spacing_s: float = 0.05) -> list[tuple[bytes, bytes]]:
        """``count`` values with times ``spacing_s`` apart (for tests and screenshots)."""
        begin = time.time() - count * spacing_s if start is None else start
        return [self.value(begin + i * spacing_s) for i in range(count)]


def schedule(rng: random.Random, rate: float, max_rate: float, burst_every_s: float
             ) -> Iterator[tuple[float, str | None]]:
    """Per 100 ms tick: (records to send, incident or None). Bursts last 2-5 s at up to ``max_rate``."""
    next_burst = time.monotonic() + rng.expovariate(1 / burst_every_s) if burst_every_s > 0 else float("inf")
    burst_until = 0.0
    while True:
        now = time.monotonic()
        if now >= next_burst:
            burst_until = now + rng.uniform(2, 5)
            next_burst = burst_until + rng.expovariate(1 / burst_every_s)
        if now < burst_until:
            yield min(max_rate, rate * rng.uniform(5, 12)) / 10, "payments provider outage"
        else:
            yield max(0.0, rng.gauss(rate, rate / 4)) / 10, None


def generate(send: Callable[[bytes, bytes], None], *, rate: float = 25, max_rate: float = 400,
             burst_every_s: float = 25, seed: int | None = None, duration_s: float = 0,
             report: Callable[[str], None] = print) -> int:
    """Send synthetic logs until Ctrl-C (or ``duration_s``); return how many were sent."""
    logs = DemoLogs(seed)
    rng = random.Random(None if seed is None else seed + 1)
    sent = 0
    credit = 0.0
    started = time.monotonic()
    next_report = started + 10
    incident = None
    for per_tick, now_incident in schedule(rng, rate, max_rate, burst_every_s):
        tick = time.monotonic()
        if duration_s and tick - started >= duration_s:
            break
        if now_incident != incident:
            incident = logs.incident = now_incident
            report(f"devstack.demo: {'burst: ' + incident if incident else 'back to normal'}")
        credit += per_tick
        while credit >= 1:
            send(*logs.value())
            credit -= 1
            sent += 1
        if tick >= next_report:
            report(f"devstack.demo: {sent:,} records sent")
            next_report = tick + 10
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    return sent


def _producer(brokers: str):  # noqa: ANN202 - kafka-python has no types
    from kafka import KafkaProducer
    return KafkaProducer(bootstrap_servers=brokers.split(","), linger_ms=20, acks=1)


def run_generator(brokers: str, topic: str, args: argparse.Namespace) -> int:
    producer = _producer(brokers)
    try:
        return generate(lambda key, value: producer.send(topic, key=key, value=value), rate=args.rate,
                        max_rate=args.max_rate, burst_every_s=args.burst_every, seed=args.seed,
                        duration_s=args.duration)
    finally:
        producer.flush(timeout=5)
        producer.close(timeout=5)


def demo(args: argparse.Namespace) -> int:
    from devstack.__main__ import STATE, start_dependencies
    from devstack.service import ServiceProcess

    env = dict(os.environ)
    port = int(env.get("PORT") or args.port)
    env["PORT"] = str(port)
    env.setdefault("ACCESS_LOG", "false")
    log_dir = STATE.parent / "demo"
    log_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops what we started, as Ctrl-C does
    with ExitStack() as stack:
        try:
            topic = start_dependencies(stack, env)
            service = ServiceProcess(env, port=port, graceful_timeout=5, log_dir=log_dir)
            stack.callback(service.stop)
            print(f"devstack.demo: starting the service on port {port} (log: {service.log_path}) ...", flush=True)
            service.start(timeout=60)
            print(f"\n    Live viewer:  http://localhost:{port}/viewer\n\n"
                  f"devstack.demo: sending synthetic logs to {topic!r} at ~{args.rate:g}/s "
                  f"(bursts up to {args.max_rate:g}/s); Ctrl-C stops everything.", flush=True)
            sent = run_generator(env["KAFKA_BROKER_URL"], topic, args)
            print(f"devstack.demo: done, {sent:,} records sent")
        except KeyboardInterrupt:
            print("\ndevstack.demo: stopping ...", flush=True)
        except (RuntimeError, TimeoutError) as error:
            print(f"devstack.demo: {error}", file=sys.stderr)
            return 1
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def generate_only(args: argparse.Namespace) -> int:
    from devstack.__main__ import STATE
    settings = dict(line.split("=", 1) for line in STATE.read_text().splitlines()) if STATE.exists() else {}
    brokers = os.environ.get("KAFKA_BROKER_URL") or settings.get("KAFKA_BROKER_URL", "localhost:9092")
    topic = os.environ.get("KAFKA_TOPIC") or settings.get("KAFKA_TOPIC", "logs")
    print(f"devstack.demo: sending synthetic logs to {topic!r} at {brokers}; Ctrl-C stops", flush=True)
    try:
        sent = run_generator(brokers, topic, args)
    except KeyboardInterrupt:
        return 0
    print(f"devstack.demo: {sent:,} records sent")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=("stack", "generate"), default="stack",
                        help="stack (default): Kafka, collector, service and generator; generate: logs only")
    parser.add_argument("--rate", type=float, default=25, help="records per second on average (default 25)")
    parser.add_argument("--max-rate", type=float, default=400, help="records per second at most (default 400)")
    parser.add_argument("--burst-every", type=float, default=25,
                        help="mean seconds between bursts; 0 for none (default 25)")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: never)")
    parser.add_argument("--seed", type=int, default=None, help="make the logs repeatable")
    parser.add_argument("--port", type=int, default=6006, help="service port when PORT is unset (default 6006)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.max_rate < args.rate:
        parser.error("need 0 < --rate <= --max-rate")
    return generate_only(args) if args.mode == "generate" else demo(args)


if __name__ == "__main__":
    sys.exit(main())

