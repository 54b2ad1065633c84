"""Fixtures of the service's tests that more than one test module uses."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from consumer.trainer import Trainer
from tests.consumer.pipeline_support import as_records, make_events, produce, settings_for


@pytest.fixture
def two_model_versions(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> str:
    """A namespace with users' state, counters (20 records dead-lettered) and two model versions."""
    topic = new_topic()
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    settings.trainer.bootstrap_rows = 300
    settings.trainer.update_rows = 100
    events = make_events(4000, users=500, seed=11)
    malformed: list[tuple[bytes | None, bytes]] = [(None, b"{not json")] * 15 + [
        (b"u1", b'{"user_id": "u1", "type": "purchase", "ts": "yesterday"}')
    ] * 5
    produce(kafka_bootstrap, topic, as_records(events[:2500]) + malformed)
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=2500 + len(malformed), idle_exit_seconds=20)
        trainer = Trainer(redis_client, KeyLayout(namespace), settings.trainer)
        trainer.resume()
        assert trainer.step() is not None
        # Take v1 up now, as the next model poll would: otherwise the rest can be applied
        # before that poll, in cold start, and no segment changes (CI saw it once).
        pipeline.refresh_model(force=True)
        produce(kafka_bootstrap, topic, as_records(events[2500:]))
        pipeline.run(max_records=len(events) + len(malformed), idle_exit_seconds=20)
        assert trainer.step() is not None
    finally:
        pipeline.close()
    return namespace
