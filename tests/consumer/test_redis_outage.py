"""A Redis that stops answering pauses the pipeline; when it is back, nothing is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest
import redis

from consumer.pipeline import SegmentPipeline
from devstack.redis_server import RedisServer
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    drain,
    make_events,
    produce,
    read_state,
    settings_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def run_through_an_outage(
    kafka_bootstrap: str,
    topic: str,
    namespace: str,
    server: RedisServer,
    seed: int,
    stop: Callable[[redis.Redis], None],
    resume: Callable[[], None],
    down_seconds: float,
    while_down: Callable[[SegmentPipeline], None] | None = None,
) -> tuple[SegmentPipeline, redis.Redis]:
    """Run a pipeline over 12,000 events; after 2,000 records ``stop`` Redis, produce the
    second half, wait ``down_seconds``, ``resume`` it, and check the final state."""
    events = make_events(12_000, users=500, seed=seed)
    settings = settings_for(
        kafka_bootstrap,
        server.url,
        topic,
        namespace,
        **{"pipeline.batch_size": 200, "observability.heartbeat_seconds": 1.0},
    )
    settings.redis.socket_timeout_seconds = 1.0
    client = redis.Redis.from_url(server.url)
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    worker = threading.Thread(
        target=pipeline.run, kwargs={"max_records": len(events), "idle_exit_seconds": 30}
    )
    worker.start()
    try:
        produce(kafka_bootstrap, topic, as_records(events[:6000]))
        deadline = time.monotonic() + 60
        while int(client.hget(f"{namespace}:counters", "records") or 0) < 2000:
            assert time.monotonic() < deadline, "no progress before the outage"
            time.sleep(0.05)
        stop(client)
        produce(kafka_bootstrap, topic, as_records(events[6000:]))
        time.sleep(down_seconds)
        if while_down is not None:
            while_down(pipeline)
        resume()
        worker.join(timeout=120)
        assert not worker.is_alive(), "pipeline did not finish after Redis came back"
    finally:
        pipeline.stop()
        worker.join(timeout=30)
        pipeline.close()
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(client, namespace), expected)
    assert int(client.hget(f"{namespace}:counters", "applied") or 0) == len(events)
    return pipeline, client


def test_a_hung_redis_pauses_the_pipeline_and_loses_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    """SIGSTOP for 4 s: connections stay open and nothing answers."""
    with RedisServer() as server:
        pid = server.pid
        assert pid is not None
        run_through_an_outage(
            kafka_bootstrap,
            new_topic(),
            namespace,
            server,
            seed=21,
            stop=lambda _: os.kill(pid, signal.SIGSTOP),
            resume=lambda: os.kill(pid, signal.SIGCONT),
            down_seconds=4,
        )


def test_redis_stopped_for_ten_seconds_and_restarted_loses_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    """A Redis restart with persistence (SHUTDOWN SAVE, down 10 s, started again from its
    dump): the pipeline pauses, reconnects and ends with every event applied once."""

    def shut_down(client: redis.Redis) -> None:
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=True)  # what a restart with persistence does
        server.halt()

    def lag_grew(pipeline: SegmentPipeline) -> None:
        # Paused partitions fetch nothing, so librdkafka's statistics froze the gauge at its
        # value before the outage; the 6,000 records produced meanwhile must show.
        lag = pipeline.metrics.registry.get_sample_value(
            "streamseg_consumer_lag_records", {"topic": topic, "partition": "0"}
        )
        assert lag is not None and lag > 6000, lag

    topic = new_topic()
    with RedisServer() as server:
        pipeline, _ = run_through_an_outage(
            kafka_bootstrap,
            topic,
            namespace,
            server,
            seed=22,
            stop=shut_down,
            resume=server.resume,  # loads the dump from its directory
            down_seconds=10,
            while_down=lag_grew,
        )
    seen = pipeline.metrics.registry.get_sample_value("streamseg_redis_errors_total")
    assert seen and seen > 0  # the outage was seen


def test_a_write_whose_reply_is_lost_is_not_counted_twice(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """Every third transaction runs on the real server, then its connection drops before
    the reply is read: the retry finds the batch's applied offsets and does not redo it, so
    the counters equal the records (they were doubled by the retry before)."""
    topic = new_topic()
    events = make_events(3000, users=200, seed=11)
    produce(kafka_bootstrap, topic, as_records(events))
    settings = settings_for(
        kafka_bootstrap, redis_url, topic, namespace, **{"pipeline.batch_size": 250}
    )
    pipeline = SegmentPipeline(settings)
    real_transaction = pipeline.store._transaction
    calls = 0

    def transaction_then_lost_reply(commands: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        real_transaction(commands)
        if calls % 3 == 1:
            raise redis.ConnectionError("reply lost (injected after the write)")

    pipeline.store._transaction = transaction_then_lost_reply  # type: ignore[method-assign]
    pipeline.start()
    try:
        pipeline.run(max_records=len(events), idle_exit_seconds=20)
    finally:
        pipeline.close()

    assert calls > 3  # several lost replies were retried
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    counters = {
        k.decode(): int(v) for k, v in redis_client.hgetall(f"{namespace}:counters").items()
    }
    assert counters["records"] == len(events)
    assert counters["applied"] == len(events)
    assert counters.get("duplicates", 0) == 0


def test_a_redis_out_of_memory_pauses_the_pipeline_and_loses_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    """maxmemory below what Redis holds: every write is refused with OOM (and the batch's
    MULTI with EXECABORT) while reads still work. Not a bad command: the pipeline waits,
    and when memory is raised again every event is applied once."""
    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        pipeline, _ = run_through_an_outage(
            kafka_bootstrap,
            new_topic(),
            namespace,
            server,
            seed=23,
            stop=lambda client: client.config_set("maxmemory", 1),
            resume=lambda: admin.config_set("maxmemory", 0),
            down_seconds=3,
        )
    refused = pipeline.metrics.registry.get_sample_value("streamseg_redis_errors_total")
    assert refused and refused > 0  # the refusals were seen, and waited out


def test_a_command_redis_refuses_for_good_stops_the_pipeline(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """A key of the wrong type (a hand edit made the counters a string): WRONGTYPE is no
    outage, retrying cannot help, so the pipeline stops with the error instead of waiting
    forever. Redis runs the rest of that MULTI (states and applied offsets together), so once
    the key is mended a restart applies every event exactly once."""
    topic = new_topic()
    events = make_events(300, users=20, seed=24)
    produce(kafka_bootstrap, topic, as_records(events))
    redis_client.set(f"{namespace}:counters", "not a hash")
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    started = time.monotonic()
    try:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            pipeline.run(max_records=len(events), idle_exit_seconds=20)
    finally:
        pipeline.close()
    assert time.monotonic() - started < 15

    redis_client.delete(f"{namespace}:counters")
    drain(settings, len(events))
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
