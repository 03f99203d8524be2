"""The real service, under real Gunicorn with the real ``gunicorn.conf.py``, as a subprocess.

Used by the integration tests and by ``python -m devstack``. It binds to
127.0.0.1 on a free port, waits (with a deadline) until ``GET /health``
answers, and captures Gunicorn's output to a log file the tests can read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from devstack.children import die_with_parent
from devstack.ports import free_ports
from devstack.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    def __init__(self, env: Mapping[str, str], *, workers: int = 1, port: int | None = None,
                 graceful_timeout: int = 15, log_dir: Path | None = None) -> None:
        self.port = port or free_ports(1)[0]
        self.workers = workers
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "WEB_CONCURRENCY": str(workers),
                    "GRACEFUL_TIMEOUT": str(graceful_timeout), "PYTHONUNBUFFERED": "1", **env}
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="logger-service-")) / f"gunicorn-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def launch(self) -> None:
        """Start Gunicorn without waiting for it."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child until stop()
        self.launched_at = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                     cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        log.close()

    def start(self, timeout: float = 30.0, ready: Callable[[dict[str, Any]], bool] | None = None) -> ServiceProcess:
        """Launch and wait until every worker answers /health (and ``ready(health)`` holds)."""
        self.launch()
        self.wait_until(lambda: self._all_workers_ready(ready), timeout, "the service to become ready")
        return self

    def _all_workers_ready(self, ready: Callable[[dict[str, Any]], bool] | None) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
        seen: set[int] = set()
        for _ in range(self.workers * 8):  # requests spread over workers; ask until each answered
            health = self.health()
            if health is None or (ready is not None and not ready(health)):
                return False
            seen.add(health["worker"])
            if len(seen) == self.workers:
                return True
        return False

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return None

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_until(condition, timeout, what, detail=self.log_tail)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then kill the whole process group; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stray workers, if any
        except ProcessLookupError:
            pass
        self.proc.wait(5)
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
