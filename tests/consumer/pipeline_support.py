"""Helpers shared by the pipeline tests: settings for a test's topic and namespace, event
production, and reading back the state, records and dead-letter headers the pipeline wrote."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Message, Producer

from consumer.kafka_clients import KEY_PARTITIONER
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout, namespace_text
from consumer.settings import RedisClient, Settings
from consumer.state_store import StateStore
from consumer.training_rows import keyed_rows
from devstack.stack import service_settings
from model.features import MS_PER_DAY, category_codes, state_as_dict

T0 = 1_767_225_600_000.0  # 2026-01-01T00:00:00Z
TYPES = ["view", "view", "view", "cart", "purchase", "refund", "review", "like", "share"]
CATEGORIES = ["shoes", "books", "toys", "garden", "beauty", "sports", "pets", "auto"]
HOSTILE_IDS = ["{u1}", "a:b", "ü ñ 😀", "%7Bx%7D", "}{", "a b"]


def settings_for(
    kafka_bootstrap: str, redis_url: str, topic: str, namespace: str, **extra: Any
) -> Settings:
    """`devstack.stack.service_settings` with the tests' batch size of 500."""
    extra = {"pipeline.batch_size": 500, **extra}
    return service_settings(kafka_bootstrap, redis_url, topic, namespace, **extra)


def drain(settings: Settings, expected_records: int) -> SegmentPipeline:
    """Run a pipeline until it has seen ``expected_records`` (or 20 s idle), then close it."""
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=expected_records, idle_exit_seconds=20)
    finally:
        pipeline.close()
    return pipeline


def make_events(n: int, users: int, seed: int) -> list[dict[str, Any]]:
    """Valid canonical events, out of order by up to 20 days, with hostile user ids."""
    rng = random.Random(seed)
    ids = [f"u{i}" for i in range(users - len(HOSTILE_IDS))] + HOSTILE_IDS
    events = []
    for i in range(n):
        etype = rng.choice(TYPES)
        event: dict[str, Any] = {
            "event_id": f"e{seed}-{i}",
            "user_id": rng.choice(ids),
            "type": etype,
            "ts": int(T0 + rng.uniform(0, 60) * MS_PER_DAY),
        }
        if etype in ("purchase", "refund"):
            event["amount"] = round(rng.lognormvariate(3.5, 0.8), 2)
        if rng.random() < 0.7:
            event["category"] = rng.choice(CATEGORIES)
        events.append(event)
    return events


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            "partitioner": KEY_PARTITIONER,  # as a shop's Java producer and `streamseg produce`
        }
    )
    for key, value in records:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def as_records(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


def read_record(client: RedisClient, key: str) -> dict[str, Any]:
    """The JSON object stored at ``key`` (a segment record); the test expects it to exist."""
    raw = client.get(key)
    assert raw is not None, f"nothing stored at {key!r}"
    record: dict[str, Any] = orjson.loads(raw)
    return record


def header_values(message: Message) -> dict[str, bytes]:
    """A consumed record's headers by name; a consumer reads each value as bytes."""
    headers = message.headers() or []
    assert isinstance(headers, list), "a consumer gets headers as (name, value) pairs"
    values: dict[str, bytes] = {}
    for name, value in headers:
        assert isinstance(value, bytes), f"header {name!r} has no bytes value: {value!r}"
        values[name] = value
    return values


def read_state(
    client: RedisClient, namespace: str, users: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The stored states of ``users`` (default: every user with a state key in ``namespace``,
    so a comparison also catches users written that should not have been)."""
    keys = KeyLayout(namespace)
    if users is None:
        found = client.scan_iter(match=keys.state_pattern, count=1000)
        users = sorted(keys.user_from_state_key(str(namespace_text(k))) for k in found)
    store = StateStore(client, keys)
    states = store.read_states(users)
    names = {float(c): n for n, c in zip(CATEGORIES, category_codes(CATEGORIES, {}), strict=True)}
    return {u: state_as_dict(states[i], names) for i, u in enumerate(users)}


def canonical(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as the reference recomputation wants them (amount always present)."""
    return [
        {**e, "ts": float(e["ts"]), "amount": e.get("amount", 0.0), "category": e.get("category")}
        for e in events
    ]


def assert_state_matches(
    actual: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> None:
    assert set(actual) == set(expected)
    for user, want in expected.items():
        got = actual[user]
        for key, value in want.items():
            if key == "categories":
                assert list(got[key]) == list(value), user
                for cat, parts in value.items():
                    for part, v in parts.items():
                        np.testing.assert_allclose(got[key][cat][part], v, rtol=1e-9, atol=1e-12)
            else:
                np.testing.assert_allclose(
                    got[key], value, rtol=1e-9, atol=1e-12, err_msg=f"{user} {key}"
                )


def push_training_rows(
    client: RedisClient, keys: KeyLayout, X: np.ndarray, users: list[str] | None = None
) -> None:
    """Buffer feature rows for the trainer as the pipeline does: newest first, one row per
    element, and the ``training_rows`` counter the trainer reads. Rows name their ``users``
    when given; without, each counts as its own user (rows from before user keys)."""
    rows = np.asarray(X, dtype=np.float64) if users is None else keyed_rows(X, users)
    client.lpush(keys.training_samples, *(row.tobytes() for row in rows))
    client.hincrby(keys.counters, "training_rows", len(X))


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Message]:
    """``expected`` records of ``topic`` from the beginning (fails after ``timeout`` seconds)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(received) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                received.append(msg)
    finally:
        consumer.close()
    assert len(received) == expected, f"got {len(received)} of {expected} records of {topic}"
    return received


def point_cli_at_servers(
    monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str, redis_url: str
) -> None:
    """`main()` in-process against the session's Kafka and Redis (default topics and namespace)."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
