"""Kafka client configuration (consumer/kafka_clients.py): per-client extra properties reach
only the clients they are for, and the real clients take them without a warning."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import orjson
import pytest

from consumer.cli import main
from consumer.exceptions import ConfigError
from consumer.kafka_clients import consumer_config, create_producer
from consumer.pipeline import SegmentPipeline
from consumer.produce import producer_config
from consumer.settings import KafkaSettings, load_settings
from tests.consumer.pipeline_support import read_topic, settings_for


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


def java_murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (the Java producer's key hash), as a signed 32-bit int."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[whole:]
    if tail:
        for shift, byte in reversed(list(enumerate(tail))):
            h ^= byte << (8 * shift)
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h >= 1 << 31 else h


def java_partition(key: bytes, partitions: int) -> int:
    """Where Kafka's Java producer puts a keyed record: ``toPositive(murmur2(key)) % n``."""
    return (java_murmur2(key) & 0x7FFFFFFF) % partitions


def test_the_java_reference_hash_agrees_with_kafkas_own_test_vectors() -> None:
    # org.apache.kafka.common.utils.UtilsTest.testMurmur2
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert {data: java_murmur2(data) for data in cases} == cases


@pytest.mark.kafka
def test_records_keyed_by_user_land_where_a_java_producer_puts_them(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """librdkafka's default partitioner (CRC32) put most user ids on another partition than a
    shop's Java producer (or kafkajs) does: a backfill with `streamseg produce` split those users
    over two partitions, and the segments topic could not be joined with topics keyed by user.
    Both `produce` and the service's own producer now hash keys as Java does."""
    users = [
        "u-1",
        "42",
        "Zoë",
        "user 7",
        "a-little-bit-long-string",
        *(f"c{i}" for i in range(40)),
    ]
    lines = b"".join(orjson.dumps({"user_id": u, "n": i}) + b"\n" for i, u in enumerate(users))
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(lines)))
    produced = new_topic(partitions=6)
    assert main(["produce", "-", "--topic", produced, "--no-progress"]) == 0

    announced = new_topic(partitions=6)
    producer = create_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    for user in users:
        producer.produce(announced, key=user.encode(), value=b"{}")
    assert producer.flush(30) == 0

    for topic in (produced, announced):
        placed = {m.key(): m.partition() for m in read_topic(kafka_bootstrap, topic, len(users))}
        expected = {u.encode(): java_partition(u.encode(), 6) for u in users}
        assert placed == expected, topic
        assert len(set(placed.values())) > 1  # the keys do spread
