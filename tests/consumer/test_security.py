"""Credentials: Kafka SASL/SCRAM-SHA-256 and a least-privilege Redis ACL user.

The pipeline authenticates with the settings alone (``kafka.security_protocol``,
``kafka.sasl_*``, a ``redis.url`` with user and password), a wrong password stops start-up
with a clear, bounded error, and no secret ever reaches a log line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.redis_keys import KeyLayout
from devstack.kafka import KafkaBroker
from devstack.redis_server import RedisServer
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    make_events,
    produce,
    read_state,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRAM_USER = "streamseg"
SCRAM_PASSWORD = "kafka-Pw-" + uuid.uuid4().hex  # unique: a hit in a log cannot be chance


def redis_acl_rule(user: str, password: str, namespace: str) -> str:
    """The least-privilege ACL rule of the service (``redis.conf`` ``user`` line, without
    ``user``): its namespace's keys and model keys, and only the commands it sends."""
    return (
        f"{user} on >{password} resetkeys ~{namespace}:* ~{{{namespace}:model}}:* "
        "resetchannels -@all "
        "+ping +get +mget +set +mset +multi +exec +hget +hmget +hgetall +hset +hdel "
        "+hincrby +lpush +ltrim +lrange +zadd +zscore +zrevrange +exists +scan "
        "+evalsha +script|load +pexpire +del +watch +unwatch"
    )


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m consumer.cli --log-level INFO ARGS`` with ``env``; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", "--log-level", "INFO", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def service_env(bootstrap: str, redis_url: str, topic: str, namespace: str) -> dict[str, str]:
    return {
        **os.environ,
        "STREAMSEG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STREAMSEG_KAFKA__EVENTS_TOPIC": topic,
        "STREAMSEG_KAFKA__SEGMENTS_TOPIC": f"{topic}.segments",
        "STREAMSEG_KAFKA__DEAD_LETTER_TOPIC": f"{topic}.dlq",
        "STREAMSEG_KAFKA__GROUP_ID": f"g-{topic}",
        "STREAMSEG_REDIS__URL": redis_url,
        "STREAMSEG_REDIS__NAMESPACE": namespace,
        "STREAMSEG_PIPELINE__BATCH_SIZE": "500",
        "STREAMSEG_OBSERVABILITY__METRICS_PORT": "0",
    }


# -- Kafka SASL/SCRAM -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scram_broker() -> Iterator[KafkaBroker]:
    """A private broker with a SASL_PLAINTEXT listener accepting SCRAM-SHA-256."""
    with KafkaBroker(scram_users={SCRAM_USER: SCRAM_PASSWORD}) as broker:
        yield broker


def scram_env(
    broker: KafkaBroker, redis_url: str, topic: str, namespace: str, password: str
) -> dict[str, str]:
    return {
        **service_env(broker.sasl_bootstrap_servers, redis_url, topic, namespace),
        "STREAMSEG_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMSEG_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "STREAMSEG_KAFKA__SASL_USERNAME": SCRAM_USER,
        "STREAMSEG_KAFKA__SASL_PASSWORD": password,
    }


def test_pipeline_authenticates_to_kafka_with_scram(
    scram_broker: KafkaBroker, redis_url: str, redis_client: redis.Redis, namespace: str
) -> None:
    topic = f"scram-{namespace}"
    admin = AdminClient({"bootstrap.servers": scram_broker.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    events = make_events(5_000, users=300, seed=3)
    produce(scram_broker.bootstrap_servers, topic, as_records(events))
    env = scram_env(scram_broker, redis_url, topic, namespace, SCRAM_PASSWORD)
    done = run_cli(env, "run", "--max-events", str(len(events)), "--idle-exit-seconds", "10")
    assert done.returncode == 0, done.stderr
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace, list(expected)), expected)
    assert "started: topic=" in done.stderr  # INFO lines were logged ...
    assert SCRAM_PASSWORD not in done.stderr + done.stdout  # ... and none holds the secret


def test_a_wrong_kafka_password_fails_start_up_with_a_clear_bounded_error(
    scram_broker: KafkaBroker, redis_url: str, namespace: str
) -> None:
    topic = f"scram-bad-{namespace}"
    wrong = "wrong-" + uuid.uuid4().hex
    env = scram_env(scram_broker, redis_url, topic, namespace, wrong)
    began = time.monotonic()
    done = run_cli(env, "run", timeout=75)
    seconds = time.monotonic() - began
    assert done.returncode == 2, done.stderr
    assert "streamseg: error: cannot reach Kafka" in done.stderr
    assert "check kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password" in done.stderr
    assert "SASL authentication error" in done.stderr  # librdkafka names the cause
    assert "invalid credentials" in done.stderr
    assert wrong not in done.stderr + done.stdout
    assert seconds < 70


# -- Redis password and least-privilege ACL user ----------------------------------------------


def test_pipeline_and_trainer_work_with_a_least_privilege_redis_acl_user(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    topic = new_topic(partitions=2)
    admin_password = "admin-" + uuid.uuid4().hex
    user_password = "svc-" + uuid.uuid4().hex
    rule = redis_acl_rule("streamseg", user_password, namespace)
    events = make_events(8_000, users=600, seed=17)
    first, second = events[:6_000], events[6_000:]
    with RedisServer(password=admin_password, acl_users=[rule]) as server:
        admin = redis.Redis.from_url(server.url)
        env = {
            **service_env(
                kafka_bootstrap, server.user_url("streamseg", user_password), topic, namespace
            ),
            "STREAMSEG_TRAINER__BOOTSTRAP_ROWS": "500",
            "STREAMSEG_TRAINER__N_CLUSTERS": "4",
            # a short lease: the trainer renews it (a Lua script) several times while it runs
            "STREAMSEG_TRAINER__LEASE_SECONDS": "2",
        }
        logs = ""
        produce(kafka_bootstrap, topic, as_records(first))
        done = run_cli(env, "run", "--max-events", str(len(first)), "--idle-exit-seconds", "10")
        logs += done.stderr + done.stdout
        assert done.returncode == 0, done.stderr
        done = run_cli(env, "train", "--max-seconds", "6")
        logs += done.stderr + done.stdout
        assert done.returncode == 0, done.stderr
        assert "published model v1" in done.stderr
        produce(kafka_bootstrap, topic, as_records(second))
        done = run_cli(env, "run", "--max-events", str(len(second)), "--idle-exit-seconds", "10")
        logs += done.stderr + done.stdout
        assert done.returncode == 0, done.stderr
        done = run_cli(env, "status", "--json")
        logs += done.stderr + done.stdout
        assert done.returncode == 0, done.stderr

        # Nothing the services sent was refused by the ACL ...
        assert admin.acl_log() == [], admin.acl_log()
        expected = recompute(canonical(events), FeatureConfig())
        assert_state_matches(read_state(admin, namespace, list(expected)), expected)
        user = second[-1]["user_id"]
        record = orjson.loads(admin.get(KeyLayout(namespace).segment(user)) or b"{}")
        assert record.get("model_version") == 1
        # ... and the user can do nothing beyond them.
        svc = redis.Redis.from_url(server.user_url("streamseg", user_password))
        with pytest.raises(redis.exceptions.NoPermissionError):
            svc.get("other-namespace:{u1}:state")
        for forbidden in (svc.flushall, svc.config_get, lambda: svc.keys("*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(server.user_url("streamseg", "nope")).ping()
    for secret in (user_password, admin_password):
        assert secret not in logs
