"""The segments topic refusing a change event: the batch is neither written nor committed,
so nothing is lost when the broker takes the events again (consumer/outputs.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from consumer.exceptions import ServerUnavailableError
from consumer.model_store import ModelStore
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    drain,
    make_events,
    produce,
    read_state,
    read_topic,
    settings_for,
)
from tests.consumer.test_faults import small_model
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_a_change_event_the_broker_refuses_stops_the_batch_before_redis(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic()
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    segments = settings.kafka.segments_topic
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    # Smaller than any change event (about 250 bytes): the broker refuses each one.
    small = {"max.message.bytes": "100", "cleanup.policy": "compact"}
    admin.create_topics([NewTopic(segments, 1, 1, config=small)])[segments].result(timeout=30)
    ModelStore(redis_client, KeyLayout(namespace)).publish(small_model())
    events = make_events(300, users=20, seed=31)
    produce(kafka_bootstrap, topic, as_records(events))

    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        with pytest.raises(ServerUnavailableError, match="not delivered"):
            pipeline.run(max_records=len(events), idle_exit_seconds=20)
    finally:
        pipeline.close()
    assert not list(redis_client.scan_iter(match=f"{namespace}:{{*}}:state"))
    assert not redis_client.hget(KeyLayout(namespace).counters, "applied")

    raised = ConfigEntry(
        "max.message.bytes", "1000000", incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource("topic", segments, incremental_configs=[raised])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    drain(settings, len(events))
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    assert int(redis_client.hget(KeyLayout(namespace).counters, "applied") or 0) == len(events)
    changes = read_topic(kafka_bootstrap, segments, len(expected))
    assert sorted(m.key() or b"" for m in changes) == sorted(u.encode() for u in expected)
