"""Gunicorn configuration for logger-service.

Run:  gunicorn -c gunicorn.conf.py wsgi:app

Values come from the environment (see the README's configuration table); a bad
value stops start-up here, in the master, with one line naming the variable.
"""

import os
import shutil
import socket
import sys
import tempfile

# -- Metrics across workers -------------------------------------------------------
# prometheus_client picks its multiprocess mode when first imported, so this
# comes before any logger import; workers inherit it. A fresh folder per start:
# files left by an earlier run would be counted again.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])
else:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="logger-service-metrics-")

from logger import gunicorn_worker, metrics  # noqa: E402
from logger.config import Settings, _Env  # noqa: E402
from logger.errors import ConfigError  # noqa: E402
from logger.logs import gunicorn_logconfig  # noqa: E402


def _resolvable(host: str) -> str:
    # Gunicorn would retry an unresolvable name for 5 s, then exit with lines that name no variable.
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        raise ValueError(host) from None
    return host


try:
    settings = Settings.from_env()
    # Gunicorn's own settings, checked the same way (one line naming the variable).
    server_env = _Env(os.environ)
    web_concurrency = server_env.integer("WEB_CONCURRENCY", 1, 1, 256)
    graceful_timeout_s = server_env.integer("GRACEFUL_TIMEOUT", 20, 1, 3600)
    access_log_on = server_env.boolean("ACCESS_LOG", True)
    listen_host = server_env.parse("HOST", "0.0.0.0", _resolvable, "an IP address or a host name that resolves")
except ConfigError as error:
    sys.stderr.write(f"logger-service: configuration error: {error}\n")
    sys.exit(2)

# -- Server socket ----------------------------------------------------------------
# HOST exists so tests and sidecar set-ups can bind to 127.0.0.1 only.
bind = f"{listen_host}:{settings.port}"
# A reconnect storm of 10k clients needs a deep accept queue (128 dropped SYNs
# for seconds; 4096 took them at once). The kernel caps it at net.core.somaxconn.
backlog = 4096

# -- Worker processes -------------------------------------------------------------
# Each worker reads every partition for its own live clients (the tail path) and
# a share of them for the collector (the forward path): see "Scaling" in the README.
workers = web_concurrency
worker_class = "logger.gunicorn_worker.Worker"
# Concurrent connections gevent's pool serves. An upgraded WebSocket leaves the
# pool once the hub owns it (logger.gunicorn_worker.UpgradeHandler), so this bounds HTTP
# requests and upgrades in progress; the WebSocket cap is WS_MAX_CLIENTS. It is
# still sized for a reconnect storm of every client at once.
worker_connections = settings.max_clients + 1000
timeout = 30
# SIGTERM → drain: flush batches, commit offsets, close clients with 1001.
graceful_timeout = graceful_timeout_s
keepalive = settings.http_keepalive_s  # also how long the upgrade handler waits for a next request

# gunicorn 27 opens a control socket under ~/.gunicorn by default; we have no
# use for it, and containers may have no writable home.
control_socket_disable = True

# -- Logging ----------------------------------------------------------------------
# One line per event, JSON unless stderr is a terminal (LOG_FORMAT), Gunicorn's
# own error and access lines included.
loglevel = settings.log_level
accesslog = "-" if access_log_on else None
errorlog = "-"
logconfig_dict = gunicorn_logconfig(settings.log_level, settings.log_format, access_log_on)


# -- Hooks ------------------------------------------------------------------------
def post_worker_init(worker):
    # After gevent has monkey-patched: start the readers as greenlets.
    gunicorn_worker.post_worker_init(worker)


def worker_exit(server, worker):
    gunicorn_worker.worker_exit(server, worker)


def child_exit(server, worker):
    # In the master: forget the dead worker's live gauges (clients, reader state).
    metrics.worker_exited(worker.pid)
