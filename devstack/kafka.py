"""A real single-node Apache Kafka (KRaft) for integration tests and local runs.

The broker runs from the Maven Central jars (``org.apache.kafka:kafka_2.13``),
which Maven copies once into ``$LOGGER_SERVICE_CACHE/kafka-<version>/libs``
(``LOGGER_SERVICE_CACHE`` defaults to ``~/.cache/logger-service``).
``python -m devstack.kafka fetch`` prepares that folder ahead of time (CI);
``python -m devstack.kafka run`` starts a broker in the foreground.

One JVM is broker and controller at once. It listens on 127.0.0.1 only, on
three free ports that stay fixed for the object's lifetime, so ``restart()``
comes back where clients expect it: PLAINTEXT (``bootstrap``), SASL_PLAINTEXT
with PLAIN (``sasl_bootstrap``, user ``username``/``password``), SCRAM-SHA-256
and SCRAM-SHA-512 (one user per mechanism, ``scram_username(mechanism)``, same
password; written into the cluster metadata when the storage is formatted)
and the controller. Topics are never auto-created: tests create what they use.

``KafkaBroker(tls=True)`` adds a fourth listener, SASL_SSL with PLAIN for the
same user (``sasl_ssl_bootstrap``), whose certificate, for 127.0.0.1 and
localhost, is signed by a throwaway CA (``ca_file``) that
:mod:`devstack.certs` makes in ``<data dir>/tls`` (or ``tls_dir``); an
unrelated CA (``wrong_ca_file``) is there for negative tests. Off by default.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from devstack.certs import TlsFiles, make_certs
from devstack.children import die_with_parent
from devstack.ports import free_ports

KAFKA_VERSION = "4.4.0"
POM = Path(__file__).with_name("kafka-pom.xml")
_COMPLETE = ".complete"  # written last: a half-copied folder is never used

_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port},CONTROLLER://127.0.0.1:{controller_port}{tls_listener}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}{tls_listener}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT{tls_protocol}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=PLAIN
# The SASL_PLAINTEXT listener also takes SCRAM, for the users format writes (--add-scram).
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config={scram_jaas}
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram_jaas}
log.dirs={log_dirs}
auto.create.topics.enable=false
# One node: internal topics get one replica, and one partition, so the first
# consumer group does not wait for 50 to be created.
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A joining group must not wait 3 s for more members to turn up.
group.initial.rebalance.delay.ms=0
# 2 cores; the cleaner's 128 MB default buffer would be a third of the heap.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=8388608
# After a SIGKILL the restarted controller refuses the broker's new
# registration (DUPLICATE_BROKER_REGISTRATION) until the old session
# expires: 9 s by default, 2 s here.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=2000
"""

# Added with tls=True: the SASL_SSL listener's JAAS and keystore (server side
# only: clients are not asked for certificates, ssl.client.auth=none).
_TLS_PROPERTIES = """\
listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}
listener.name.sasl_ssl.ssl.keystore.type={keystore_type}
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.sasl_ssl.ssl.keystore.password={keystore_password}
listener.name.sasl_ssl.ssl.key.password={keystore_password}
listener.name.sasl_ssl.ssl.client.auth=none
"""

# SCRAM credentials live in the cluster metadata (written at format time), not in JAAS.
_SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")

_LOG4J2 = """\
# All to stdout, which the harness sends to <data dir>/server.log.
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
# Config dumps and per-request chatter drown what matters when a test fails.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
"""


class KafkaHarnessError(RuntimeError):
    """The broker could not be fetched, formatted or started."""


def ensure_kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """Return the folder of broker jars, fetching them with Maven if needed."""
    root = Path(os.environ.get("LOGGER_SERVICE_CACHE") or Path.home() / ".cache" / "logger-service")
    libs = root / f"kafka-{version}" / "libs"
    if _is_complete(libs):
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Copy into a private folder, then rename it into place: two test
    # processes fetching at once never see each other's half-done work.
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-Dkafka.version={version}", "-DincludeScope=runtime", f"-DoutputDirectory={staging}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise KafkaHarnessError("Maven (mvn) is needed to fetch the Kafka jars") from exc
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaHarnessError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared
    jars = sorted(p.name for p in staging.glob("*.jar"))
    (staging / _COMPLETE).write_text("\n".join(jars) + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    try:
        staging.rename(libs)
    except OSError:  # another process won the race; its copy is as good
        shutil.rmtree(staging, ignore_errors=True)
    if not _is_complete(libs):
        raise KafkaHarnessError(f"Kafka jars missing from {libs} after fetch")
    return libs


def _is_complete(libs: Path) -> bool:
    marker = libs / _COMPLETE
    names = marker.read_text().split() if marker.is_file() else []
    return bool(names) and all((libs / n).is_file() for n in names)


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else (shutil.which("java") or "java")


def _class_archive(libs: Path) -> Path:
    """The AppCDS archive of the broker's classes for this JVM build.

    Loading Kafka's classes from a class-data-sharing archive halves start-up
    (3.1 s -> 1.6 s on 2 cores). An archive only fits the JVM that wrote it,
    hence the key; a stale one is not fatal, the JVM warns and loads classes
    the slow way. It lives in libs/, so a re-fetch discards it (the ``libs/*``
    class path matches jars only).
    """
    java = Path(_java()).resolve()
    stamp = f"{java}:{java.stat().st_mtime_ns if java.exists() else 0}"
    return libs / f"classes-{hashlib.sha1(stamp.encode()).hexdigest()[:12]}.jsa"


def _cluster_id() -> str:
    # Kafka's Uuid: 16 random bytes, URL-safe base64 without padding; one
    # starting with "-" would read as a command-line option.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


class KafkaBroker:
    """One KRaft broker+controller JVM on fixed, free loopback ports."""

    node_id = 1

    def __init__(self, data_dir: Path | str | None = None, *, version: str = KAFKA_VERSION,
                 username: str = "logger", password: str = "logger-secret", heap: str = "384m",
                 config: Mapping[str, str] | None = None, tls: bool = False,
                 tls_dir: Path | str | None = None) -> None:
        self.version = version
        self.username = username
        self.password = password  # goes into a JAAS string: no quotes or backslashes
        self.heap = heap
        self.extra_config = dict(config or {})  # server.properties overrides
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kafka-"))
        self.tls = tls or tls_dir is not None
        ports = free_ports(4 if self.tls else 3)
        self.port, self.sasl_port, self.controller_port = ports[:3]
        self.sasl_ssl_port: int | None = ports[3] if self.tls else None
        # Made now (well under a second), so ca_file exists before start().
        self.tls_files: TlsFiles | None = (make_certs(Path(tls_dir) if tls_dir else self.data_dir / "tls")
                                           if self.tls else None)
        self.startup_seconds: float | None = None  # how long the last start() took
        self._proc: subprocess.Popen[bytes] | None = None
        self._archive_dump: tuple[Path, Path] | None = None  # (archive, file being written)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """The SASL_SSL (PLAIN) listener; only with ``tls=True``."""
        if self.sasl_ssl_port is None:
            raise KafkaHarnessError("this broker has no SASL_SSL listener: create it with KafkaBroker(tls=True)")
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ca_file(self) -> str:
        """PEM of the CA that signed the SASL_SSL listener's certificate; only with ``tls=True``."""
        return str(self._tls().ca_file)

    @property
    def wrong_ca_file(self) -> str:
        """PEM of a CA unrelated to the broker's certificate (verification against it fails)."""
        return str(self._tls().wrong_ca_file)

    def _tls(self) -> TlsFiles:
        if self.tls_files is None:
            raise KafkaHarnessError("this broker has no TLS: create it with KafkaBroker(tls=True)")
        return self.tls_files

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def scram_username(self, mechanism: str) -> str:
        """The user that exists for ``mechanism`` alone (``logger-scram-sha-512``): a client that
        logs in as it with any other mechanism, PLAIN included, is refused."""
        return f"{self.username}-{mechanism.lower()}"

    def client_config(self, *, sasl: bool = False, tls: bool = False, mechanism: str = "PLAIN") -> dict[str, Any]:
        """kafka-python settings for the PLAINTEXT, the SASL_PLAINTEXT (``mechanism``: PLAIN or
        SCRAM-SHA-256/512) or (``tls``) the SASL_SSL listener."""
        if tls:
            return {"bootstrap_servers": self.sasl_ssl_bootstrap, "security_protocol": "SASL_SSL",
                    "ssl_cafile": self.ca_file, "sasl_mechanism": "PLAIN",
                    "sasl_plain_username": self.username, "sasl_plain_password": self.password}
        if not sasl:
            return {"bootstrap_servers": self.bootstrap}
        user = self.username if mechanism == "PLAIN" else self.scram_username(mechanism)
        return {"bootstrap_servers": self.sasl_bootstrap, "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": mechanism, "sasl_plain_username": user,
                "sasl_plain_password": self.password}

    # -- lifecycle ---------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Format storage on first use, start the JVM, return once it serves clients."""
        if self.running:
            return
        began = time.monotonic()
        libs = ensure_kafka_jars(self.version)
        props = self._write_config()
        archive = _class_archive(libs)
        if archive.exists():
            cds = [f"-XX:SharedArchiveFile={archive}"]
        else:  # this broker's clean exit writes the archive for the next ones
            tmp = archive.with_name(f"{archive.name}.{os.getpid()}-{id(self)}.tmp")
            self._archive_dump = (archive, tmp)
            cds = [f"-XX:ArchiveClassesAtExit={tmp}"]
        jvm = [_java(), f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
               "-XX:+UseSerialGC", "-cp", f"{libs}/*"]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            self._format(jvm, archive, props, began + timeout)
        cmd = [*jvm, *cds, f"-Xmx{self.heap}", "-Xms64m", "-XX:+ExitOnOutOfMemoryError",
               "kafka.Kafka", str(props)]
        with open(self.log_path, "ab") as log:
            # Own session: a Ctrl-C meant for pytest must not kill the broker
            # before the fixture's orderly stop().
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=die_with_parent)
        try:
            self._wait_ready(began + timeout)
        except BaseException:
            self.stop(timeout=5)
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Kafka's orderly shutdown), then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        clean = False
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
                clean = True
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._publish_archive(clean)

    def kill(self) -> None:
        """SIGKILL without shutdown: a crash, as far as the data dir can tell."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._publish_archive(clean=False)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop, and start again on the same ports with the same data."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop, and delete the data dir if this object made it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients and topics ------------------------------------------------------

    def admin(self, **overrides: Any) -> KafkaAdminClient:
        return KafkaAdminClient(**{**self.client_config(), **overrides})

    def producer(self, **overrides: Any) -> KafkaProducer:
        return KafkaProducer(**{**self.client_config(), **overrides})

    def consumer(self, *topics: str, **overrides: Any) -> KafkaConsumer:
        return KafkaConsumer(*topics, **{**self.client_config(), **overrides})

    def create_topic(self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None) -> None:
        """Create a topic and wait until every partition has a leader."""
        admin = self.admin()
        try:
            admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1,
                                        "configs": dict(config or {})}}, wait_for_metadata=True)
        finally:
            admin.close()

    def add_partitions(self, name: str, total: int) -> None:
        """Grow a topic to ``total`` partitions and wait until each has a leader."""
        admin = self.admin()
        try:
            admin.create_partitions({name: total})
            # create_partitions returns before the new partitions have leaders.
            deadline = time.monotonic() + 10
            while True:
                parts = admin.describe_topics([name])[0]["partitions"]
                if len(parts) >= total and all(p["leader_id"] >= 0 for p in parts):
                    return
                if time.monotonic() > deadline:
                    raise KafkaHarnessError(f"{name}: partitions not ready: {parts}")
                time.sleep(0.05)
        finally:
            admin.close()

    # -- internals ---------------------------------------------------------------

    def _write_config(self) -> Path:
        jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_{self.username}="{self.password}";')
        tls = self.tls_files
        text = _SERVER_PROPERTIES.format(node_id=self.node_id, port=self.port, sasl_port=self.sasl_port,
                                         controller_port=self.controller_port, jaas=jaas,
                                         scram_jaas=_SCRAM_JAAS,
                                         log_dirs=self.data_dir / "logs",
                                         tls_listener=f",SASL_SSL://127.0.0.1:{self.sasl_ssl_port}" if tls else "",
                                         tls_protocol=",SASL_SSL:SASL_SSL" if tls else "")
        if tls is not None:
            text += _TLS_PROPERTIES.format(jaas=jaas, keystore_type=tls.keystore_type, keystore=tls.keystore,
                                           keystore_password=tls.keystore_password)
        # Later keys win in a .properties file: overrides go last.
        text += "".join(f"{k}={v}\n" for k, v in self.extra_config.items())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(text)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        return props

    def _format(self, jvm: list[str], archive: Path, props: Path, deadline: float) -> None:
        # --standalone: this node alone is the controller quorum (KIP-853),
        # as in Kafka's quickstart. A short-lived JVM starts faster on C1 alone.
        cds = [f"-XX:SharedArchiveFile={archive}"] if archive.exists() else []
        scram = [arg for mechanism in SCRAM_MECHANISMS
                 for arg in ("--add-scram", f"{mechanism}=[name={self.scram_username(mechanism)},"
                                            f"password={self.password}]")]
        cmd = [*jvm, *cds, "-Xmx128m", "-XX:TieredStopAtLevel=1", "kafka.tools.StorageTool",
               "format", "--standalone", "-t", _cluster_id(), "-c", str(props), *scram]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            raise KafkaHarnessError(f"storage format timed out: {' '.join(cmd)}") from exc
        if done.returncode != 0:
            raise KafkaHarnessError(f"storage format failed:\n{done.stdout}{done.stderr}")

    def _wait_ready(self, deadline: float) -> None:
        # Ready means what clients need: a metadata answer listing this broker.
        # (Kafka opens the client ports only once the broker is unfenced.)
        # With TLS, the SASL_SSL listener must answer too (handshake and login).
        pending = [self.client_config()] + ([self.client_config(tls=True)] if self.tls else [])
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise KafkaHarnessError(f"Kafka exited with {self._proc.returncode}; "
                                        f"{self.log_path}:\n{_tail(self.log_path)}")
            try:  # kafka-python retries connecting inside bootstrap_timeout_ms
                admin = self.admin(**pending[0], request_timeout_ms=2000, bootstrap_timeout_ms=2000,
                                   reconnect_backoff_max_ms=200)
                try:
                    if admin.describe_cluster().get("brokers"):
                        pending.pop(0)
                        if not pending:
                            return
                        continue
                finally:
                    admin.close()
            except Exception as exc:
                last = exc
            time.sleep(0.1)
        where = pending[0]["bootstrap_servers"] if pending else self.bootstrap
        raise KafkaHarnessError(f"Kafka not ready on {where} (last error: {last}); "
                                f"{self.log_path}:\n{_tail(self.log_path)}")

    def _publish_archive(self, clean: bool) -> None:
        # The JVM writes the class archive as it exits; a killed JVM leaves
        # none or a torn one, so only a clean exit's file is moved into place.
        if self._archive_dump is None:
            return
        (archive, tmp), self._archive_dump = self._archive_dump, None
        if clean and tmp.is_file() and tmp.stat().st_size > 0:
            os.replace(tmp, archive)
        tmp.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        libs = ensure_kafka_jars()
        if not _class_archive(libs).exists():
            with KafkaBroker():  # one clean start and stop writes the class archive
                pass
        print(libs)
        return 0
    if argv[:1] == ["run"] and argv[1:] in ([], ["--tls"]):
        with KafkaBroker(tls=argv[1:] == ["--tls"]) as broker:
            tls = (f", SASL_SSL {broker.sasl_ssl_bootstrap} (CA {broker.ca_file})"
                   if broker.tls else "")
            print(f"Kafka {broker.version} up in {broker.startup_seconds:.1f}s: "
                  f"PLAINTEXT {broker.bootstrap}, SASL_PLAINTEXT {broker.sasl_bootstrap}{tls} "
                  f"({broker.username}/{broker.password}); log {broker.log_path}", flush=True)
            # Blocked only now: the JVM inherits its parent's signal mask.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    print("usage: python -m devstack.kafka fetch|run [--tls]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
