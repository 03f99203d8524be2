"""What the Gunicorn master imports must leave gevent's monkey-patching possible.

kafka-python captures ``selectors.DefaultSelector`` when imported; if the
master imported it before the worker patched, the worker's readers block the
whole process in a real epoll. Importing the package must also start nothing.
"""

from __future__ import annotations

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
