"""Shared fixtures: a real Kafka broker and Redis server, started once per session and only when a
test asks for them, with per-test isolation by unique topic names and Redis key prefixes.

Fixtures (server ones start their server on first use; ``pytest tests/model`` starts nothing):

- ``local_stack``   session  `LocalStack` with Kafka and Redis running
- ``kafka_bootstrap`` session  ``"127.0.0.1:<port>"``
- ``kafka_admin``   session  confluent_kafka ``AdminClient``
- ``new_topic``     function ``new_topic(partitions=1) -> str``: a fresh topic, deleted afterwards
- ``redis_url``     session  ``"redis://127.0.0.1:<port>/0"``
- ``redis_client``  function ``redis.Redis`` (bytes in, bytes out)
- ``namespace``     function unique key prefix ``"t-<8 hex>"``; its keys are deleted afterwards
- ``redis_cluster_url`` session  one node of a 3-master Redis Cluster (its own servers)
- ``server_env``    session  ``os.environ`` naming both servers, for ``streamseg`` subprocesses

Set ``STREAMSEG_KAFKA__BOOTSTRAP_SERVERS`` / ``STREAMSEG_REDIS__URL`` to run against servers you
started yourself (``python -m devstack up``). A server that cannot start fails the tests that need
it, naming the cause; it never skips them.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from devstack.exceptions import DevStackError
from devstack.redis_cluster import RedisClusterServer
from devstack.stack import KAFKA_ENV, REDIS_ENV, LocalStack

_KAFKA_FIXTURES = frozenset({"local_stack", "kafka_bootstrap", "kafka_admin", "new_topic"})
_REDIS_FIXTURES = frozenset({"local_stack", "redis_url", "redis_client", "namespace"})
_TOPIC_READY_TIMEOUT = 30.0  # seconds for a created topic to show leaders for all partitions

# The session's stack, kept here (not only in the fixture) so the summary hook can report timings.
_session_stack: LocalStack | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the servers their fixtures need, so ``-m "not kafka"`` selects correctly even
    where a test forgot the marker."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if names & _REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report where the servers came from and how long they took to start, in seconds."""
    if _session_stack is None or not _session_stack.startup_seconds:
        return
    parts = [
        f"{service} {seconds:.1f} s ({_session_stack.origin.get(service, '?')})"
        for service, seconds in _session_stack.startup_seconds.items()
    ]
    terminalreporter.write_line("devstack start-up: " + ", ".join(parts))


@pytest.fixture(scope="session")
def _devstack() -> Iterator[LocalStack]:
    """The session's stack with nothing started: the server fixtures start what they need."""
    global _session_stack
    stack = LocalStack(kafka=False, redis=False)
    _session_stack = stack
    with stack:
        yield stack


@pytest.fixture(scope="session")
def kafka_bootstrap(_devstack: LocalStack) -> str:
    """Bootstrap servers of the session's Kafka broker (started on first use)."""
    try:
        return _devstack.start_kafka()
    except DevStackError as exc:
        reason = str(exc)  # fail outside the except: no chained traceback around the message
    pytest.fail(f"the Kafka broker for the tests could not start: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def redis_url(_devstack: LocalStack) -> str:
    """URL of the session's Redis server (started on first use)."""
    try:
        return _devstack.start_redis()
    except DevStackError as exc:
        reason = str(exc)  # fail outside the except: no chained traceback around the message
    pytest.fail(f"the Redis server for the tests could not start: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """URL of one node of a 3-master Redis Cluster (`devstack.redis_cluster`), started on
    first use and stopped at the end of the session. Mark tests using it ``redis``."""
    cluster = RedisClusterServer(masters=3)
    try:
        cluster.start()
    except DevStackError as exc:
        reason = str(exc)  # fail outside the except: no chained traceback around the message
    else:
        try:
            yield cluster.url
        finally:
            cluster.stop()
        return
    pytest.fail(f"the Redis cluster for the tests could not start: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def local_stack(_devstack: LocalStack, kafka_bootstrap: str, redis_url: str) -> LocalStack:
    """The session's `LocalStack` with both Kafka and Redis running."""
    return _devstack


@pytest.fixture(scope="session")
def server_env(kafka_bootstrap: str, redis_url: str) -> dict[str, str]:
    """This process's environment plus the settings that point a subprocess (``streamseg``, a
    benchmark or script) at the session's Kafka and Redis."""
    return {**os.environ, KAFKA_ENV: kafka_bootstrap, REDIS_ENV: redis_url}


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[AdminClient]:
    """An AdminClient on the session's broker."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    yield admin
    # Destroy it while the broker still runs: a client outliving the broker fills the end of
    # the test output with librdkafka connection errors.
    del admin
    gc.collect()


def _wait_for_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    deadline = time.monotonic() + _TOPIC_READY_TIMEOUT
    while True:
        metadata = admin.list_topics(topic=topic, timeout=5.0).topics.get(topic)
        if (
            metadata is not None
            and metadata.error is None
            and len(metadata.partitions) == partitions
            and all(p.leader >= 0 for p in metadata.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"topic {topic} has no leader for all {partitions} partitions after "
                f"{_TOPIC_READY_TIMEOUT:.0f} s"
            )
        time.sleep(0.05)


@pytest.fixture
def new_topic(
    kafka_admin: AdminClient, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Factory ``new_topic(partitions=1) -> str``: creates a uniquely named topic (named after the
    test) and returns once every partition has a leader. Topics are deleted after the test."""
    created: list[str] = []
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make(partitions: int = 1) -> str:
        name = f"{stem}-{uuid.uuid4().hex[:8]}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        futures[name].result(timeout=30)
        created.append(name)
        _wait_for_topic(kafka_admin, name, partitions)
        return name

    yield make
    if created:
        # Keep the broker lean over a long session; not waiting long: deletion is housekeeping.
        for future in kafka_admin.delete_topics(created, operation_timeout=10).values():
            with contextlib.suppress(KafkaException):
                future.result(timeout=15)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's Redis returning bytes (``decode_responses=False``)."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(redis_client: redis.Redis) -> Iterator[str]:
    """A unique Redis key prefix for one test, ``t-<8 hex>``; matching keys are deleted after it.

    Keys are matched anywhere in the name (``*t-xxxxxxxx*``), so layouts that put the namespace
    inside a hash tag (``{t-xxxxxxxx:user}``) are cleaned up too.
    """
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    yield prefix
    batch: list[bytes] = []
    for key in redis_client.scan_iter(match=f"*{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            redis_client.unlink(*batch)
            batch.clear()
    if batch:
        redis_client.unlink(*batch)
