"""A throwaway single-node Apache Kafka broker (KRaft, combined broker+controller) for tests.

The jars come from Maven Central, fetched once into a cache outside the repository
(``~/.cache/streamseg/kafka-<version>/libs``, or ``$STREAMSEG_CACHE_DIR/kafka-<version>/libs``).
Each broker gets free loopback ports and a temp dir that holds its config, data and log.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from devstack.exceptions import FetchError, ServerStartError
from devstack.server_process import (
    RestartableServer,
    ServerProcess,
    free_loopback_port,
    make_run_dir,
    remove_run_dir,
    require_program,
    sweep_stale_run_dirs,
)
from devstack.tls import TlsCertificates, make_certificates
from devstack.versions import (
    KAFKA_ARTIFACTS,
    KAFKA_SCALA_VERSION,
    KAFKA_VERSION,
    MAVEN_DEPENDENCY_PLUGIN_VERSION,
)

#: Environment variable that moves the download cache (jars) somewhere else.
CACHE_DIR_ENV = "STREAMSEG_CACHE_DIR"
_SETUP_HINT = "Run `make setup` (it apt-get installs what is missing)."


def cache_root() -> Path:
    """Directory of the stack's downloads: ``$STREAMSEG_CACHE_DIR`` or ``~/.cache/streamseg``."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "streamseg"


def kafka_libs_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the broker class path for ``version`` lives once fetched (may not exist yet)."""
    return cache_root() / f"kafka-{version}" / "libs"


_MANIFEST = "fetched-artifacts.txt"


def _manifest_text() -> str:
    return "".join(f"{g}:{a}:{v}\n" for g, a, v in KAFKA_ARTIFACTS)


def _libs_complete(libs: Path) -> bool:
    # The libs dir only ever appears by an atomic rename of a finished download; the manifest
    # makes a change of any pinned version in versions.py trigger a new fetch.
    try:
        manifest = (libs / _MANIFEST).read_text()
    except OSError:
        return False
    jar = libs / f"kafka_{KAFKA_SCALA_VERSION}-{KAFKA_VERSION}.jar"
    return manifest == _manifest_text() and jar.is_file()


def kafka_jars_cached() -> bool:
    """True when the broker jars for the pinned versions are already in the cache."""
    return _libs_complete(kafka_libs_dir())


def _fetch_pom() -> str:
    deps = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in KAFKA_ARTIFACTS
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamseg.devstack</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId>
    <artifactId>maven-dependency-plugin</artifactId>
    <version>{MAVEN_DEPENDENCY_PLUGIN_VERSION}</version>
  </plugin></plugins></build>
</project>
"""


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent fetches (two terminals, parallel CI steps) on one lock file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_kafka_jars(timeout: float = 900.0) -> Path:
    """Return the directory of broker jars, downloading them with Maven on first use.

    The download goes to a temp dir beside the cache and is renamed into place only when Maven
    succeeded, so an interrupted fetch is never mistaken for a complete one. ``timeout`` is in
    seconds for the Maven run.
    """
    libs = kafka_libs_dir()
    if _libs_complete(libs):
        return libs
    mvn = require_program("mvn", _SETUP_HINT)
    with _exclusive_lock(libs.parent.parent / f"kafka-{KAFKA_VERSION}.lock"):
        if _libs_complete(libs):  # another process fetched while we waited
            return libs
        staging = Path(
            tempfile.mkdtemp(prefix=f"kafka-{KAFKA_VERSION}.partial-", dir=libs.parent.parent)
        )
        try:
            (staging / "pom.xml").write_text(_fetch_pom())
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(staging / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging / 'libs'}",
                "-DincludeScope=runtime",
            ]
            try:
                done = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise FetchError(
                    f"Maven did not finish fetching Kafka jars in {timeout:.0f} s"
                ) from exc
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
                raise FetchError(
                    f"`{' '.join(cmd)}` failed with exit code {done.returncode}:\n{tail}"
                )
            (staging / "libs").mkdir(exist_ok=True)
            (staging / "libs" / _MANIFEST).write_text(_manifest_text())
            if not _libs_complete(staging / "libs"):
                raise FetchError(f"Maven succeeded but left no Kafka jar in {staging / 'libs'}")
            libs.parent.mkdir(parents=True, exist_ok=True)
            if libs.exists():  # fetched for other pinned versions: replace it
                shutil.rmtree(libs)
            os.rename(staging / "libs", libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return libs


def _random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 characters)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka avoids these too: they read as a CLI option
            return text


def group_settled(admin: AdminClient, group: str, members: int) -> bool:
    """Consumer group ``group`` is stable with ``members`` members, each holding a partition
    (for tests and benchmarks that must not time or feed a group still joining)."""
    try:
        found = admin.describe_consumer_groups([group], request_timeout=5)[group].result(5)
    except (KafkaException, TimeoutError):  # not known to the coordinator yet
        return False
    return (
        found.state == ConsumerGroupState.STABLE
        and len(found.members) == members
        and all(m.assignment.topic_partitions for m in found.members)
    )


def kafka_is_ready(bootstrap_servers: str, timeout: float = 1.0) -> bool:
    """True when a metadata request to ``bootstrap_servers`` succeeds within ``timeout`` seconds."""
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap_servers,
            # Retry quickly: librdkafka's default backoff grows to 10 s while the port is closed.
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 200,
            "log_level": 0,  # "connection refused" while the broker boots is expected, not news
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:  # timed out: not (yet) a broker there
        return False
    return bool(metadata.brokers)


_LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# The request logger and state change logs are loud at INFO and say nothing useful in tests.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class KafkaBroker(RestartableServer):
    """A single-node KRaft broker on free loopback ports, for tests and local runs.

    ``num_partitions`` is the default partition count of auto-created topics; ``heap`` is the JVM
    ``-Xmx`` value; ``startup_timeout`` is in seconds. ``scram_users`` (name -> password) adds a
    ``SASL_PLAINTEXT`` listener (`sasl_bootstrap_servers`) accepting SCRAM-SHA-256 for those
    users, created when the storage is formatted; the PLAINTEXT listener stays for the broker's
    own traffic. ``ssl=True`` adds an ``SSL`` listener (`ssl_bootstrap_servers`; server
    certificate for localhost/127.0.0.1 from ``certificates``, or a throwaway CA generated in
    its temp dir when None; no client certificate asked) and, with ``scram_users``, a
    ``SASL_SSL`` listener too (`sasl_ssl_bootstrap_servers`).

    `halt` shuts the broker down cleanly (30 s before SIGKILL) and `resume` brings the same
    broker back on the same ports and log dir, with every topic and offset.
    """

    _what = "the Kafka broker"
    _halt_timeout = 30.0

    def __init__(
        self,
        *,
        num_partitions: int = 1,
        heap: str = "512m",
        startup_timeout: float = 60.0,
        scram_users: Mapping[str, str] | None = None,
        ssl: bool = False,
        certificates: TlsCertificates | None = None,
    ) -> None:
        self.num_partitions = num_partitions
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.scram_users = dict(scram_users or {})
        self.ssl = ssl
        #: The PKI of the SSL listeners (``ssl`` only); generated at `start` when not given.
        self.certificates = certificates
        self._own_certificates = certificates is None
        self.port: int | None = None
        self.sasl_port: int | None = None
        self.ssl_port: int | None = None
        self.sasl_ssl_port: int | None = None
        self.controller_port: int | None = None
        self._libs: Path | None = None
        self._config: Path | None = None
        self.run_dir: Path | None = None
        #: Seconds from `start` until the broker answered a metadata request.
        self.startup_seconds: float | None = None
        self._process: ServerProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the PLAINTEXT listener; only valid after `start`."""
        if self.port is None:
            raise ServerStartError("the Kafka broker has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        """``host:port`` of the SASL_PLAINTEXT (SCRAM-SHA-256) listener; needs ``scram_users``."""
        if self.sasl_port is None:
            raise ServerStartError(
                "the Kafka broker has no SASL listener (no scram_users) or is stopped"
            )
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap_servers(self) -> str:
        """``host:port`` of the SSL listener (trust `certificates`.ca_cert); needs ``ssl``."""
        if self.ssl_port is None:
            raise ServerStartError("the Kafka broker has no SSL listener (no ssl) or is stopped")
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """``host:port`` of the SASL_SSL (SCRAM-SHA-256 over TLS) listener; needs ``ssl`` and
        ``scram_users``."""
        if self.sasl_ssl_port is None:
            raise ServerStartError(
                "the Kafka broker has no SASL_SSL listener (needs ssl and scram_users) or is "
                "stopped"
            )
        return f"127.0.0.1:{self.sasl_ssl_port}"

    def _write_config(self, run_dir: Path) -> Path:
        assert self.port is not None and self.controller_port is not None
        listeners = f"PLAINTEXT://127.0.0.1:{self.port}"
        advertised = listeners
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        security: dict[str, str] = {}
        scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        if self.sasl_port is not None:
            listeners += f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            advertised += f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            protocols += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            security = {
                "sasl.enabled.mechanisms": "SCRAM-SHA-256",
                "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": scram_login,
            }
        if self.ssl_port is not None:
            assert self.certificates is not None
            listeners += f",SSL://127.0.0.1:{self.ssl_port}"
            advertised += f",SSL://127.0.0.1:{self.ssl_port}"
            protocols += ",SSL:SSL"
            # A PEM keystore (Kafka >= 2.7): the unencrypted PKCS#8 key and the certificate in
            # one file, no JKS and no keytool. Clients are not asked for a certificate.
            security |= {
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.certificates.server_keystore),
                "ssl.client.auth": "none",
            }
        if self.sasl_ssl_port is not None:
            listeners += f",SASL_SSL://127.0.0.1:{self.sasl_ssl_port}"
            advertised += f",SASL_SSL://127.0.0.1:{self.sasl_ssl_port}"
            protocols += ",SASL_SSL:SASL_SSL"
            security |= {
                "sasl.enabled.mechanisms": "SCRAM-SHA-256",
                "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram_login,
            }
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"{listeners},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": protocols,
            **security,
            "log.dirs": str(run_dir / "data"),
            "num.partitions": str(self.num_partitions),
            "auto.create.topics.enable": "true",
            # One broker: every internal topic must be satisfiable with a single replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions: the first consumer group comes up in well under a second.
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.num.partitions": "5",
            # Tests start and stop consumers constantly; waiting 3 s per first join is pure loss.
            "group.initial.rebalance.delay.ms": "0",
        }
        path = run_dir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in config.items()))
        return path

    def _java_command(
        self, libs: Path, run_dir: Path, main_class: str, *, one_shot: bool = False
    ) -> list[str]:
        if one_shot:
            # A short-lived CLI: the C1 compiler alone and the serial GC start it ~25% faster.
            tuning = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
        else:
            # The broker keeps the full JIT: benchmarks run against it.
            tuning = [
                f"-Xmx{self.heap}",
                "-Xms128m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
            ]
        return [
            _java_program(),
            *tuning,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={run_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main_class,
        ]

    def start(self) -> None:
        """Format the storage and start the broker; return when it answers metadata requests.

        Raises `ServerStartError` with the tail of the broker log when it does not come up within
        ``startup_timeout`` seconds.
        """
        if self._process is not None:
            return
        began = time.monotonic()
        self._libs = libs = fetch_kafka_jars()
        sweep_stale_run_dirs()
        self.run_dir = run_dir = make_run_dir("kafka")
        try:
            taken: set[int] = set()
            self.port = _distinct_free_port(taken)
            self.controller_port = _distinct_free_port(taken)
            if self.scram_users:
                self.sasl_port = _distinct_free_port(taken)
            if self.ssl:
                self.ssl_port = _distinct_free_port(taken)
                if self.scram_users:
                    self.sasl_ssl_port = _distinct_free_port(taken)
                if self._own_certificates:
                    self.certificates = make_certificates(run_dir / "tls")
            (run_dir / "log4j2.properties").write_text(
                _LOG4J2_PROPERTIES.format(log_file=run_dir / "server.log")
            )
            self._config = config = self._write_config(run_dir)
            self._format_storage(libs, run_dir, config)
            self._launch()
            self._wait_ready(began)
        except BaseException:
            self.stop()  # also on Ctrl-C during start-up: never leave a half-started JVM
            raise
        self.startup_seconds = time.monotonic() - began

    def _launch(self) -> None:
        assert self._libs is not None and self.run_dir is not None and self._config is not None
        self._process = ServerProcess(
            "kafka",
            [*self._java_command(self._libs, self.run_dir, "kafka.Kafka"), str(self._config)],
            self.run_dir / "console.log",
            cwd=self.run_dir,
        )
        self._process.start()

    def _format_storage(self, libs: Path, run_dir: Path, config: Path) -> None:
        cmd = [
            *self._java_command(libs, run_dir, "kafka.tools.StorageTool", one_shot=True),
            "format",
            "--standalone",
            "-t",
            _random_cluster_id(),
            "-c",
            str(config),
        ]
        for name, password in self.scram_users.items():
            cmd += ["--add-scram", f"SCRAM-SHA-256=[name={name},password={password}]"]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=self.startup_timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(
                f"Kafka storage format took longer than {self.startup_timeout:.0f} s"
            ) from exc
        if done.returncode != 0:
            raise ServerStartError(
                f"Kafka storage format failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def _wait_ready(self, began: float) -> None:
        assert self._process is not None
        deadline = began + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise ServerStartError(
                    f"the Kafka broker exited with code {self._process.returncode} during "
                    f"start-up; last lines of its log:\n{self._log_tail()}"
                )
            if kafka_is_ready(self.bootstrap_servers, timeout=1.0):
                return
            time.sleep(0.2)
        raise ServerStartError(
            f"the Kafka broker on {self.bootstrap_servers} did not answer a metadata request "
            f"within {self.startup_timeout:.0f} s; last lines of its log:\n{self._log_tail()}"
        )

    def _log_tail(self, max_lines: int = 40) -> str:
        assert self.run_dir is not None and self._process is not None
        server_log = self.run_dir / "server.log"
        parts = [self._process.log_tail(max_lines)]
        if server_log.exists():
            lines = server_log.read_text(errors="replace").splitlines()
            parts.append("\n".join(lines[-max_lines:]))
        return "\n".join(part for part in parts if part.strip())

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the JVM (SIGTERM, SIGKILL after ``timeout`` seconds) and delete its temp dir."""
        if self._process is not None:
            self._process.stop(timeout=timeout)
            self._process = None
        if self.run_dir is not None:
            remove_run_dir(self.run_dir)
            self.run_dir = None
        self.port = None
        self.sasl_port = None
        self.ssl_port = None
        self.sasl_ssl_port = None
        self.controller_port = None
        if self._own_certificates:
            self.certificates = None


def _distinct_free_port(taken: set[int]) -> int:
    """A free loopback port not in ``taken`` (which it joins)."""
    port = free_loopback_port()
    while port in taken:
        port = free_loopback_port()
    taken.add(port)
    return port


def _java_program() -> str:
    return require_program("java", f"The Kafka broker needs Java 17 or newer. {_SETUP_HINT}")
