"""/healthz and /readyz of a running consumer (consumer/health.py) when its Redis goes away
and comes back (the assignment case: test_metrics)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

import orjson
import pytest

from consumer.health import MetricsServer
from consumer.pipeline import SegmentPipeline
from devstack.redis_server import RedisServer
from tests.consumer.pipeline_support import as_records, make_events, produce, settings_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_readyz_names_redis_while_it_is_down_and_healthz_stays_alive(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    """A probe that fails (a PING to a Redis that is gone raises) is a failed check: 503,
    with the body naming it; the process itself stays alive (healthz 200)."""
    topic = new_topic()
    events = make_events(100, users=10, seed=51)
    produce(kafka_bootstrap, topic, as_records(events))
    with RedisServer() as server:
        settings = settings_for(kafka_bootstrap, server.url, topic, namespace)
        pipeline = SegmentPipeline(settings)
        metrics = MetricsServer(
            pipeline.metrics.registry, pipeline.readiness_checks(), port=0, host="127.0.0.1"
        ).start()
        pipeline.start()
        try:
            pipeline.run(max_records=len(events), idle_exit_seconds=20)
            assert get(metrics.port, "/readyz") == (
                200,
                {"ready": True, "checks": {"assigned": True, "redis": True, "model": True}},
            )
            server.halt()
            started = time.monotonic()
            status, body = get(metrics.port, "/readyz")
            assert time.monotonic() - started < 3  # the probe's own short timeout
            assert (status, body["ready"]) == (503, False)
            assert body["checks"] == {"assigned": True, "redis": False, "model": True}
            assert get(metrics.port, "/healthz") == (200, {"alive": True})
            server.resume()
            deadline = time.monotonic() + 15
            while get(metrics.port, "/readyz")[0] != 200:
                assert time.monotonic() < deadline, "readyz did not recover with Redis"
                time.sleep(0.2)
        finally:
            pipeline.close()
            metrics.stop()


def test_healthz_says_a_batch_loop_that_stopped_polling_is_not_alive(
    kafka_bootstrap: str, redis_url: str, new_topic: Callable[..., str], namespace: str
) -> None:
    """/healthz was answered by a thread and said 200 whatever the batch loop did: a loop
    stuck past max.poll.interval.ms (its partitions already given away) looked healthy."""
    topic = new_topic()
    produce(kafka_bootstrap, topic, as_records(make_events(50, users=5, seed=52)))
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    pipeline = SegmentPipeline(settings)
    metrics = MetricsServer(
        pipeline.metrics.registry,
        pipeline.readiness_checks(),
        port=0,
        host="127.0.0.1",
        liveness=pipeline.liveness,
    ).start()
    try:
        assert get(metrics.port, "/healthz") == (200, {"alive": True})  # not started yet
        pipeline.start()
        pipeline.run(max_records=50, idle_exit_seconds=20)
        status, body = get(metrics.port, "/healthz")
        assert status == 200 and 0 <= float(body["seconds_since_poll"]) < 30  # type: ignore[arg-type]
        polled = pipeline.metrics.registry.get_sample_value("streamseg_last_poll_timestamp_seconds")
        assert polled is not None and abs(polled - time.time()) < 30
        pipeline.metrics.last_poll_at = time.time() - 301  # max.poll.interval.ms is 300 s
        status, body = get(metrics.port, "/healthz")
        assert (status, body["alive"]) == (503, False)
    finally:
        pipeline.close()
        metrics.stop()
