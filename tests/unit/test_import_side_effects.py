"""What the Gunicorn master imports must leave gevent's monkey-patching possible.

kafka-python captures ``selectors.DefaultSelector`` when imported; if the
master imported it before the worker patched, the worker's readers block the
whole process in a real epoll. Importing the package must also start nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MASTER_SIDE = "import sys, gunicorn.config; import logger, logger.gunicorn_worker, logger.config, logger.logs; " \
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kafka', 'requests', 'urllib3', 'opentelemetry')))"


def test_master_side_imports_pull_in_no_network_client_library():
    out = subprocess.run([sys.executable, "-c", MASTER_SIDE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_app_starts_no_thread_or_greenlet():
    code = ("import threading, wsgi; print(threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def loaded_after_start(**env: str) -> list[str]:
    """Top-level packages a worker holds once its pipeline started (readers not run)."""
    code = ("import json, sys, wsgi, logger.gunicorn_worker; from logger.app import service_of; "
            "service_of(wsgi.app).start(); "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'jwt', 'cryptography', 'opentelemetry', 'requests', 'kafka'})))")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "FORWARD_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_loads_pyjwt_only_with_authentication_and_opentelemetry_only_when_forwarding():
    # Each costs start-up time (issue 15, point 7): PyJWT + cryptography ~25 ms, the OTLP
    # exporter with requests and protobuf ~90 ms.
    assert loaded_after_start() == ["kafka", "opentelemetry", "requests"]
    assert loaded_after_start(FORWARD_ENABLED="false") == ["kafka"]
    assert loaded_after_start(AUTH_JWT_SECRET="s" * 32) == ["cryptography", "jwt", "kafka", "opentelemetry", "requests"]
