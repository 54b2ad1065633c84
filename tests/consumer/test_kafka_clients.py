"""Kafka client configuration (consumer/kafka_clients.py): per-client extra properties reach
only the clients they are for, and the real clients take them without a warning."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from consumer.exceptions import ConfigError
from consumer.kafka_clients import consumer_config
from consumer.pipeline import SegmentPipeline
from consumer.produce import producer_config
from consumer.settings import KafkaSettings, load_settings
from tests.consumer.pipeline_support import settings_for


def test_per_client_extras_reach_only_their_clients() -> None:
    kafka = KafkaSettings(
        extra={"socket.keepalive.enable": "true"},
        consumer_extra={"fetch.max.bytes": 1048576},  # type: ignore[dict-item]  # as TOML
        producer_extra={"linger.ms": "20"},
    )
    consumer = consumer_config(kafka)
    producer = producer_config(kafka)
    assert consumer["fetch.max.bytes"] == "1048576" and "linger.ms" not in consumer
    assert producer["linger.ms"] == "20" and "fetch.max.bytes" not in producer
    assert consumer["socket.keepalive.enable"] == producer["socket.keepalive.enable"] == "true"


@pytest.mark.kafka
@pytest.mark.redis
def test_a_consumer_property_in_consumer_extra_warns_no_producer(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In kafka.extra, fetch.max.bytes made every producer print a CONFWARN at each start."""
    settings = settings_for(kafka_bootstrap, redis_url, new_topic(), namespace)
    settings.kafka.consumer_extra = {"fetch.max.bytes": "1048576"}
    pipeline = SegmentPipeline(settings)
    with caplog.at_level(logging.DEBUG, logger="consumer.librdkafka"):
        pipeline.start()
        try:
            pipeline.run(idle_exit_seconds=0.5)
        finally:
            pipeline.close()
    assert not [r.getMessage() for r in caplog.records if "CONFWARN" in r.getMessage()]
    settings.kafka.extra = {"fetch.max.bytes": "1048576"}  # the control: the old way warns
    pipeline = SegmentPipeline(settings)
    with caplog.at_level(logging.DEBUG, logger="consumer.librdkafka"):
        pipeline.start()
        pipeline.close()
    assert any("CONFWARN" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        (
            "STREAMSEG_KAFKA__CONSUMER_EXTRA",
            '{"enable.auto.offset.store": "true"}',
            "enable.auto.offset.store",
        ),
        ("STREAMSEG_KAFKA__CONSUMER_EXTRA", '{"group.id": "other"}', "group.id"),
        ("STREAMSEG_KAFKA__PRODUCER_EXTRA", '{"enable.idempotence": false}', "enable.idempotence"),
    ],
)
def test_per_client_extras_cannot_change_the_delivery_guarantees(
    variable: str, value: str, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offsets stored before the Redis write (enable.auto.offset.store=true) would lose
    events at a crash: kafka.extra could never do it (the guarantees came after it), and the
    per-client dicts must not either."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"{named} cannot be changed in kafka\."):
        load_settings()
