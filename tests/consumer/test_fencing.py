"""The two fencing branches that end in a retry, not a stop (consumer/fencing.py; a partition
taken over while this consumer held a batch: test_pipeline)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis

from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    make_events,
    produce,
    read_state,
    settings_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


@pytest.mark.parametrize("meddle", ["another_owner", "owners_lost"])
def test_a_write_fenced_off_for_a_reason_not_ours_is_read_again_and_goes_through(
    meddle: str,
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Between the third batch's read and its write, either another partition gets a new
    owner (a token of the WATCHed hash moves: the write is discarded and the batch read
    again), or the owners hash is lost (the read finds no token: new ones are taken). Either
    way the batch goes through once and nothing stops."""
    topic = new_topic()
    events = make_events(1500, users=100, seed=61)
    produce(kafka_bootstrap, topic, as_records(events))
    settings = settings_for(
        kafka_bootstrap, redis_url, topic, namespace, **{"pipeline.batch_size": 250}
    )
    owners = KeyLayout(namespace).partition_owners
    pipeline = SegmentPipeline(settings)
    real_read = pipeline.store.read_states_fenced
    reads = 0

    def read_then_meddle(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if meddle == "owners_lost" and reads == 3:
            redis_client.delete(owners)  # before the read: it finds no token of ours
        result = real_read(*args, **kwargs)
        if meddle == "another_owner" and reads == 3:
            redis_client.hincrby(owners, "another-topic:7", 1)  # after: WATCH sees it
        return result

    pipeline.store.read_states_fenced = read_then_meddle  # type: ignore[method-assign]
    pipeline.start()
    try:
        with caplog.at_level(logging.INFO):
            pipeline.run(max_records=len(events), idle_exit_seconds=20)
    finally:
        pipeline.close()

    said = [r.getMessage() for r in caplog.records]
    if meddle == "another_owner":
        fenced = pipeline.metrics.registry.get_sample_value("streamseg_fenced_writes_total")
        assert fenced == 1
        assert "a partition got a new owner since this batch was read: reading again" in said
    else:
        assert any(m.startswith("no owner recorded for ") for m in said), said
        assert redis_client.hget(owners, f"{topic}:0") is not None  # a new token taken
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    assert int(redis_client.hget(KeyLayout(namespace).counters, "applied") or 0) == len(events)
