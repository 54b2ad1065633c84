"""Exactly-once effect: SIGKILL the consumer at random points, restart, compare with a
recomputation from all events."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis

from devstack.stack import service_env
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


def consumer_env(
    kafka_bootstrap: str, redis_url: str, topic: str, namespace: str
) -> dict[str, str]:
    return service_env(
        kafka_bootstrap,
        redis_url,
        topic,
        namespace,
        {
            "pipeline.batch_size": 300,
            # static membership: a restarted consumer gets its partitions back at once
            "kafka.group_instance_id": f"member-{topic}",
        },
    )


def start_consumer(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "--log-level", "WARNING", "run", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_at_random_points_neither_loses_nor_doubles_an_event(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic(partitions=2)
    events = make_events(80_000, users=2_000, seed=42)
    produce(kafka_bootstrap, topic, as_records(events))
    env = consumer_env(kafka_bootstrap, redis_url, topic, namespace)
    rng = random.Random(42)
    counters_key = f"{namespace}:counters"
    kills = 0
    # Up to 20 kills, each while events remain: the last run must still have work to do.
    # `applied`, not `records`: a killed batch is read again and counted again in `records`.
    while kills < 20 and int(redis_client.hget(counters_key, "applied") or 0) < 0.9 * len(events):
        proc = start_consumer(env)
        # Kill only once the consumer is applying (a kill during start-up proves nothing),
        # after a random number of further records: anywhere in a batch's read-apply-write.
        deadline = time.monotonic() + 60
        start = int(redis_client.hget(counters_key, "records") or 0)
        target = start + rng.randint(1, 3000)
        while int(redis_client.hget(counters_key, "records") or 0) < target:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "consumer made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 10, f"only {kills} kills before the stream ran out: make it longer"

    final = start_consumer(env, "--idle-exit-seconds", "8")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()

    expected = recompute(canonical(events), FeatureConfig())
    actual = read_state(redis_client, namespace)
    assert_state_matches(actual, expected)
    applied = int(redis_client.hget(counters_key, "applied") or 0)
    assert applied == len(events)  # each event's effect counted once, across all kills
