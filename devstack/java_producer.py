"""Kafka's own Java producer as a test tool: records written the way production writes them.

Most services in front of this one use the Java client or librdkafka, with
``compression.type`` lz4 or zstd and sometimes transactions, not kafka-python.
:class:`JavaProducer` runs ``JavaProducer.java`` (beside this file) with the
kafka-clients jar of the broker distribution the tests already fetch, and
drives it over stdin: ``send`` queues a record, ``flush`` writes what is
queued as one batch per partition, ``begin``/``commit``/``abort`` run a
transaction. Every command but ``send`` waits, with a deadline, for the
producer's answer.

    with JavaProducer(kafka.bootstrap, topic, compression="zstd") as producer:
        producer.send(b'{"message": "hi"}', partition=0, key=b"k", headers=[("traceparent", b"00-...")])
        producer.flush()
"""

from __future__ import annotations

import base64
import queue
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from devstack.children import die_with_parent
from devstack.kafka import _java, ensure_kafka_jars

SOURCE = Path(__file__).with_name("JavaProducer.java")


class JavaProducerError(RuntimeError):
    """The Java producer refused a command, or did not answer in time."""


class JavaProducer:
    def __init__(self, bootstrap: str, topic: str, *, compression: str = "none",
                 transactional_id: str | None = None, start_timeout: float = 60.0) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="java-producer-", suffix=".log")[1])
        args = [_java(), "-cp", f"{ensure_kafka_jars()}/*", str(SOURCE), bootstrap, topic, compression]
        if transactional_id:
            args.append(transactional_id)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          text=True, preexec_fn=die_with_parent)
        self._answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_answers, daemon=True).start()
        self._expect("ready", start_timeout)

    def _read_answers(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._answers.put(line.strip())
        self._answers.put("error the producer exited")

    def _expect(self, wanted: str, timeout: float) -> None:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise JavaProducerError(f"no answer from the Java producer in {timeout}s\n{self.log_tail()}") from None
        if answer != wanted:
            raise JavaProducerError(f"Java producer: {answer}\n{self.log_tail()}")

    def _command(self, *fields: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write("\t".join(fields) + "\n")
        self._proc.stdin.flush()

    def send(self, value: bytes | None, partition: int = 0, key: bytes | None = None,
             headers: Iterable[tuple[str, bytes | None]] = ()) -> None:
        encoded = ",".join(f"{name}={_b64(raw)}" for name, raw in headers) or "-"
        self._command("send", str(partition), _b64(key), encoded, _b64(value))

    def flush(self, timeout: float = 30.0) -> None:
        """Write what was sent since the last flush: one batch per partition."""
        self._ask("flush", timeout)

    def begin(self, timeout: float = 30.0) -> None:
        self._ask("begin", timeout)

    def commit(self, timeout: float = 30.0) -> None:
        self._ask("commit", timeout)

    def abort(self, timeout: float = 30.0) -> None:
        self._ask("abort", timeout)

    def _ask(self, command: str, timeout: float) -> None:
        self._command(command)
        self._expect("ok", timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._proc.poll() is None:
            try:
                self._command("quit")
                self._proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> JavaProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _b64(raw: bytes | None) -> str:
    return "-" if raw is None else base64.b64encode(raw).decode("ascii")
