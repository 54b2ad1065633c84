"""`streamseg status`: what an operator reads off it, also when a server or the namespace is
not what they expected."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis

from consumer import refit_request
from consumer.cli import main
from consumer.metrics import PipelineMetrics
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.status import (
    FORGOTTEN_AFTER_SECONDS,
    RETIRED,
    STALE,
    ConsumerHeartbeat,
    _redis_status,
    check_failures,
    render_status,
    stale_members,
)
from consumer.trainer_lease import TrainerLease
from tests.consumer.pipeline_support import settings_for


def status_of(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "namespace": "shop",
        "model_version": 2,
        "model_created_at": "2026-11-29T10:00:00+00:00",
        "trainer_active": True,
        "segments": [],
        "counters": {},
        "lag": [],
        "consumers": {},
        "heartbeat_seconds": 5.0,
    }
    return {**status, **changes}


def test_a_segment_the_model_dropped_is_named_as_such() -> None:
    segments = [
        {"segment_id": 1, "segment": "champions", "tier": 1, "users": 40},
        {"segment_id": 5, "segment": None, "tier": None, "users": 58},  # retired in v2
    ]
    lines = render_status(status_of(segments=segments)).splitlines()
    retired = next(line for line in lines if line.strip().startswith("5 "))
    assert RETIRED in retired and retired.split()[-1] == "58"


def test_a_consumer_silent_for_three_heartbeats_is_marked_stale() -> None:
    now = 1_000_000.0
    beat = {"host": "vm", "partitions": ["events[0]"], "last_batch_at": None}
    consumers = {
        "alive": {**beat, "pid": 1, "seen_at": now - 4},
        "killed": {**beat, "pid": 2, "seen_at": now - 104},
    }
    lines = render_status(status_of(consumers=consumers), now=now).splitlines()
    assert not next(line for line in lines if "alive" in line).endswith(STALE)
    assert next(line for line in lines if "killed" in line).endswith(STALE)


def test_a_heartbeat_silent_for_an_hour_is_removed_by_a_live_consumers_beat(
    namespace: str, redis_client: redis.Redis
) -> None:
    """Consumers killed without a clean stop stayed in `status` as stale for ever."""
    keys = KeyLayout(namespace)
    now = time.time()
    beat = {"host": "vm", "pid": 1, "partitions": [], "last_batch_at": None, "records": 0}
    redis_client.hset(
        keys.consumers,
        mapping={
            "killed-long-ago": orjson.dumps({**beat, "seen_at": now - FORGOTTEN_AFTER_SECONDS - 5}),
            "killed-just-now": orjson.dumps({**beat, "seen_at": now - 60}),
            "not-a-heartbeat": b"[1, 2]",  # another program's: not ours to remove
        },
    )
    ConsumerHeartbeat(redis_client, keys, PipelineMetrics(), 5.0).beat(
        "alive", [("events", 0)], None, 0, Counter()
    )
    left = {m.decode() for m in redis_client.hkeys(keys.consumers)}
    assert left == {"alive", "killed-just-now", "not-a-heartbeat"}
    consumers = {
        "alive": {**beat, "seen_at": now},
        "killed-just-now": {**beat, "seen_at": now - 60},
    }
    assert stale_members(consumers, 5.0, now) == ["killed-just-now"]  # status --json lists it


def test_a_namespace_the_live_pointer_moved_from_points_at_the_live_one() -> None:
    text = render_status(status_of(live_namespace="retrain1"))
    assert text.splitlines()[0] == "namespace      shop (the live pointer names retrain1)"
    assert "streamseg --namespace retrain1 status" in text
    assert "no consumer running" not in text


def test_a_kafka_that_did_not_answer_takes_the_place_of_the_lag() -> None:
    error = (
        "Kafka at 127.0.0.1:1 (kafka.bootstrap_servers) did not answer: Broker transport failure"
    )
    consumers = {"m": {"host": "vm", "pid": 1, "seen_at": 1.0, "last_batch_at": None}}
    text = render_status(status_of(lag=None, kafka_error=error, consumers=consumers), now=2.0)
    lag = text.split("consumer group lag")[1].splitlines()
    assert lag[1] == f"  {error}" and "events topic not found" not in text
    assert "vm:1" in text  # the heartbeats are Redis': still there


@pytest.fixture
def servers(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`main()` in-process against the session's Redis and a Kafka that does not answer."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens


@pytest.mark.usefixtures("servers")
def test_status_shows_what_redis_holds_when_kafka_does_not_answer(
    namespace: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """It waited 12 s and printed only `Kafka (kafka.bootstrap_servers) did not answer`."""
    redis_client.hset(KeyLayout(namespace).counters, mapping={"records": 1234})
    began = time.monotonic()
    assert main(["--namespace", namespace, "status"]) == 2
    assert time.monotonic() - began < 10
    out, err = capsys.readouterr()
    assert "records" in out and "1234" in out
    said = "Kafka at 127.0.0.1:1 (kafka.bootstrap_servers) did not answer"
    assert f"  {said}" in out and f"streamseg: error: {said}" in err


@pytest.mark.usefixtures("servers")
def test_a_namespace_that_holds_nothing_is_not_shown_as_a_cold_start(
    namespace: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt --namespace looked like a deployment waiting for its trainer."""
    redis_client.hset(KeyLayout(f"{namespace}-real").counters, mapping={"records": 1})
    registry = PointerKeys().registry
    redis_client.sadd(registry, f"{namespace}-real")
    try:
        assert main(["--namespace", f"{namespace}-nosuch", "status"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "cold start" not in err
        assert f"streamseg: error: namespace '{namespace}-nosuch' holds no data" in err
        assert f"{namespace}-real" in err.split("(known namespaces: ")[1]
    finally:
        redis_client.srem(registry, f"{namespace}-real")


@pytest.mark.usefixtures("servers")
def test_a_registered_namespace_without_a_model_is_a_cold_start(
    namespace: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = PointerKeys().registry
    redis_client.sadd(registry, namespace)  # a replay registered it; nothing written yet
    try:
        assert main(["--namespace", namespace, "status"]) == 2  # Kafka does not answer
    finally:
        redis_client.srem(registry, namespace)
    out, err = capsys.readouterr()
    assert "none (cold start: waiting for the trainer)" in out and "holds no data" not in err


def test_check_names_each_failure_an_on_call_person_acts_on() -> None:
    now = time.time()
    beat = {"host": "vm", "pid": 1, "partitions": ["events[0]"], "last_batch_at": now}
    healthy = status_of(
        consumers={"m1": {**beat, "seen_at": now}},
        stale_consumers=[],
        lag=[{"topic": "events", "partition": 0, "committed": 10, "high_watermark": 60, "lag": 50}],
    )
    assert check_failures(healthy) == []
    assert check_failures(healthy, max_lag=100) == []
    assert check_failures(healthy, max_lag=10) == ["events[0] lags 50 records (> 10)"]
    broken = status_of(
        consumers={"m1": {**beat, "seen_at": now - 600}},
        stale_consumers=["m1"],
        trainer_active=False,
        model_version=None,
    )
    assert check_failures(broken) == [
        "no consumer has a fresh heartbeat (none running, or all stale)",
        "no trainer holds the lease (the model is not kept fresh)",
        "no model published yet (cold start)",
    ]


def test_check_can_require_a_fresh_model_and_a_close_event_clock() -> None:
    now = time.time()
    beat = {"host": "vm", "pid": 1, "partitions": ["events[0]"], "seen_at": now}
    ok = {"consumers": {"m1": beat}, "stale_consumers": []}
    fresh = status_of(**ok, model_age_seconds=60.0, watermark=now - 30)
    assert check_failures(fresh, max_model_age=3600, max_event_lag=300) == []
    stale = status_of(
        **ok, model_age_seconds=7200.0, training_rows_since_model=1532, watermark=now - 90_000
    )
    assert check_failures(stale, max_model_age=3600, max_event_lag=300) == [
        "model v2 is 2.0 h old (> --max-model-age 3600 s): 1,532 training rows pushed since, "
        "is the trainer waiting for trainer.update_rows?",
        "the event clock is 25.0 h behind the wall clock (> --max-event-lag 300 s)",
    ]
    assert check_failures(stale) == []  # neither limit asked for
    assert check_failures(status_of(**ok, watermark=None), max_event_lag=300) == [
        "no event applied yet (no event clock)"
    ]


def test_status_tells_how_many_rows_an_update_has_and_how_far_the_clock_trails(
    two_model_versions: str, redis_client: redis.Redis, redis_url: str
) -> None:
    from consumer.model_store import ModelStore
    from consumer.state_store import StateStore
    from consumer.trainer import ROWS_COUNTER_METRIC

    keys = KeyLayout(two_model_versions)
    settings = settings_for("127.0.0.1:1", redis_url, "unused", two_model_versions)
    redis_client.hincrby(keys.counters, "training_rows", 37)  # rows since the model's
    status = _redis_status(settings, redis_client)
    model = ModelStore(redis_client, keys).load_current()
    assert model is not None
    pushed = StateStore(redis_client, keys).read_counters()["training_rows"]
    then = int(model.metrics.extra[ROWS_COUNTER_METRIC])
    assert status["training_rows_since_model"] == pushed - then >= 37
    assert 0 <= status["model_age_seconds"] < 3600
    clock = StateStore(redis_client, keys).read_watermark()
    assert clock is not None and status["watermark"] == clock / 1000.0
    text = render_status({**status, "lag": []})
    assert "training rows pushed since)" in text and "behind the wall clock" in text


def test_status_names_the_trainer_and_the_dead_letter_share(
    redis_url: str, redis_client: redis.Redis, namespace: str
) -> None:
    keys = KeyLayout(namespace)
    lease = TrainerLease(redis_client, keys.trainer_lease, seconds=30)
    assert lease.acquire()
    redis_client.hset(keys.counters, mapping={"records": 200, "dead_lettered": 3})
    # As the services load them: the environment (a developer's servers) cannot replace them.
    settings = settings_for("127.0.0.1:1", redis_url, "unused", namespace)
    status = _redis_status(settings, redis_client)
    assert status["trainer"] == lease.holder()
    text = render_status({**status, "lag": []})
    assert f"trainer        active ({lease.holder()})" in text
    assert "(dead-lettered share of records)" in text and "1.50%" in text
    assert not status["refit_requested"] and "refit" not in text
    refit_request.make_request(redis_client, keys)  # `model refit`, not yet taken
    status = _redis_status(settings, redis_client)
    assert status["refit_requested"]
    text = render_status({**status, "lag": []})
    assert "; a refit is requested (streamseg model refit)" in text


def test_the_clock_line_says_ahead_when_events_are_stamped_after_now() -> None:
    now = time.time()
    text = render_status(status_of(watermark=now + 3600, lag=[]), now=now)
    assert "60 min ahead of the wall clock" in text and "behind" not in text
    unknown = status_of(
        model_age_seconds=7200.0, training_rows_since_model=None, stale_consumers=[]
    )
    [failure] = [f for f in check_failures(unknown, max_model_age=60) if f.startswith("model")]
    assert "no count" in failure and "0 training rows" not in failure


def test_the_model_line_reads_like_model_list_and_says_when_it_was_imported_or_renamed() -> None:
    """It printed ``2026-11-29T10:00:00.123456+00:00`` and nothing of an import or a rename."""
    status = status_of(
        model_created_at="2026-11-29T10:00:00.123456+00:00",
        model_imported_at="2026-12-01T08:30:05.9+00:00",
        model_renamed_at="2026-12-02T09:00:00+00:00",
    )
    line = next(x for x in render_status(status).splitlines() if x.startswith("model "))
    assert (
        "v2 (created 2026-11-29T10:00:00Z, imported 2026-12-01T08:30:05Z, "
        "renamed 2026-12-02T09:00:00Z)" in line
    )
