"""Kafka clients configured the one way the service needs them, and topic set-up."""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.exceptions import ServerUnavailableError
from consumer.logs import librdkafka_log
from consumer.settings import KafkaSettings

log = logging.getLogger(__name__)

RebalanceCallback = Callable[[Consumer, list[TopicPartition]], None]

#: Where a keyed record goes: the Java client's murmur2 hash of the key, as Kafka's Java
#: producer, Kafka Streams and kafkajs place it. librdkafka's own default (CRC32) puts most
#: user ids on another partition than a Java producer does, which splits a user whose events
#: come from both over two partitions (a limit of the guarantees) and breaks joins of the
#: segments topic with other topics keyed by user. Records without a key go to any partition.
KEY_PARTITIONER = "murmur2_random"


def consumer_config(kafka: KafkaSettings, group_id: str | None = None) -> dict[str, Any]:
    """Offsets are stored by the pipeline after its Redis write and committed automatically.

    ``kafka.consumer_extra`` may change the tuning (fetch sizes and waits, the offset reset);
    the guarantees (`consumer.settings.CONSUMER_GUARANTEES`) come last and are never changed.
    """
    config = {
        **kafka.client_config(),
        "session.timeout.ms": kafka.session_timeout_ms,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 50,
        "queued.max.messages.kbytes": 65536,
        **kafka.consumer_extra,
        "group.id": group_id or kafka.group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
    }
    if kafka.group_instance_id:
        config["group.instance.id"] = kafka.group_instance_id
    return config


def create_consumer(
    kafka: KafkaSettings,
    *,
    group_id: str | None = None,
    on_revoke: RebalanceCallback | None = None,
    on_lost: RebalanceCallback | None = None,
    stats_cb: Callable[[str], None] | None = None,
    stats_interval_seconds: float = 5.0,
) -> Consumer:
    """A consumer of the pipeline's group; ``stats_cb`` receives librdkafka statistics JSON
    (consumer lag) every ``stats_interval_seconds``, from inside ``poll``/``consume``."""
    config = consumer_config(kafka, group_id)
    if stats_cb is not None:
        config["statistics.interval.ms"] = max(100, int(stats_interval_seconds * 1000))
        config["stats_cb"] = stats_cb
    return Consumer(config, logger=librdkafka_log)


def create_producer(kafka: KafkaSettings, **overrides: Any) -> Producer:
    """Idempotent producer: broker retries never duplicate or reorder a message.
    ``kafka.producer_extra`` may change the rest; ``overrides`` (what the caller relies on)
    win over it."""
    config = {
        **kafka.client_config(),
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": KEY_PARTITIONER,
        **kafka.producer_extra,
        **overrides,
        "enable.idempotence": True,
    }
    return Producer(config, logger=librdkafka_log)


#: A dead letter (key, value and headers) stays under this many bytes: the producer refuses a
#: message above ``message.max.bytes`` (1,000,000 by default) and the broker one above its own
#: limit (1,048,588 by default), and a refused dead letter would stop the consumer.
DEAD_LETTER_MAX_BYTES = 900_000
#: Of which the key keeps at most this much, and the source record's headers this much.
DEAD_LETTER_MAX_KEY_BYTES = 4_096
DEAD_LETTER_MAX_HEADER_BYTES = 65_536

Headers = list[tuple[str, str | bytes | None]]

#: ``message.headers()`` through the C API, which checks the result (see `readable_headers`).
_READ_HEADERS = operator.methodcaller("headers")


def dead_letter_headers(message: Message, reason: str, detail: str) -> Headers:
    """Headers naming why a record was rejected and where it came from."""
    return [
        ("streamseg.reason", reason.encode()),
        ("streamseg.detail", detail.encode(errors="replace")[:500]),
        ("streamseg.source.topic", (message.topic() or "").encode()),
        ("streamseg.source.partition", str(message.partition()).encode()),
        ("streamseg.source.offset", str(message.offset()).encode()),
    ]


def dead_letter_message(
    message: Message, reason: str, detail: str
) -> tuple[bytes | None, bytes | None, Headers]:
    """(key, value, headers) of the dead letter of ``message``, at most
    `DEAD_LETTER_MAX_BYTES` in all.

    The source record's key, value and headers (except ``streamseg.*`` ones: ours say why)
    follow `dead_letter_headers`. What does not fit is cut: the key to
    `DEAD_LETTER_MAX_KEY_BYTES` (header ``streamseg.key_truncated_from_bytes``: its length),
    the source headers left out when above `DEAD_LETTER_MAX_HEADER_BYTES`
    (``streamseg.headers_dropped_bytes``) or when a header name is not UTF-8, which the
    client cannot decode (``streamseg.headers_dropped``), and the value to what remains
    (``streamseg.truncated_from_bytes``).
    """
    headers = dead_letter_headers(message, reason, detail)
    key, value = message.key(), message.value()
    if key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES:
        headers.append(("streamseg.key_truncated_from_bytes", str(len(key)).encode()))
        key = key[:DEAD_LETTER_MAX_KEY_BYTES]
    pairs = readable_headers(message)
    source = [(k, v) for k, v in pairs or [] if not k.startswith("streamseg.")]
    source_bytes = _header_bytes(source)
    if pairs is None:
        headers.append(("streamseg.headers_dropped", b"a header name is not UTF-8"))
    elif source_bytes > DEAD_LETTER_MAX_HEADER_BYTES:
        headers.append(("streamseg.headers_dropped_bytes", str(source_bytes).encode()))
    else:
        headers.extend(source)
    room = DEAD_LETTER_MAX_BYTES - len(key or b"") - _header_bytes(headers) - 64
    if value is not None and len(value) > room:
        # Larger than a Kafka message may be: keep the head, say how long it was.
        headers.append(("streamseg.truncated_from_bytes", str(len(value)).encode()))
        value = value[:room]
    return key, value, headers


def readable_headers(message: Message) -> Headers | None:
    """A consumed record's headers as (name, value) pairs; None when confluent-kafka cannot
    decode them (a header name that is not UTF-8).

    confluent-kafka 2.x then returns a half-built list *with* the exception set. Called
    through the C API (`_READ_HEADERS`) that is raised as `SystemError`; a plain
    ``message.headers()`` in a loop the interpreter has specialised returns the list
    unchecked, and reading it crashes the process (measured). Never call it twice on one
    message: the second call returns the cached half-built list without an error.
    """
    try:
        raw = _READ_HEADERS(message) or []
    except (SystemError, UnicodeDecodeError):
        return None
    return list(raw.items()) if isinstance(raw, dict) else raw  # a consumed record: a list


def _header_bytes(headers: Headers) -> int:
    """Bytes of headers as a Kafka message counts them (names, values, a little framing)."""
    return sum(
        len(k.encode()) + len(v.encode() if isinstance(v, str) else v or b"") + 8
        for k, v in headers
    )


def partition_count(admin: AdminClient, topic: str, *, timeout: float = 10.0) -> int | None:
    """How many partitions ``topic`` has; None when it does not exist or Kafka does not answer."""
    try:
        metadata = admin.list_topics(topic, timeout=timeout)
    except KafkaException:
        return None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def ensure_topics(
    kafka: KafkaSettings,
    *,
    partitions: int = 1,
    timeout: float = 30.0,
    reading_events: bool = False,
) -> None:
    """Create the events, segments (compacted) and dead-letter topics when missing.

    ``reading_events``: the caller consumes the events topic, so creating it is worth a
    warning: a misspelt ``kafka.events_topic`` would otherwise read an empty topic quietly.
    """
    admin = AdminClient(kafka.client_config(), logger=librdkafka_log)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        admin.poll(0)  # log librdkafka's queued lines: they name the cause (TLS, SASL, refused)
        # librdkafka reports refused credentials only as a transport failure: name the settings.
        hint = (
            f" (kafka.security_protocol={kafka.security_protocol}: check kafka.sasl_mechanism, "
            "kafka.sasl_username and kafka.sasl_password)"
            if kafka.security_protocol.startswith("SASL")
            else ""
        )
        raise ServerUnavailableError(
            f"cannot reach Kafka at {kafka.bootstrap_servers} (kafka.bootstrap_servers): "
            f"{exc}{hint}"
        ) from None
    wanted = {
        kafka.events_topic: NewTopic(kafka.events_topic, partitions),
        kafka.segments_topic: NewTopic(
            kafka.segments_topic, partitions, config={"cleanup.policy": "compact"}
        ),
        kafka.dead_letter_topic: NewTopic(kafka.dead_letter_topic, 1),
    }
    missing = [topic for name, topic in wanted.items() if name not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing).items():
        try:
            future.result(timeout)
            if reading_events and name == kafka.events_topic:
                log.warning(
                    "the events topic %r did not exist: created it, empty (if producers write "
                    "another topic, set kafka.events_topic to its name)",
                    name,
                )
            else:
                log.info("created topic %s", name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
