"""The peer server: the same live tail built on asyncio ``websockets`` (17.x).

    python -m bench.peer --port P --brokers HOST:PORT --topic T [--batch-size N --batch-interval-ms MS]

A kafka-python ``KafkaConsumer`` in a thread assigns itself every partition of
the topic from the end (no group, no commits, like the service's tail reader),
batches records with the service's own ``logger.batcher.Batcher`` (``--batch-size``
records, or ``--batch-interval-ms`` after the poll before the one that brought the
first, polling at most the room left), decodes
them with the service's own ``logger.records.decode`` and encodes the batch once
with orjson as ``{"type":"logs","records":[...]}``. The frame goes to the event
loop with ``loop.call_soon_threadsafe`` and out with ``websockets.broadcast()``.
At most ``--inflight`` batches wait for the loop: the reader slows down rather
than queueing without bound when the loop is saturated (as the service's reader does).
Its fetch settings are kafka-python's defaults: the service's tuned tail fetches
(``logger.reader``, ``logger.tail_reader``) are part of what is measured.

Clients get ``{"type":"hello",...}`` first and may send ``{"type":"ping"}``; the
server pings every 25 s (as the service does). ``GET /health`` answers JSON with
the pid, the client count and the tail state. Binds 127.0.0.1 only; SIGTERM or
SIGINT stops it.

Per-message compression is off (the service has none, and the load clients never
offer it). Note ``broadcast()`` applies no backpressure: a client that stops
reading gets its messages queued in its transport until the ping timeout closes it.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import os
import signal
import threading
import time
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bench.procstat import raise_nofile
from logger.batcher import Batcher
from logger.records import decode


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clients: set[ServerConnection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop = threading.Event()
        self.inflight = threading.BoundedSemaphore(args.inflight)
        self.tail_state = "starting"
        self.tail_error = ""
        self.counters = {"connections": 0, "batches": 0, "records_in": 0, "records_delivered": 0}
        self.started = time.time()
        self.hello = orjson.dumps({"type": "hello", "server": "peer-websockets", "topic": args.topic,
                                   "worker": os.getpid(), "ping_interval_s": args.ping_interval})

    # -- Kafka, in a thread ---------------------------------------------------------

    def tail(self) -> None:
        args = self.args
        try:
            consumer = KafkaConsumer(bootstrap_servers=args.brokers.split(","), group_id=None,
                                     enable_auto_commit=False, client_id=f"peer-tail-{os.getpid()}")
            parts = [TopicPartition(args.topic, p) for p in sorted(consumer.partitions_for_topic(args.topic) or ())]
            if not parts:
                raise RuntimeError(f"topic {args.topic!r} not found")
            consumer.assign(parts)
            consumer.seek_to_end()
            for tp in parts:
                consumer.position(tp)
        except Exception as exc:  # noqa: BLE001 - shown in /health
            self.tail_state, self.tail_error = "degraded", repr(exc)
            return
        self.tail_state = "ok"
        batcher = Batcher(args.batch_size, args.batch_interval_ms / 1000)  # the service's policy, and class
        try:
            last_poll = time.monotonic()
            while not self.stop.is_set():
                polled = consumer.poll(timeout_ms=int(batcher.time_left() * 1000) or 1, max_records=batcher.room)
                for tp, messages in polled.items():
                    self.counters["records_in"] += len(messages)
                    batcher.add((decode(m.value, topic=tp.topic, partition=tp.partition, offset=m.offset,
                                        kafka_timestamp_ms=m.timestamp) for m in messages), since=last_poll)
                last_poll = time.monotonic()
                if batcher.ready():
                    self.hand_over(batcher.take())
        finally:
            consumer.close(autocommit=False)

    def hand_over(self, batch: list[Any]) -> None:
        self.counters["batches"] += 1
        if not self.clients:  # as the service: nothing to encode for nobody
            return
        frame = orjson.dumps({"type": "logs", "records": [r.to_client() for r in batch]})
        while not self.inflight.acquire(timeout=0.5):  # bounded hand-off to the loop
            if self.stop.is_set():
                return
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.publish, frame, len(batch))

    # -- the event loop ---------------------------------------------------------------

    def publish(self, frame: bytes, records: int) -> None:
        try:
            broadcast(self.clients, frame, text=True)
            self.counters["records_delivered"] += records * len(self.clients)
        finally:
            self.inflight.release()

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(self.hello, text=True)
        self.clients.add(ws)
        self.counters["connections"] += 1
        try:
            async for message in ws:
                try:
                    kind = orjson.loads(message).get("type")
                except (orjson.JSONDecodeError, AttributeError):
                    kind = None
                reply = {"type": "pong"} if kind == "ping" else {"type": "error", "error": "not understood"}
                await ws.send(orjson.dumps(reply), text=True)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(ws)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path != "/health":
            return None  # go on with the WebSocket handshake
        body = orjson.dumps({"status": "ok", "worker": os.getpid(), "clients": len(self.clients),
                             "uptime_seconds": round(time.time() - self.started, 3),
                             "kafka": {"tail": {"state": self.tail_state, "error": self.tail_error,
                                                **self.counters}}})
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                           ("Connection", "close")])
        return Response(http.HTTPStatus.OK, "OK", headers, body)

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, done.set)
        async with serve(self.handler, "127.0.0.1", self.args.port, compression=None,
                         process_request=self.process_request, ping_interval=self.args.ping_interval,
                         ping_timeout=self.args.ping_interval, backlog=4096, close_timeout=2):
            reader = threading.Thread(target=self.tail, name="kafka-tail", daemon=True)
            reader.start()
            await done.wait()
            self.stop.set()
        reader.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batch-interval-ms", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=8, help="batches waiting for the loop, at most")
    parser.add_argument("--ping-interval", type=float, default=25.0)
    args = parser.parse_args(argv)
    raise_nofile()
    asyncio.run(Peer(args).run())


if __name__ == "__main__":
    main()
