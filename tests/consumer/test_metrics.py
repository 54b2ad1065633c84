"""The consumer's /metrics, /readyz and heartbeat against the real broker and Redis: what an
operator scrapes must agree with what the stream contained."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np
import orjson
import pytest
import redis
from confluent_kafka import TopicPartition
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import consumer.metrics
from consumer.health import MetricsServer
from consumer.metrics import PipelineMetrics, TrainerMetrics, consumer_lag_from_stats
from consumer.model_store import ModelStore
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from consumer.segment_record import iso_ms
from consumer.settings import TrainerSettings
from consumer.status import deployment_status, render_status
from consumer.trainer import Trainer
from model.events import RejectReason
from model.features import FEATURE_NAMES
from model.model_format import SegmentModel
from tests.consumer.pipeline_support import (
    as_records,
    drain,
    make_events,
    produce,
    push_training_rows,
    settings_for,
)

BAD: list[tuple[bytes | None, bytes]] = [
    (b"u1", b"not json"),
    (b"u1", b"still not json"),
    (b"u1", b"[1, 2]"),
    (b"u2", orjson.dumps({"event_id": "x", "user_id": "u1", "type": "view", "ts": 1767225600000})),
    (b"u1", b"{" * 70_000),
]
UNMAPPED = (
    b"u1",
    orjson.dumps({"event_id": "y", "user_id": "u1", "type": "search", "ts": 1767225600000}),
)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Sample name and sorted labels -> value, from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def status_code(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_scraped_counters_agree_with_the_stream_and_readyz_follows_assignment(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic(partitions=2)
    good = make_events(600, users=40, seed=3)
    produce(kafka_bootstrap, topic, as_records(good) + BAD + [UNMAPPED])
    total = len(good) + len(BAD) + 1
    settings = settings_for(
        kafka_bootstrap,
        redis_url,
        topic,
        namespace,
        **{"pipeline.batch_size": 100, "observability.heartbeat_seconds": 0.2},
    )
    pipeline = SegmentPipeline(settings)
    server = MetricsServer(
        pipeline.metrics.registry, pipeline.readiness_checks(), port=0, host="127.0.0.1"
    ).start()
    try:
        assert status_code(server.port, "/healthz") == 200
        assert status_code(server.port, "/readyz") == 503  # not started: nothing assigned
        pipeline.start()
        pipeline.run(max_records=total, idle_exit_seconds=20)
        assert status_code(server.port, "/readyz") == 200

        m = scrape(server.port)
        assert m[("streamseg_records_consumed_total", ())] == total
        assert m[("streamseg_records_applied_total", ())] == len(good)
        assert m[("streamseg_records_ignored_total", ())] == 1
        assert m[("streamseg_records_duplicate_total", ())] == 0
        dead = {
            dict(labels)["reason"]: value
            for (name, labels), value in m.items()
            if name == "streamseg_records_dead_lettered_total"
        }
        seen = {"not_json": 2, "not_object": 1, "key_mismatch": 1, "oversize": 1}
        # Every reason has its series from the start (0 for those not seen): an alert's
        # rate() sees the first burst after a restart too.
        assert dead == {reason: seen.get(reason, 0) for reason in get_args(RejectReason)}
        batches = m[("streamseg_batches_total", ())]
        assert batches >= total / 100
        assert m[("streamseg_batch_size_records_count", ())] == batches
        assert m[("streamseg_batch_size_records_sum", ())] == total
        assert m[("streamseg_batch_duration_seconds_count", ())] == batches
        assert m[("streamseg_produce_to_segment_seconds_count", ())] >= batches
        assert m[("streamseg_assigned_partitions", ())] == 2
        assert m[("streamseg_model_version", ())] == 0  # cold start
        latest_applied = max(e["ts"] for e in good) / 1000.0
        assert m[("streamseg_watermark_timestamp_seconds", ())] == latest_applied
        served = (("events_topic", topic), ("group_id", f"g-{topic}"), ("namespace", namespace))
        assert m[("streamseg_info", served)] == 1
        assert m[("streamseg_redis_errors_total", ())] == 0

        # Once offsets are committed, librdkafka's statistics report zero lag per partition.
        assert pipeline.consumer is not None
        pipeline.consumer.commit(asynchronous=False)
        deadline = time.monotonic() + 15
        lags: dict[str, float] = {}
        while time.monotonic() < deadline:
            pipeline.consumer.poll(0.2)  # serves the statistics callback; the topic is drained
            lags = {
                dict(labels)["partition"]: value
                for (name, labels), value in scrape(server.port).items()
                if name == "streamseg_consumer_lag_records"
            }
            if lags == {"0": 0, "1": 0}:
                break
        assert lags == {"0": 0, "1": 0}

        # The heartbeat names this member and its partitions; status reads it back.
        pipeline.run(idle_exit_seconds=0.5)  # idle loop: one more heartbeat after the last batch
        beats = {
            k.decode(): orjson.loads(v)
            for k, v in redis_client.hgetall(KeyLayout(namespace).consumers).items()
        }
        assert len(beats) == 1
        (beat,) = beats.values()
        assert beat["partitions"] == [f"{topic}[0]", f"{topic}[1]"]
        assert beat["last_batch_at"] is not None and beat["records"] == total

        # A dropped segment is listed while users hold it, not once they all moved.
        redis_client.hset(KeyLayout(namespace).segment_sizes, mapping={"7": 0, "8": 5})
        status = deployment_status(settings)
        assert [s["segment_id"] for s in status["segments"]] == [8]
        assert status["live_namespace"] == namespace  # no pointer on this Redis's test keys
        assert status["counters"]["records"] == total
        assert status["counters"]["dead_lettered"] == len(BAD)
        assert [(r["partition"], r["committed"], r["lag"]) for r in status["lag"]] == [
            (0, status["lag"][0]["high_watermark"], 0),
            (1, status["lag"][1]["high_watermark"], 0),
        ]
        assert sum(r["high_watermark"] for r in status["lag"]) == total
        assert status["model_version"] is None
        assert status["watermark"] == latest_applied
        text = render_status(status)
        assert "cold start" in text and f"{topic}[1]" in text
        assert f"event clock    {iso_ms(latest_applied * 1000)} (the latest event time" in text
    finally:
        pipeline.close()
        server.stop()
    # A clean stop removes the member's heartbeat.
    assert not redis_client.hgetall(KeyLayout(namespace).consumers)


def test_status_leaves_out_a_heartbeat_that_is_not_one(
    kafka_bootstrap: str, redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    """A hand-edited member of ``<ns>:consumers`` is skipped, not a traceback of `status`."""
    beat: dict[str, object] = {
        "last_batch_at": None,
        "seen_at": 1.0,
        "partitions": [],
        "host": "vm",
        "pid": 1,
    }
    redis_client.hset(
        KeyLayout(namespace).consumers,
        mapping={
            "good": orjson.dumps({**beat, "records": 0}),
            "not-json": b"{",
            "a-list": b"[1]",
            "no-records": orjson.dumps(beat),
            "nan": orjson.dumps({**beat, "records": 0, "seen_at": "NaN"}),
        },
    )
    settings = settings_for(kafka_bootstrap, redis_url, f"{namespace}-events", namespace)
    status = deployment_status(settings)
    assert list(status["consumers"]) == ["good"]
    assert "vm:1" in render_status(status)


def test_trainer_metrics_follow_published_versions(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bootstrap then one update: two versions counted, inertia, centre movement and the share
    of users changing segment set from the trainer's own rows."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(0)

    def push(rows: int, shift: float) -> None:
        X = rng.lognormal(mean=1.0 + shift, sigma=1.0, size=(rows, len(FEATURE_NAMES)))
        push_training_rows(redis_client, keys, X)

    config = TrainerSettings(
        n_clusters=3, bootstrap_rows=300, update_rows=200, rescale_tolerance=100.0
    )
    trainer = Trainer(redis_client, keys, config)
    trainer.resume()
    trained_on: list[np.ndarray] = []
    real_model_change = consumer.metrics.model_change

    def spy(previous: SegmentModel, current: SegmentModel, X: np.ndarray) -> tuple[float, float]:
        trained_on.append(X.copy())
        return real_model_change(previous, current, X)

    monkeypatch.setattr(consumer.metrics, "model_change", spy)
    push(600, 0.0)
    assert trainer.step() is not None
    push(400, 0.3)
    v2 = trainer.step()
    assert v2 is not None

    samples = {
        s.name: s.value for family in trainer.metrics.registry.collect() for s in family.samples
    }
    assert samples["streamseg_trainer_models_published_total"] == 2
    assert samples["streamseg_trainer_model_version"] == 2
    assert samples["streamseg_trainer_inertia"] == pytest.approx(v2.metrics.inertia)
    assert 0 < samples["streamseg_trainer_centre_movement"] < 10
    # The share, recomputed here from the two published versions and the update's rows.
    [X] = trained_on
    v1 = ModelStore(redis_client, keys).load(1)
    assert len(X) >= config.update_rows
    share = float(np.mean(v1.assign(X)[0] != v2.assign(X)[0]))
    assert samples["streamseg_trainer_users_changed_ratio"] == pytest.approx(share)
    assert abs(samples["streamseg_trainer_last_publish_timestamp_seconds"] - time.time()) < 60
    # Fewer rows than an update needs: the gauge says how many wait, and nothing is published.
    push(60, 0.3)
    assert trainer.step() is None
    pending = trainer.metrics.registry.get_sample_value("streamseg_trainer_rows_pending")
    assert pending == 60


def test_the_lag_gauge_names_only_assigned_partitions() -> None:
    """After a rebalance librdkafka's statistics still list a revoked partition with its last
    lag; exported, it showed that lag forever beside the new owner's."""
    metrics = PipelineMetrics()

    def exported() -> dict[str, float]:
        return {
            s.labels["partition"]: s.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            if family.name == "streamseg_consumer_lag_records"
            for s in family.samples
        }

    stats = {
        "topics": {"events": {"partitions": {"0": {"consumer_lag": 30}, "1": {"consumer_lag": 4}}}}
    }
    metrics.set_assignment({("events", 0), ("events", 1)})
    metrics.observe_kafka_stats(orjson.dumps(stats).decode())
    assert exported() == {"0": 30, "1": 4}
    metrics.set_assignment({("events", 1)})  # partition 0 revoked: gone at once
    assert exported() == {"1": 4}
    metrics.observe_kafka_stats(orjson.dumps(stats).decode())  # and stays gone
    assert exported() == {"1": 4}


def test_lag_counts_from_the_stored_offset_not_the_last_commit() -> None:
    """Offsets are stored after each Redis write and committed every 5 s: the lag from the
    commit showed ~10,000 records at 4,000 events/s while every record was in Redis within
    0.25 s. The fields as librdkafka 2.x reports them for a consumer that stored 1,000
    offsets and committed none yet."""
    partition = {
        "consumer_lag": -1,
        "consumer_lag_stored": 0,
        "stored_offset": 1000,
        "committed_offset": -1001,
        "hi_offset": 1000,
    }
    stats = {"topics": {"events": {"partitions": {"0": partition, "-1": {"consumer_lag": -1}}}}}
    assert consumer_lag_from_stats(orjson.dumps(stats)) == {("events", 0): 0}
    older = {"topics": {"events": {"partitions": {"0": {"consumer_lag": 7}}}}}  # no _stored
    assert consumer_lag_from_stats(orjson.dumps(older)) == {("events", 0): 7}


def test_the_lag_gauge_reads_zero_once_records_are_in_redis_though_not_yet_committed(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
) -> None:
    """The same as the test above, with a real broker's statistics: 1,000 records written
    to Redis and stored, the last commit 1,000 records back."""
    topic = new_topic()
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    settings.observability.heartbeat_seconds = 0.5  # librdkafka statistics twice a second
    settings.kafka.extra = {"auto.commit.interval.ms": "600000"}  # no commit but close()'s
    produce(kafka_bootstrap, topic, as_records(make_events(500, users=50, seed=5)))
    drain(settings, 500)  # closing commits offset 500
    produce(kafka_bootstrap, topic, as_records(make_events(1000, users=50, seed=6)))

    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=1000, idle_exit_seconds=20)
        assert pipeline.totals.records == 1000
        pipeline.run(idle_exit_seconds=2.0)  # idle polls serve the statistics callback
        assert pipeline.consumer is not None
        committed = pipeline.consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed[0].offset == 500  # the commit is behind: a lag from it says 1,000
        lag = pipeline.metrics.registry.get_sample_value(
            "streamseg_consumer_lag_records", {"topic": topic, "partition": "0"}
        )
        assert lag == 0
    finally:
        pipeline.close()


def test_the_readme_metrics_table_lists_exactly_the_metrics_served() -> None:
    served: set[str] = set()
    for registry in (PipelineMetrics().registry, TrainerMetrics().registry):
        for family in registry.collect():
            served.add(family.name + ("_total" if family.type == "counter" else ""))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"^\| `(streamseg_[a-z_]+)(?:\{[^`]*\})?` \|", readme, re.M))
    assert len(served) > 20
    assert documented == served
