"""Duplicate delivery against the real broker: every event written twice (as a producer that
retries without idempotence does: the copy at a later offset, some copies after later events)
is applied once, whatever the batch size, and a replay decides the same way."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis

from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from consumer.state_store import StateStore
from model.features import STATE_FIELDS, FeatureConfig
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
from tests.reference_features import drop_duplicate_event_ids, recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def every_event_twice(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each event followed by its copy 0-3 places later in the stream: within any user's
    window of 8 (the copies of the events in between count for at most 3 more)."""
    rng = random.Random(seed)
    stream: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, Any]]] = []  # (place it is due at, copy)
    for e in events:
        stream.append(e)
        pending.append((len(stream) + rng.randrange(4), dict(e)))
        for due, copy in [p for p in pending if p[0] <= len(stream)]:
            stream.append(copy)
            pending.remove((due, copy))
    stream.extend(copy for _, copy in pending)
    return stream


def run_pipeline(
    kafka_bootstrap: str, redis_url: str, topic: str, namespace: str, batch_size: int, n: int
) -> SegmentPipeline:
    settings = settings_for(
        kafka_bootstrap,
        redis_url,
        topic,
        namespace,
        **{"pipeline.batch_size": batch_size, "kafka.group_id": f"g-{namespace}"},
    )
    pipeline = drain(settings, n)
    return pipeline


def test_each_event_produced_twice_is_applied_once_and_replays_the_same(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic(partitions=3)
    events = make_events(800, users=40, seed=21)
    stream = every_event_twice(events, seed=21)
    assert len(stream) == 2 * len(events)
    # Some copies come after later events of the same user: out of order, not just adjacent.
    assert any(stream[i]["event_id"] != stream[i + 1]["event_id"] for i in range(0, 40, 2))
    assert drop_duplicate_event_ids(stream, 8) == events  # the reference keeps first copies
    produce(kafka_bootstrap, topic, as_records(stream))

    live = run_pipeline(kafka_bootstrap, redis_url, topic, namespace, 37, len(stream))
    t = live.totals
    assert (t.records, t.applied, t.duplicates, t.duplicate_event_ids) == (
        len(stream),
        len(events),
        len(events),
        len(events),
    )
    counters = {
        k.decode(): int(v) for k, v in redis_client.hgetall(KeyLayout(namespace).counters).items()
    }
    assert counters["applied"] == len(events)
    assert counters["duplicates"] == counters["duplicate_event_ids"] == len(events)
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)

    # A replay of the same topic in other batches (a new group, another namespace) decides
    # the same events are duplicates and keeps the same dedupe bookkeeping.
    replay_ns = f"{namespace}-replay"
    replay = run_pipeline(kafka_bootstrap, redis_url, topic, replay_ns, 1000, len(stream))
    assert replay.totals.applied == len(events)
    assert_state_matches(read_state(redis_client, replay_ns), expected)
    users = list(expected)
    tail = slice(STATE_FIELDS.index("event_ids_seen"), None)
    a = StateStore(redis_client, KeyLayout(namespace)).read_states(users)[:, tail]
    b = StateStore(redis_client, KeyLayout(replay_ns)).read_states(users)[:, tail]
    np.testing.assert_array_equal(a, b)


def test_dedupe_window_zero_applies_every_copy(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic()
    events = make_events(60, users=6, seed=4)
    stream = every_event_twice(events, seed=4)
    produce(kafka_bootstrap, topic, as_records(stream))
    settings = settings_for(
        kafka_bootstrap, redis_url, topic, namespace, **{"pipeline.dedupe_window_events": 0}
    )
    pipeline = drain(settings, len(stream))
    assert pipeline.totals.applied == len(stream)
    expected = recompute(canonical(stream), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)


def test_a_copy_that_is_not_applied_does_not_move_the_watermark(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """A repeated event_id carrying a later time (a producer that re-sent a corrected event)
    is skipped, as the contract says; its time moved the watermark all the same, and with it
    the clock of every idle user's re-score and of `explain`."""
    topic = new_topic()
    events = make_events(40, users=4, seed=5)
    last = max(e["ts"] for e in events)
    copy = dict(events[0], ts=last + 10 * 86_400_000)  # ten days on, same event_id
    # Before the user's later events, so a redelivery's offset test cannot single it out.
    assert any(e["user_id"] == copy["user_id"] for e in events[1:])
    produce(kafka_bootstrap, topic, as_records([events[0], copy, *events[1:]]))
    pipeline = run_pipeline(kafka_bootstrap, redis_url, topic, namespace, 100, len(events) + 1)
    assert pipeline.totals.duplicate_event_ids == 1
    store = StateStore(redis_client, KeyLayout(namespace))
    assert store.read_watermark() == last
    # Read again by another group into the same namespace (a crash before the commit): every
    # event is a redelivery, the copy among them, and still does not count.
    settings = settings_for(
        kafka_bootstrap, redis_url, topic, namespace, **{"kafka.group_id": f"g2-{namespace}"}
    )
    again = drain(settings, len(events) + 1)
    assert again.totals.applied == 0
    assert store.read_watermark() == last
