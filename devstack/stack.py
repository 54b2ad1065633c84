"""`LocalStack`: the Kafka broker and Redis server that tests, the demo and benchmarks run against.

Either service can come from outside: when the service's own settings variables
``STREAMSEG_KAFKA__BOOTSTRAP_SERVERS`` / ``STREAMSEG_REDIS__URL`` are set (pydantic-settings, prefix
``STREAMSEG_``, nested delimiter ``__``), the stack checks that it answers and uses it instead of
starting its own.

    with LocalStack() as stack:
        stack.bootstrap_servers  # "127.0.0.1:40123"
        stack.redis_url          # "redis://127.0.0.1:40125/0"
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from devstack.exceptions import DevStackError, ServerStartError
from devstack.kafka import KafkaBroker, kafka_is_ready
from devstack.redis_server import RedisServer, redis_is_ready

#: Settings variable of the service naming the Kafka bootstrap servers.
KAFKA_ENV = "STREAMSEG_KAFKA__BOOTSTRAP_SERVERS"
#: Settings variable of the service naming the Redis URL.
REDIS_ENV = "STREAMSEG_REDIS__URL"
_EXTERNAL_TIMEOUT = 10.0  # seconds an external server gets to answer before we call it down
_REPO_ROOT = Path(__file__).resolve().parents[1]

if TYPE_CHECKING:
    from consumer.settings import Settings


def service_overrides(
    bootstrap: str, redis_url: str, topic: str, namespace: str
) -> dict[str, object]:
    """The settings, by dotted name, that point a ``streamseg`` process at ``topic`` and
    ``namespace``: servers, topics (``<topic>.segments``, ``<topic>.dlq``), group ``g-<topic>``.
    """
    return {
        "kafka.bootstrap_servers": bootstrap,
        "kafka.events_topic": topic,
        "kafka.segments_topic": f"{topic}.segments",
        "kafka.dead_letter_topic": f"{topic}.dlq",
        "kafka.group_id": f"g-{topic}",
        "redis.url": redis_url,
        "redis.namespace": namespace,
    }


def service_env(
    bootstrap: str,
    redis_url: str,
    topic: str,
    namespace: str,
    settings: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """``os.environ`` plus what a ``streamseg`` subprocess needs to read ``topic`` and write
    ``namespace`` (`service_overrides`), and the repository on ``PYTHONPATH``. ``settings``
    adds or overrides settings by dotted name, as in `consumer.settings.load_settings`, e.g.
    ``{"pipeline.batch_size": 300}`` becomes ``STREAMSEG_PIPELINE__BATCH_SIZE=300``.
    """
    pythonpath = [str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, pythonpath))}
    overrides = service_overrides(bootstrap, redis_url, topic, namespace) | dict(settings or {})
    for dotted, value in overrides.items():
        section, _, name = dotted.partition(".")
        env[f"STREAMSEG_{section.upper()}__{name.upper()}"] = str(value)
    return env


def service_settings(
    bootstrap: str, redis_url: str, topic: str, namespace: str, **extra: object
) -> Settings:
    """The settings a ``streamseg`` process started with `service_env` reads, for the caller's
    own use (creating the topics, reading the namespace, running a pipeline in process).
    ``extra`` adds or overrides settings by dotted name, as ``service_env``'s ``settings``."""
    from consumer.settings import load_settings  # the service, only when asked for

    overrides = service_overrides(bootstrap, redis_url, topic, namespace) | extra
    return load_settings(None, **overrides)


class LocalStack:
    """Start (or adopt from the environment) a Kafka broker and a Redis server.

    ``kafka`` / ``redis`` say which services `start` (and so ``with``) brings up; `start_kafka`
    and `start_redis` bring one up later, on demand. ``use_env=False`` ignores the settings
    variables and always starts local servers. ``kafka_num_partitions`` is the broker's default
    partition count for auto-created topics.
    """

    def __init__(
        self,
        *,
        kafka: bool = True,
        redis: bool = True,
        use_env: bool = True,
        kafka_num_partitions: int = 1,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.want_kafka = kafka
        self.want_redis = redis
        self.use_env = use_env
        self.kafka_num_partitions = kafka_num_partitions
        self._environ = os.environ if environ is None else environ
        self._broker: KafkaBroker | None = None
        self._redis: RedisServer | None = None
        self._bootstrap_servers: str | None = None
        self._redis_url: str | None = None
        #: Start-up time in seconds per service ("kafka", "redis"), for reports.
        self.startup_seconds: dict[str, float] = {}
        #: Where each service came from: "started" or the name of the environment variable.
        self.origin: dict[str, str] = {}

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bring up the services chosen in the constructor."""
        if self.want_kafka:
            self.start_kafka()
        if self.want_redis:
            self.start_redis()

    def start_kafka(self) -> str:
        """Start (or adopt) the broker if not done yet; return its bootstrap servers."""
        if self._bootstrap_servers is not None:
            return self._bootstrap_servers
        began = time.monotonic()
        external = self._environ.get(KAFKA_ENV) if self.use_env else None
        if external:
            if not kafka_is_ready(external, timeout=_EXTERNAL_TIMEOUT):
                raise ServerStartError(
                    f"{KAFKA_ENV}={external} is set but no Kafka broker answered a metadata "
                    f"request there within {_EXTERNAL_TIMEOUT:.0f} s; unset it to start a local one"
                )
            self._bootstrap_servers = external
            self.origin["kafka"] = KAFKA_ENV
        else:
            broker = KafkaBroker(num_partitions=self.kafka_num_partitions)
            broker.start()
            self._broker = broker
            self._bootstrap_servers = broker.bootstrap_servers
            self.origin["kafka"] = "started"
        self.startup_seconds["kafka"] = time.monotonic() - began
        return self._bootstrap_servers

    def start_redis(self) -> str:
        """Start (or adopt) the Redis server if not done yet; return its URL."""
        if self._redis_url is not None:
            return self._redis_url
        began = time.monotonic()
        external = self._environ.get(REDIS_ENV) if self.use_env else None
        if external:
            if not redis_is_ready(external, timeout=_EXTERNAL_TIMEOUT):
                raise ServerStartError(
                    f"{REDIS_ENV}={external} is set but no Redis answered PING there (timeout "
                    f"{_EXTERNAL_TIMEOUT:.0f} s); unset it to start a local one"
                )
            self._redis_url = external
            self.origin["redis"] = REDIS_ENV
        else:
            server = RedisServer()
            server.start()
            self._redis = server
            self._redis_url = server.url
            self.origin["redis"] = "started"
        self.startup_seconds["redis"] = time.monotonic() - began
        return self._redis_url

    @property
    def bootstrap_servers(self) -> str:
        """Kafka ``host:port[,host:port]``; raises `DevStackError` if Kafka was not started."""
        if self._bootstrap_servers is None:
            raise DevStackError("Kafka is not part of this LocalStack; call start_kafka() first")
        return self._bootstrap_servers

    @property
    def redis_url(self) -> str:
        """Redis URL; raises `DevStackError` if Redis was not started."""
        if self._redis_url is None:
            raise DevStackError("Redis is not part of this LocalStack; call start_redis() first")
        return self._redis_url

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the servers this stack started itself (adopted ones are not ours)."""
        found: dict[str, int] = {}
        if self._broker is not None and self._broker.pid is not None:
            found["kafka"] = self._broker.pid
        if self._redis is not None and self._redis.pid is not None:
            found["redis"] = self._redis.pid
        return found

    def env(self) -> dict[str, str]:
        """The service's settings variables pointing at this stack, e.g. for a subprocess."""
        variables: dict[str, str] = {}
        if self._bootstrap_servers is not None:
            variables[KAFKA_ENV] = self._bootstrap_servers
        if self._redis_url is not None:
            variables[REDIS_ENV] = self._redis_url
        return variables

    def stop(self) -> None:
        """Stop the servers this stack started (never adopted ones); idempotent."""
        broker, server = self._broker, self._redis
        self._broker = self._redis = None
        self._bootstrap_servers = self._redis_url = None
        try:
            if broker is not None:
                broker.stop()
        finally:
            if server is not None:
                server.stop()
