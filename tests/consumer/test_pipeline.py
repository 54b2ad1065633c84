"""The main job against the real broker and Redis: state, records, dead letters, accounting."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import pytest
import redis
from confluent_kafka import Consumer, Message

from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    drain,
    header_values,
    make_events,
    produce,
    read_record,
    read_state,
    settings_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_features_in_redis_equal_an_independent_recomputation(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic(partitions=3)
    events = make_events(4000, users=150, seed=5)
    produce(kafka_bootstrap, topic, as_records(events))
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    pipeline = drain(settings, len(events))

    assert pipeline.totals.records == len(events)
    assert pipeline.totals.applied == len(events)
    expected = recompute(canonical(events), FeatureConfig())
    actual = read_state(redis_client, namespace)
    assert_state_matches(actual, expected)
    # Before any model exists every touched user has a cold-start record, readable as JSON.
    keys = KeyLayout(namespace)
    for user in expected:
        record = read_record(redis_client, keys.segment(user))
        assert record["user_id"] == user
        assert record["status"] == "cold_start"


def test_bad_records_are_dead_lettered_with_reason_and_source(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic()
    good = make_events(50, users=10, seed=9)
    bad: list[tuple[bytes | None, bytes]] = [
        (b"u1", b"not json"),
        (b"u1", b"[1, 2]"),
        (
            b"u1",
            orjson.dumps(
                {"event_id": "x", "user_id": "u1", "type": "purchase", "ts": 1767225600000}
            ),
        ),
        (
            b"u1",
            orjson.dumps(
                {"event_id": "x", "user_id": "u1", "type": "view", "ts": "0001-01-01T00:00:00Z"}
            ),
        ),
        (
            b"u2",
            orjson.dumps({"event_id": "x", "user_id": "u1", "type": "view", "ts": 1767225600000}),
        ),
        (
            b"u1",
            orjson.dumps(
                {
                    "event_id": "x",
                    "user_id": "u1",
                    "type": "purchase",
                    "amount": -5,
                    "ts": 1767225600000,
                }
            ),
        ),
        (b"u1", b"{" * 70_000),
    ]
    unmapped: list[tuple[bytes | None, bytes]] = [
        (
            b"u1",
            orjson.dumps({"event_id": "y", "user_id": "u1", "type": "search", "ts": 1767225600000}),
        )
    ]
    produce(kafka_bootstrap, topic, as_records(good) + bad + unmapped)
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    total = len(good) + len(bad) + len(unmapped)
    pipeline = drain(settings, total)

    t = pipeline.totals
    assert (t.records, t.applied, t.dead_lettered, t.ignored) == (total, len(good), len(bad), 1)
    counters = {
        k.decode(): int(v) for k, v in redis_client.hgetall(KeyLayout(namespace).counters).items()
    }
    assert counters["records"] == total and counters["dead_lettered"] == len(bad)

    dlq = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": "dlq-reader",
            "auto.offset.reset": "earliest",
        }
    )
    dlq.subscribe([settings.kafka.dead_letter_topic])
    got: list[Message] = []
    while len(got) < len(bad):
        msg = dlq.poll(10)
        assert msg is not None, f"only {len(got)} dead letters arrived"
        got.append(msg)
    dlq.close()
    assert [m.value() for m in got] == [v for _, v in bad]  # original bytes, in order
    reasons = [header_values(m)["streamseg.reason"].decode() for m in got]
    assert reasons == [
        "not_json",
        "not_object",
        "invalid_field",
        "ts_out_of_range",
        "key_mismatch",
        "invalid_field",
        "oversize",
    ]
    first = header_values(got[0])
    assert first["streamseg.source.topic"].decode() == topic
    assert int(first["streamseg.source.offset"]) == len(good)


def test_a_flood_of_invented_categories_registers_only_the_names_users_hold(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """One producer inventing a category per event must not grow `<ns>:categories` per event."""
    topic = new_topic(partitions=1)
    flood = [
        {"event_id": f"f{i}", "user_id": "flooder", "type": "view", "ts": 1_767_225_600_000 + i,
         "category": f"cat-{i:05d}"}
        for i in range(3000)
    ]  # fmt: skip
    normal = [
        {"event_id": f"n{i}", "user_id": f"u{i}", "type": "purchase", "amount": 5.0,
         "ts": 1_767_225_600_000, "category": "shoes" if i % 2 else "books"}
        for i in range(40)
    ]  # fmt: skip
    events = flood + normal
    produce(kafka_bootstrap, topic, as_records(events))
    drain(settings_for(kafka_bootstrap, redis_url, topic, namespace), len(events))

    names = {v.decode() for v in redis_client.hgetall(KeyLayout(namespace).categories).values()}
    # The flooder's first 6 categories fill its slots; nothing else of the flood is kept.
    assert names == {f"cat-{i:05d}" for i in range(6)} | {"shoes", "books"}
    keys = KeyLayout(namespace)
    record = read_record(redis_client, keys.segment("flooder"))
    assert record["top_category_views"] in {f"cat-{i:05d}" for i in range(6)}  # named
    assert read_record(redis_client, keys.segment("u1"))["top_category_spend"] == "shoes"


def test_the_trainer_gets_one_row_per_user_and_period(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """A user's first event of a period (a UTC day) adds their row; more events that day do
    not, so a busy user does not outweigh a quiet one in the model's sample."""
    import numpy as np

    from consumer.state_store import StateStore
    from consumer.training_rows import decode_rows, user_key
    from model.features import COL, FEATURE_NAMES, MS_PER_DAY, derive_features
    from tests.consumer.pipeline_support import T0

    topic = new_topic()
    settings = settings_for(
        kafka_bootstrap, redis_url, topic, namespace, **{"pipeline.rescore_interval_seconds": 0}
    )
    keys = KeyLayout(namespace)

    def view(user: str, day: int, hour: float, n: int) -> dict[str, object]:
        ts = int(T0 + day * MS_PER_DAY + hour * 3_600_000)
        return {"event_id": f"{user}-{day}-{hour}-{n}", "user_id": user, "type": "view", "ts": ts}

    def buffer() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return decode_rows(redis_client.lrange(keys.training_samples, 0, -1), len(FEATURE_NAMES))

    phases = [
        [view("busy", 0, h, n) for h in (1, 5, 9) for n in range(4)] + [view("quiet", 0, 12, 0)],
        [view("busy", 0, 20, n) for n in range(5)],  # the same day: no new row
        [view("busy", 1, 2, 0), view("quiet", 0, 23, 1)],  # a row for busy's day 1 only
    ]
    expected = [2, 2, 3]
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        seen = 0
        for events, total in zip(phases, expected, strict=True):
            produce(kafka_bootstrap, topic, as_records(events))
            seen += len(events)
            pipeline.run(max_records=seen, idle_exit_seconds=20)
            assert len(buffer()[0]) == total
    finally:
        pipeline.close()
    assert int(redis_client.hget(keys.counters, "training_rows") or 0) == 3
    # The newest row is busy's features at their first (and last) event of day 1.
    state = StateStore(redis_client, keys).read_states(["busy"])
    newest = derive_features(state, state[:, COL["last_ts_ms"]], settings.features)
    rows, user_keys, keyed = buffer()
    assert np.array_equal(rows[0], newest[0])
    # Each row names its user (newest first: busy's day 1, quiet's day 0, busy's day 0).
    assert keyed.all()
    assert list(user_keys) == [user_key("busy"), user_key("quiet"), user_key("busy")]


def test_a_consumer_that_creates_its_events_topic_warns_about_the_name(
    kafka_bootstrap: str,
    redis_url: str,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A misspelt kafka.events_topic was created and read, empty, with an INFO line."""
    settings = settings_for(kafka_bootstrap, redis_url, f"{namespace}-evnets", namespace)
    pipeline = SegmentPipeline(settings)
    with caplog.at_level(logging.INFO, logger="consumer.kafka_clients"):
        pipeline.start()
    pipeline.close()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [
        f"the events topic '{namespace}-evnets' did not exist: created it, empty (if producers "
        "write another topic, set kafka.events_topic to its name)"
    ]


def test_a_state_key_holding_another_programs_value_is_counted_and_started_afresh(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A value of the wrong size under a user's state key (another program's, or another
    state layout) is neither read as features nor silently dropped: counted and logged."""
    topic = new_topic()
    keys = KeyLayout(namespace)
    redis_client.set(keys.state("taken"), b"not a streamseg state")
    events = make_events(300, users=20, seed=3)
    events += [{"event_id": "t-1", "user_id": "taken", "type": "view", "ts": events[0]["ts"]}]
    produce(kafka_bootstrap, topic, as_records(events))
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    with caplog.at_level(logging.WARNING, logger="consumer.pipeline"):
        pipeline = drain(settings, len(events))

    assert pipeline.totals.foreign_states == 1
    assert int(redis_client.hget(keys.counters, "foreign_states") or 0) == 1
    assert pipeline.metrics.registry.get_sample_value("streamseg_foreign_states_total") == 1
    warned = [r.getMessage() for r in caplog.records if "foreign_states" in r.getMessage()]
    assert len(warned) == 1 and keys.state("taken") in warned[0]
    # The user's state is now the one event, as for a user never seen.
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(
        read_state(redis_client, namespace, ["taken"]), {"taken": expected["taken"]}
    )


def test_a_consumer_stalled_past_a_rebalance_does_not_overwrite_the_new_owner(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """Between this consumer's read of a batch and its write, the partition's next owner
    (after a rebalance this one slept through) took a fencing token and wrote a user with
    newer events. This consumer's write is discarded; it stops without writing the batch."""
    import numpy as np

    from consumer.exceptions import PartitionTakenError
    from model.features import COL

    topic = new_topic()
    events = make_events(400, users=20, seed=8)
    produce(kafka_bootstrap, topic, as_records(events))
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    keys = KeyLayout(namespace)
    victim = str(events[0]["user_id"])
    pipeline = SegmentPipeline(settings)
    real_read = pipeline.store.read_states_fenced
    newer: list[bytes] = []

    def read_then_lose_the_partition(
        *args: object, **kwargs: object
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int | None]]:
        out = real_read(*args, **kwargs)  # type: ignore[arg-type]
        if not newer:  # the new owner: its token, then its newer state of the victim
            state = out[0][:1].copy()
            state[0, COL["partition"]], state[0, COL["offset"]] = 0, 1e9
            newer.append(state.tobytes())
            redis_client.hincrby(keys.partition_owners, f"{topic}:0", 1)
            redis_client.set(keys.state(victim), newer[0])
        return out

    pipeline.store.read_states_fenced = read_then_lose_the_partition  # type: ignore[method-assign]
    pipeline.start()
    try:
        with pytest.raises(PartitionTakenError, match=f"took over {topic}:0"):
            pipeline.run(max_records=len(events), idle_exit_seconds=20)
    finally:
        pipeline.close()

    assert redis_client.get(keys.state(victim)) == newer[0]
    assert pipeline.metrics.registry.get_sample_value("streamseg_fenced_writes_total") == 1
    # Nothing of the batch was written: no other user has a state, no counter moved.
    written = [
        k
        for k in redis_client.scan_iter(match=keys.state_pattern)
        if k != keys.state(victim).encode()
    ]
    assert written == []
    assert not redis_client.hgetall(keys.counters)


def test_users_whose_events_come_from_several_partitions_are_counted_and_named(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records keyed by user id keep each user on one partition: nothing counted. Records
    without a key land on any partition: the guarantees' premise breaks, and it shows."""
    topic = new_topic(partitions=2)
    keys = KeyLayout(namespace)
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    keyed = make_events(600, users=30, seed=21)
    produce(kafka_bootstrap, topic, as_records(keyed))
    assert drain(settings, len(keyed)).totals.cross_partition_users == 0
    assert redis_client.hget(keys.counters, "cross_partition_users") is None

    keyless = [{**e, "event_id": f"k-{i}"} for i, e in enumerate(make_events(600, 30, seed=22))]
    produce(kafka_bootstrap, topic, [(None, v) for _, v in as_records(keyless)])
    with caplog.at_level(logging.WARNING, logger="consumer.pipeline"):
        pipeline = drain(settings, len(keyless))

    counted = pipeline.totals.cross_partition_users
    assert counted > 0
    assert int(redis_client.hget(keys.counters, "cross_partition_users") or 0) == counted
    metric = "streamseg_cross_partition_users_total"
    assert pipeline.metrics.registry.get_sample_value(metric) == counted
    warned = [r.getMessage() for r in caplog.records if "more than one partition" in r.getMessage()]
    assert len(warned) == 1  # at most one per five minutes
    assert "partitions 0, 1" in warned[0] and "key records by user id" in warned[0]
    assert pipeline.totals.applied == len(keyless)  # counted, and still applied
