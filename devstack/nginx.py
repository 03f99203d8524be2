"""Real nginx, running the shipped ``deploy/nginx.conf``, in front of a service on loopback.

The end-to-end tests must exercise the configuration users deploy, not a
look-alike written for the tests. So the harness reads ``deploy/nginx.conf``
and changes only what cannot be the same on a test machine, each by an exact,
whole-line match on a directive of the shipped file (see ``MARKERS``):

======================  =================================  ===================================
marker                  shipped line                       in the test copy
======================  =================================  ===================================
``user``                ``user www-data;``                 root: ``user <current user> <group>;``
                                                           otherwise commented out (an
                                                           unprivileged master cannot switch)
``pid``                 ``pid /run/nginx.pid;``            ``pid <dir>/nginx.pid;``
``error_log``           ``error_log /var/log/nginx/...``   ``error_log <dir>/error.log warn;``
``access_log``          ``access_log /var/log/nginx/...``  ``access_log <dir>/access.log main;``
``temp_paths``          ``http {``                         ``http {`` + the five ``*_temp_path``
                                                           directives under ``<dir>/`` (the
                                                           compiled-in ``/var/lib/nginx/...``
                                                           needs root)
``listen``              ``listen 80;``                     ``listen 127.0.0.1:<free port>;``
``upstream``            ``server 127.0.0.1:6006;``         ``server 127.0.0.1:<port>;`` for each
                                                           upstream port (several: replicas)
``read_timeout``        ``proxy_read_timeout 60s;`` (/ws)  ``proxy_read_timeout <read_timeout>;``
======================  =================================  ===================================

Every marker must match exactly one line of the shipped file, or rendering
fails naming it: an edit to ``deploy/nginx.conf`` that moves a marker breaks
the harness loudly instead of silently testing something else. Everything
else (map, headers, buffering, keepalive, timeouts other than the /ws read
timeout) is used exactly as shipped.

nginx runs in the foreground (``-g "daemon off;"``, its own process group),
with its prefix and logs in a work folder:

    with Nginx(service.port, read_timeout="2s") as nginx:
        nginx.start()
        urllib.request.urlopen(nginx.url + "/health")
        websocket.create_connection(nginx.ws_url)
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.children import die_with_parent
from devstack.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "deploy" / "nginx.conf"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxHarnessError(RuntimeError):
    pass


@dataclass(frozen=True)
class Marker:
    """One directive of the shipped config the harness may rewrite: the whole line, exactly."""

    name: str
    line: str  # as in deploy/nginx.conf, without indentation

    def pattern(self) -> re.Pattern[str]:
        return re.compile(r"^(?P<indent>[ \t]*)" + re.escape(self.line) + r"[ \t]*$", re.MULTILINE)


MARKERS = {m.name: m for m in (
    Marker("user", "user www-data;"),
    Marker("pid", "pid /run/nginx.pid;"),
    Marker("error_log", "error_log /var/log/nginx/error.log warn;"),
    Marker("access_log", "access_log /var/log/nginx/logger-service.access.log main;"),
    Marker("temp_paths", "http {"),
    Marker("listen", "listen 80;"),
    Marker("upstream", "server 127.0.0.1:6006;"),
    Marker("read_timeout", "proxy_read_timeout 60s;"),
)}


def nginx_binary() -> str | None:
    """The nginx executable (PATH, then /usr/sbin, where Debian puts it), or None."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")


def render_config(text: str, replacements: dict[str, str | None]) -> str:
    """Apply ``{marker name: new line(s)}`` to the shipped text.

    Every marker is checked, replaced or not (``None`` keeps the shipped
    line), so a config whose markers drifted fails here. A replacement keeps
    the line's indentation; several lines are separated by ``\\n`` and each
    indented alike.
    """
    unknown = set(replacements) - set(MARKERS)
    if unknown:
        raise NginxHarnessError(f"unknown nginx.conf markers: {sorted(unknown)}")
    for name, marker in MARKERS.items():
        matches = list(marker.pattern().finditer(text))
        if len(matches) != 1:
            raise NginxHarnessError(
                f"deploy/nginx.conf: marker {name!r} (the line {marker.line!r}) found {len(matches)} times, "
                "expected exactly once; keep the line or update devstack/nginx.py")
        new = replacements.get(name)
        if new is None:
            continue
        match = matches[0]
        indent = match.group("indent")
        lines = "\n".join(indent + line for line in new.split("\n"))
        text = text[:match.start()] + lines + text[match.end():]
    return text


def path_replacements(workdir: Path) -> dict[str, str]:
    """The paths-only part: pid, logs and temp files under ``workdir``."""
    temp = "\n".join(f"    {kind}_temp_path {workdir / 'temp' / kind};" for kind in TEMP_PATHS)
    return {
        "pid": f"pid {workdir / 'nginx.pid'};",
        "error_log": f"error_log {workdir / 'error.log'} warn;",
        "access_log": f"access_log {workdir / 'access.log'} main;",
        "temp_paths": "http {\n" + temp,
    }


def user_replacement() -> str:
    if os.geteuid() == 0:
        # Workers would otherwise switch to www-data, which cannot write the
        # work folder (mkdtemp makes it 0700).
        return f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    # An unprivileged master cannot switch users; nginx would only warn.
    return "# user www-data;  (devstack: not root, workers run as the current user)"


def nginx_command(binary: str, config: Path, workdir: Path, *extra: str) -> list[str]:
    """``nginx -p <workdir> -c <config> [-e <error log>] ...``.

    ``-e`` (nginx >= 1.19.5) sends the messages nginx logs before it has read
    ``error_log`` to the work folder too, instead of the compiled-in path.
    """
    command = [binary, "-p", f"{workdir}/", "-c", str(config)]
    if _version(binary) >= (1, 19, 5):
        command += ["-e", str(workdir / "error.log")]
    return command + list(extra)


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(x) for x in found.groups()) if found else (0,)


def check_config(config: Path, workdir: Path, binary: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``nginx -t`` on ``config``; returns the completed process (stderr holds nginx's verdict)."""
    binary = binary or nginx_binary()
    if binary is None:
        raise NginxHarnessError("nginx is not installed")
    (workdir / "temp").mkdir(parents=True, exist_ok=True)
    return subprocess.run(nginx_command(binary, config, workdir, "-t"), capture_output=True, text=True,
                          timeout=30)


class Nginx:
    """The shipped nginx.conf, on a free 127.0.0.1 port, proxying to ``127.0.0.1:upstream_port``."""

    def __init__(self, upstream_port: int | Sequence[int], *, read_timeout: str = "60s", port: int | None = None,
                 workdir: Path | None = None, config: Path = SHIPPED_CONFIG) -> None:
        binary = nginx_binary()
        if binary is None:
            raise NginxHarnessError("nginx is not installed (Debian: apt-get install nginx)")
        self.binary = binary
        self.upstream_ports = [upstream_port] if isinstance(upstream_port, int) else list(upstream_port)
        self.read_timeout = read_timeout
        self.port = port or free_port()
        self._owns_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="logger-nginx-")).resolve()
        self.source_config = config
        self.config_path = self.workdir / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- addresses and files -------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.workdir / "error.log"

    @property
    def output_path(self) -> Path:
        """nginx's own stdout/stderr (normally empty: it logs to error_log_path)."""
        return self.workdir / "nginx.out"

    def render(self) -> str:
        """The shipped config with this instance's ports, paths, user and /ws read timeout."""
        return render_config(self.source_config.read_text(), {
            **path_replacements(self.workdir),
            "user": user_replacement(),
            "listen": f"listen 127.0.0.1:{self.port};",
            "upstream": "\n".join(f"server 127.0.0.1:{port};" for port in self.upstream_ports),
            "read_timeout": f"proxy_read_timeout {self.read_timeout};",
        })

    def write_config(self) -> Path:
        (self.workdir / "temp").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render())
        return self.config_path

    # -- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> Nginx:
        """Start nginx in the foreground and wait (until ``timeout``) until it answers HTTP."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.write_config()
        with open(self.output_path, "ab") as out:
            self.proc = subprocess.Popen(nginx_command(self.binary, self.config_path, self.workdir,
                                                       "-g", "daemon off;"),
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise NginxHarnessError(f"nginx exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._answers():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise NginxHarnessError(f"nginx did not answer on {self.url} within {timeout}s:\n"
                                        f"{self.log_tail()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        """True once nginx itself answers (any status: the upstream may be down, then it is 502)."""
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                server = response.headers.get("Server", "")
        except urllib.error.HTTPError as error:
            server = error.headers.get("Server", "")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False
        return server.startswith("nginx")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Fast shutdown (SIGTERM: open connections, WebSockets included, are closed), then kill."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers left behind, if any
        except ProcessLookupError:
            pass
        proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        """Stop, and delete the work folder if this object made it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- logs ----------------------------------------------------------------------
    def error_log_text(self) -> str:
        return _read(self.error_log_path)

    def access_log_text(self) -> str:
        return _read(self.access_log_path)

    def log_tail(self, lines: int = 40) -> str:
        parts = [f"--- {p}\n" + "\n".join(_read(p).splitlines()[-lines:])
                 for p in (self.output_path, self.error_log_path)]
        return "\n".join(parts)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
