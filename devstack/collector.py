"""Real OTLP collector harness for tests and local development.

Two pieces, usable together or alone:

* ``OtlpReceiver`` -- an in-process OTLP/HTTP logs endpoint (``/v1/logs``) on
  127.0.0.1 that decodes ``ExportLogsServiceRequest`` with the official
  ``opentelemetry-proto`` classes and keeps every accepted LogRecord, flattened
  with its resource attributes. Its answers can be scripted (``responses``,
  ``fail_next``, ``delay``) to test how a sender handles 429/503/400/slowness.
  It can serve HTTPS with a certificate of :mod:`devstack.certs` (``tls``) and
  refuse, with 401, requests that lack a header (``required_headers``), as a
  collector behind an authenticating gateway does.
* ``RotelCollector`` -- the real Rotel collector binary shipped by the ``rotel``
  PyPI package, on free loopback ports, whose OTLP exporter (HTTP/protobuf)
  forwards to an ``OtlpReceiver``. Tests send to the real collector and assert
  field by field on what came out of it; no log scraping involved.

    with OtlpReceiver() as rx, RotelCollector(rx) as rotel:
        post_logs(rotel.endpoint)          # the service under test
        records = rx.wait_for(5)
"""
from __future__ import annotations

import gzip
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

# Ports below the ephemeral range: a sender reconnecting in a loop to a stopped
# receiver/collector can never self-connect to them (see devstack/ports.py).
from .certs import TlsFiles
from .children import die_with_parent
from .ports import free_port, free_ports

LOGS_PATH = "/v1/logs"


def any_value(v: AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` to the plain Python value it carries."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class Reply:
    """One scripted answer of the receiver (default: accept)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # None -> empty ExportLogsServiceResponse on 2xx, b"" otherwise
    delay: float = 0.0  # seconds to wait before answering this one request


@dataclass
class RequestInfo:
    """What the receiver saw for one HTTP request, accepted or not."""

    path: str
    headers: dict[str, str]
    status: int
    records: int  # LogRecords decoded from the body (0 if undecodable)
    error: str | None = None


class OtlpReceiver:
    """In-process OTLP/HTTP logs receiver on 127.0.0.1 (thread-safe).

    The port is chosen at the first start() and kept, so stop() + start()
    simulates a collector outage at a fixed address.

    Records are kept only for requests answered 2xx -- like a real collector, a
    rejected request was not received, so a sender that retries does not show
    up twice. Every request, accepted or not, is in ``request_log``. With a
    ``delay`` longer than the sender's timeout the records are still kept
    (processed, answer lost -- as with a real collector), so a retry
    duplicates them: that is what at-least-once looks like.
    """

    def __init__(self, port: int = 0, path: str = LOGS_PATH, *, tls: TlsFiles | None = None,
                 required_headers: dict[str, str] | None = None) -> None:
        self.path = path
        self._port = port
        self.tls = tls  # serve HTTPS with tls.chain_file / tls.key_file
        # Lower-case name -> exact value; a request without them is answered 401.
        self.required_headers = {k.lower(): v for k, v in (required_headers or {}).items()}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.started = 0
        self._records: list[dict[str, Any]] = []
        self._exports: list[ExportLogsServiceRequest] = []
        self.request_log: list[RequestInfo] = []
        self.tls_errors: list[str] = []  # failed TLS handshakes, as the server saw them
        # Scripted answers, consumed one per request; empty -> Reply().
        self.responses: deque[Reply] = deque()
        self.delay: float = 0.0  # applied to every request (plus Reply.delay)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> OtlpReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real collectors do

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner._conns.add(self.connection)

            def finish(self) -> None:
                with owner._lock:
                    owner._conns.discard(self.connection)
                super().finish()

            def handle(self) -> None:
                try:
                    super().handle()
                except ssl.SSLError as exc:  # a client that refused our certificate, say
                    with owner._changed:
                        owner.tls_errors.append(str(exc))
                        owner._changed.notify_all()

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                owner._handle(self)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self._stopping.clear()
        self._port = self._port or free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.chain_file, self.tls.key_file)
            # The handshake then runs in each handler thread (on the first read), so a
            # client that fails it never holds up the accepting thread.
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # cut short any scripted delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # shutdown() only stops accepting: handler threads would go on serving
        # kept-alive connections, so a "stopped" receiver would still answer.
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (what Rotel's OTLP exporter wants); ``https`` with ``tls``."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    @property
    def endpoint(self) -> str:
        """Full URL of the logs path, for OTLP/HTTP senders."""
        return self.base_url + self.path

    # -- scripting ---------------------------------------------------------
    def fail_next(self, n: int, status: int = 503, retry_after: str | float | None = None, delay: float = 0.0) -> None:
        """Answer the next ``n`` requests with ``status`` (records are not kept)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self.responses.extend(Reply(status, dict(headers), None, delay) for _ in range(n))

    # -- observation -------------------------------------------------------
    @property
    def requests(self) -> int:
        """Number of HTTP requests received (any status)."""
        with self._lock:
            return len(self.request_log)

    @property
    def accepted(self) -> int:
        with self._lock:
            return sum(1 for r in self.request_log if 200 <= r.status < 300)

    def records(self) -> list[dict[str, Any]]:
        """Accepted LogRecords, flattened, in arrival order."""
        with self._lock:
            return list(self._records)

    def exports(self) -> list[ExportLogsServiceRequest]:
        """The accepted requests as decoded protobuf messages."""
        with self._lock:
            return list(self._exports)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` records arrived; return all of them.

        Raises ``TimeoutError`` (with what did arrive) at the deadline.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._records) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"receiver got {len(self._records)}/{count} records in {timeout}s "
                        f"({len(self.request_log)} requests: {[r.status for r in self.request_log]})"
                    )
                self._changed.wait(left)
            return list(self._records)

    def wait_for_matching(self, predicate: Callable[[dict[str, Any]], bool], count: int,
                          timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until ``count`` accepted records satisfy ``predicate``; return those records.

        The receiver is shared by a whole test session, so tests pick their
        own records out (by a run id attribute, say).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self._records if predicate(r)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
        if len(found) < count:
            raise TimeoutError(f"receiver got {len(found)}/{count} matching records in {timeout}s")
        return found

    def wait_started(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` requests have arrived, answered or not (an export in flight)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.started < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"receiver saw {self.started}/{count} requests start in {timeout}s")
                self._changed.wait(left)

    def wait_requests(self, count: int, timeout: float = 10.0) -> list[RequestInfo]:
        """Wait until ``count`` requests (any status) arrived; for retry tests."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.request_log) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"receiver got {len(self.request_log)}/{count} requests in {timeout}s")
                self._changed.wait(left)
            return list(self.request_log)

    def clear(self) -> None:
        """Forget records and requests, and drop scripted answers."""
        with self._lock:
            self._records.clear()
            self._exports.clear()
            self.request_log.clear()
            self.responses.clear()
            self.delay = 0.0

    # -- request handling --------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            reply = self.responses.popleft() if self.responses else Reply()
            delay = self.delay + reply.delay
            self.started += 1  # seen, though not yet answered (a delayed reply is "in flight")
            self._changed.notify_all()
        error: str | None = None
        req: ExportLogsServiceRequest | None = None
        status = reply.status
        missing = [name for name, value in self.required_headers.items() if headers.get(name) != value]
        if h.path.split("?", 1)[0] != self.path:
            status, error = 404, f"unknown path {h.path}"
        elif missing:
            status, error = 401, f"missing or wrong header {', '.join(missing)}"
        elif "protobuf" not in headers.get("content-type", ""):
            # Only binary protobuf: OTLP/JSON has hex ids that proto JSON parsing would get wrong.
            status, error = 415, f"unsupported content-type {headers.get('content-type')!r}"
        else:
            try:
                req = ExportLogsServiceRequest.FromString(_decompress(body, headers.get("content-encoding", "")))
            except Exception as exc:  # any decode failure is the sender's bug: 400, as a collector would
                status, error = 400, f"undecodable body: {exc!r}"
        n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs) if req else 0
        if delay > 0 and self._stopping.wait(delay):
            return  # stopped meanwhile: drop the connection, keep nothing
        with self._changed:
            self.request_log.append(RequestInfo(h.path, headers, status, n, error))
            if req is not None and 200 <= status < 300:
                self._exports.append(req)
                self._records.extend(_flatten(req, len(self._exports) - 1))
            self._changed.notify_all()
        if reply.body is not None and error is None:
            out = reply.body
        elif 200 <= status < 300:
            out = ExportLogsServiceResponse().SerializeToString()
        else:
            out = (error or "").encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/x-protobuf" if 200 <= status < 300 else "text/plain")
        h.send_header("Content-Length", str(len(out)))
        for k, v in reply.headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(out)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding in ("", "identity"):
        return body
    raise ValueError(f"unsupported content-encoding {encoding!r}")


def _flatten(req: ExportLogsServiceRequest, batch: int) -> list[dict[str, Any]]:
    out = []
    for rl in req.resource_logs:
        resource = _attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                out.append(
                    {
                        "body": any_value(lr.body),
                        "severity_number": int(lr.severity_number),
                        "severity_text": lr.severity_text,
                        "time_unix_nano": lr.time_unix_nano,
                        "observed_time_unix_nano": lr.observed_time_unix_nano,
                        "attributes": _attrs(lr.attributes),
                        "resource": resource,
                        "scope": sl.scope.name,
                        "trace_id": lr.trace_id.hex(),
                        "span_id": lr.span_id.hex(),
                        "flags": lr.flags,
                        "event_name": lr.event_name,
                        "batch": batch,  # index of the accepted request it came in
                    }
                )
    return out


def rotel_binary() -> Path:
    """Path of the collector executable shipped inside the ``rotel`` wheel."""
    import rotel  # imported lazily: only needed when the real collector runs

    path = Path(rotel.__file__).parent / "rotel-agent"
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"rotel binary not found or not executable: {path}")
    return path


class RotelCollector:
    """The real Rotel collector on 127.0.0.1, forwarding logs over OTLP/HTTP.

    ``forward_to`` is an ``OtlpReceiver`` or a base URL (Rotel appends
    ``/v1/logs``); ``None`` uses the blackhole exporter (debug log only).
    The receiver port is chosen at the first start() (or given as ``port``)
    and kept, so stop() + start() is an outage at a fixed address.
    ``debug_log`` writes every record to the log file (Rotel's
    ``--debug-log logs --debug-log-verbosity detailed``): turn it off for
    volume tests, it costs CPU and ~300 bytes of log per record.
    """

    def __init__(
        self,
        forward_to: OtlpReceiver | str | None = None,
        *,
        port: int = 0,
        logs_batch_max_size: int = 100_000,
        batch_timeout: str = "10ms",
        debug_log: bool = True,
        log_dir: str | os.PathLike[str] | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.forward_to = forward_to
        self.logs_batch_max_size = logs_batch_max_size
        self.batch_timeout = batch_timeout
        self.debug_log = debug_log
        self.extra_args = list(extra_args)
        self._log_dir = Path(log_dir) if log_dir else None
        self.log_path: Path | None = None
        self.port = port
        self.grpc_port = 0  # Rotel's OTLP/gRPC receiver, chosen at start()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """Base URL of Rotel's OTLP/HTTP receiver (post to ``endpoint + '/v1/logs'``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs_endpoint(self) -> str:
        return self.endpoint + LOGS_PATH

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _args(self, http_port: int, grpc_port: int, workdir: Path) -> list[str]:
        if isinstance(self.forward_to, OtlpReceiver):
            target: str | None = self.forward_to.base_url
        else:
            target = self.forward_to
        args = [
            str(rotel_binary()), "start",
            "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
            # No flag disables the gRPC receiver; keep it off the default 4317.
            "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
            "--otlp-receiver-traces-disabled", "--otlp-receiver-metrics-disabled",
            "--pid-file", str(workdir / "rotel.pid"),
            "--log-file", str(workdir / "rotel-agent.log"),
            # Rotel drops (after answering 200) a batch above this size: keep it
            # well above anything a test sends.
            "--logs-batch-max-size", str(self.logs_batch_max_size),
            # Default 200ms; small so records reach the receiver quickly.
            "--logs-batch-timeout", self.batch_timeout,
        ]
        if target is None:
            args += ["--exporter", "blackhole"]
        else:
            args += [
                "--exporter", "otlp",
                "--otlp-exporter-endpoint", target,
                "--otlp-exporter-protocol", "http",
                # Default initial backoff is 5s: too slow when a test's receiver
                # rejects a few requests on purpose.
                "--otlp-exporter-retry-initial-backoff", "100ms",
                "--otlp-exporter-retry-max-backoff", "1s",
            ]
        if self.debug_log:
            args += ["--debug-log", "logs", "--debug-log-verbosity", "detailed"]
        return args + self.extra_args

    def start(self, timeout: float = 15.0, attempts: int = 3) -> RotelCollector:
        """Start and wait (up to ``timeout`` per attempt) until the HTTP receiver answers.

        If the port was picked here and Rotel finds it taken (another process
        won the race), retries on fresh ports. Raises ``RuntimeError`` with the
        tail of its log on failure.
        """
        if self.running():
            return self
        # A restart reuses the first start's folder, so one log covers both.
        workdir = self._log_dir or (self.log_path.parent if self.log_path else Path(tempfile.mkdtemp(prefix="rotel-")))
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "rotel.log"
        # Rotel reads ROTEL_* variables: drop the developer's so flags alone decide.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
        env["NO_COLOR"] = "1"
        error = ""
        fixed = bool(self.port)
        for _ in range(attempts if not fixed else 1):
            ports = free_ports(3)
            self.port = self.port or ports[0]
            grpc_port = self.grpc_port = next(p for p in ports if p != self.port)
            with open(self.log_path, "ab") as log:  # append: restarts keep one log
                self._proc = subprocess.Popen(
                    self._args(self.port, grpc_port, workdir),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    # Its own session: a Ctrl-C at the terminal must not stop the collector
                    # before the service has drained its last batch into it.
                    start_new_session=True, preexec_fn=die_with_parent,
                )
            error = self._wait_ready(timeout)
            if not error:
                return self
            self.stop()
            if fixed or "in use" not in self.log_tail().lower():
                break
            self.port = 0
        raise RuntimeError(f"rotel did not start: {error}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> str:
        # Ready = the OTLP/HTTP listener answers HTTP. A GET carries no data, so
        # nothing enters the pipeline (Rotel answers 404/405).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return f"exited with code {self._proc.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(f"GET {LOGS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                    if s.recv(16).startswith(b"HTTP/"):
                        return ""
            except OSError:
                pass
            time.sleep(0.02)
        return f"not ready after {timeout}s"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Rotel flushes its batches and exits), SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> RotelCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
