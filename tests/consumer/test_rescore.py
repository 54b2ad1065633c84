"""Idle users move: the periodic re-score at the watermark changes a lapsed user's segment."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis

from consumer.model_store import ModelStore
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from consumer.segment_names import rename_segment
from consumer.settings import Settings
from consumer.state_store import StateStore
from consumer.training_rows import decode_rows, user_key
from devstack.redis_server import RedisServer
from model.features import FEATURE_NAMES, LOG_FEATURES, MS_PER_DAY, derive_features
from model.labels import label_segments
from model.model_format import SegmentModel
from model.preprocessing import Preprocessor
from model.segmenter import StreamingSegmenter
from tests.consumer.pipeline_support import T0, as_records, produce, read_record, settings_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

#: A re-score pass per day of event time, as soon as one is due, at the latest event time.
DAILY_PASSES: dict[str, object] = {
    "pipeline.rescore_interval_seconds": 86_400.0,
    "pipeline.rescore_min_wall_seconds": 0.0,
    "pipeline.allowed_lateness_seconds": 0.0,
}


def recency_model() -> SegmentModel:
    """Two segments that differ only in recency: recent buyers and lapsed ones."""
    rng = np.random.default_rng(0)
    X = np.zeros((400, len(FEATURE_NAMES)))
    recency = FEATURE_NAMES.index("recency_days")
    X[:200, recency] = rng.uniform(0, 10, 200)
    X[200:, recency] = rng.uniform(250, 365, 200)
    X[:, FEATURE_NAMES.index("purchases")] = 1.0
    pre = Preprocessor(FEATURE_NAMES, log_columns=LOG_FEATURES).fit(X)
    Z = pre.transform(X)
    seg = StreamingSegmenter(n_clusters=2, random_state=0).fit(Z)
    labels = label_segments(
        pre.inverse_transform(seg.cluster_centers_), X, seg.predict(Z), FEATURE_NAMES
    )
    return SegmentModel.from_fitted(seg, pre, labels)


def first_purchases(users: int, days_apart: int = 1, cycle_days: int = 0) -> list[dict[str, Any]]:
    """One purchase each of users u0, u1, ..., user i's on day i * days_apart (modulo
    cycle_days when given)."""
    days = [i * days_apart for i in range(users)]
    if cycle_days:
        days = [d % cycle_days for d in days]
    return [
        {
            "event_id": f"u{i}",
            "user_id": f"u{i}",
            "type": "purchase",
            "ts": int(T0 + day * MS_PER_DAY),
            "amount": 20.0,
        }
        for i, day in enumerate(days)
    ]


def finish_pass(pipeline: SegmentPipeline, timeout: float = 30.0) -> None:
    """Begin the re-score pass that is due and run its chunks to the end (a shared Redis
    may hold many other keys: a pass can take many SCAN chunks), ignoring the pacing."""
    deadline = time.monotonic() + timeout
    pipeline.rescore.next_chunk_at = 0.0
    pipeline.rescore.step()
    while pipeline.rescore.cursor is not None:
        assert time.monotonic() < deadline, "the re-score pass did not finish"
        pipeline.rescore.next_chunk_at = 0.0
        pipeline.rescore.step()


def buyers_without_periodic_passes(
    kafka_bootstrap: str, redis_url: str, topic: str, namespace: str, client: redis.Redis
) -> tuple[Settings, ModelStore, list[dict[str, Any]]]:
    """Settings whose periodic pass never comes due (only a pass made due at once runs,
    whenever asked), the `recency_model` published, and 30 buyers' purchases in ``topic``."""
    settings = settings_for(
        kafka_bootstrap,
        redis_url,
        topic,
        namespace,
        **{
            "pipeline.rescore_interval_seconds": 10 * 365 * 86_400.0,  # periodic: not due
            "pipeline.rescore_min_wall_seconds": 0.0,
            "pipeline.model_poll_seconds": 0.01,
        },
    )
    store = ModelStore(client, KeyLayout(namespace))
    store.publish(recency_model())
    events = first_purchases(30, days_apart=10)
    produce(kafka_bootstrap, topic, as_records(events))
    return settings, store, events


def test_a_user_who_stops_buying_moves_without_new_events(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic()
    settings = settings_for(
        kafka_bootstrap,
        redis_url,
        topic,
        namespace,
        **DAILY_PASSES,
    )
    model = recency_model()
    keys = KeyLayout(namespace)
    ModelStore(redis_client, keys).publish(model)

    def purchase(user: str, day: int) -> dict[str, object]:
        return {
            "event_id": f"{user}-{day}",
            "user_id": user,
            "type": "purchase",
            "ts": int(T0 + day * MS_PER_DAY),
            "amount": 20.0,
        }

    events = [purchase("idle", 0)] + [purchase("busy", d) for d in range(0, 300, 3)]
    produce(kafka_bootstrap, topic, as_records(events))
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=len(events), idle_exit_seconds=20)
        idle_before = read_record(redis_client, keys.segment("idle"))
        finish_pass(pipeline)  # the re-score pass that the watermark started
    finally:
        pipeline.close()
    idle_after = read_record(redis_client, keys.segment("idle"))
    busy = read_record(redis_client, keys.segment("busy"))
    recent = model.ids[int(np.argmin([p.mean_recency_days for p in model.profiles]))]
    assert idle_after["segment_id"] != recent
    assert busy["segment_id"] == recent
    # the idle user was recent when last seen; only the re-score could move them
    assert idle_before["event_time"] == idle_after["event_time"]
    # The finished pass is on record: a restarted consumer does not begin with another one.
    marker = redis_client.zscore(keys.watermark, "rescored:0")  # the topic's one partition
    assert marker == T0 + 297 * MS_PER_DAY
    assert SegmentPipeline(settings).rescore.markers(frozenset({0}), keys) == marker
    # The pass gave the trainer the idle user's row at its watermark, once: the model assigns
    # idle users there, so it is trained on them there too.
    state = StateStore(redis_client, keys).read_states(["idle"])
    at_pass = derive_features(state, marker, settings.features)[0]
    rows, user_keys, _ = decode_rows(
        redis_client.lrange(keys.training_samples, 0, -1), len(FEATURE_NAMES)
    )
    at_pass_rows = np.flatnonzero((rows == at_pass).all(axis=1))
    assert len(at_pass_rows) == 1
    assert user_keys[at_pass_rows[0]] == user_key("idle")


def test_a_new_model_reaches_every_record_in_one_re_score_pass(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic()
    settings = settings_for(
        kafka_bootstrap,
        redis_url,
        topic,
        namespace,
        **{
            "pipeline.rescore_min_wall_seconds": 0.0,
            "pipeline.model_poll_seconds": 0.01,
            "redis.user_ttl_seconds": 1000,
        },
    )
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys)
    first = recency_model()
    store.publish(first)
    events = first_purchases(30)
    produce(kafka_bootstrap, topic, as_records(events))
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=len(events), idle_exit_seconds=20)
        # the same segments under a new version, possibly renamed: no user changes segment
        second = first.model_copy(update={"model_version": first.model_version + 1})
        for event in events:  # as if most of the users' time to live had passed
            redis_client.expire(keys.segment(event["user_id"]), 100)
        store.publish(second)
        time.sleep(0.05)
        pipeline.refresh_model()
        pipeline.rescore.scored_at = -np.inf  # due now
        finish_pass(pipeline)
    finally:
        pipeline.close()
    versions = {
        read_record(redis_client, keys.segment(e["user_id"]))["model_version"] for e in events
    }
    assert versions == {second.model_version}
    # Rewritten by the pass, not by an event of theirs: their expiry ran on (it started again
    # at every pass, so idle users never expired while a trainer published).
    assert all(0 < redis_client.ttl(keys.segment(e["user_id"])) <= 100 for e in events)


def test_a_restarted_consumer_re_scores_every_user_once_its_partitions_are_assigned(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """The first loop runs before the first poll, with nothing assigned: a pass begun there
    scanned its first chunk for nobody, went on once the partitions came and was marked
    done, so the users of that chunk kept their cold-start records for a day of event time.
    A private Redis holds only these 3,000 users: a pass of several SCAN chunks."""
    topic = new_topic()
    namespace = "restart"
    keys = KeyLayout(namespace)
    events = first_purchases(3000, days_apart=1, cycle_days=90)
    produce(kafka_bootstrap, topic, as_records(events))
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        settings = settings_for(
            kafka_bootstrap,
            server.url,
            topic,
            namespace,
            **{"pipeline.rescore_min_wall_seconds": 0.0, "pipeline.model_poll_seconds": 0.01},
        )
        first = SegmentPipeline(settings)
        first.start()
        try:
            first.run(max_records=len(events), idle_exit_seconds=20)
        finally:
            first.close()
        users = [f"u{i}" for i in range(3000)]
        assert {read_record(client, keys.segment(u))["status"] for u in users} == {"cold_start"}
        model = recency_model()
        ModelStore(client, keys).publish(model)
        second = SegmentPipeline(settings)  # the restart, with a model now
        second.start()
        try:
            second.rescore.step()  # what run's first loop does, before any poll
            totals = second.run(idle_exit_seconds=3)  # nothing new: the pass, after assignment
        finally:
            second.close()
        records = [read_record(client, keys.segment(u)) for u in users]
        # Each first assignment is a segment change, produced by the pass and counted.
        counted = int(client.hget(keys.counters, "segment_changes") or 0)
        metric = second.metrics.registry.get_sample_value("streamseg_segment_changes_total")
    assert {r["status"] for r in records} == {"assigned"}
    assert {r["model_version"] for r in records} == {model.model_version}
    assert counted == metric == totals.segment_changes == len(users)


def test_users_of_a_segment_the_new_model_dropped_are_re_scored_at_once(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """A model whose segments got new ids (no previous centre matched, a rollback, an
    import) starts a pass now, not a day of event time later; a model with the same ids
    does not."""
    settings, store, events = buyers_without_periodic_passes(
        kafka_bootstrap, redis_url, new_topic(), namespace, redis_client
    )
    keys = store.keys
    first = store.load_current()
    assert first is not None

    def republished(model: SegmentModel, ids: list[int]) -> SegmentModel:
        data = model.model_dump()
        data.update(ids=ids, next_id=max(ids) + 1, model_version=model.model_version + 1)
        return SegmentModel.model_validate(data)

    def stored_ids() -> set[int]:
        return {read_record(redis_client, keys.segment(e["user_id"]))["segment_id"] for e in events}

    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=len(events), idle_exit_seconds=20)
        finish_pass(pipeline)  # the first one: the older buyers lapse
        assert stored_ids() == set(first.ids)  # both segments are held
        same = republished(first, first.ids)  # a new version, the same segments
        store.publish(same)
        pipeline.refresh_model(force=True)
        began = pipeline.rescore.started_wall
        finish_pass(pipeline)
        assert pipeline.rescore.started_wall == began  # no pass: nobody holds a segment it lacks
        renamed = republished(same, [first.ids[0], max(first.ids) + 1])  # one id dropped
        store.publish(renamed)
        pipeline.refresh_model(force=True)
        finish_pass(pipeline)
        assert stored_ids() == set(renamed.ids)
        sizes = StateStore(redis_client, keys).read_segment_sizes()
        assert {s for s, n in sizes.items() if n} == set(renamed.ids)
        # A rollback brings the dropped id back, and a later model drops it again.
        latest = renamed
        for ids in (first.ids, renamed.ids):
            latest = republished(latest, ids)
            store.publish(latest)
            pipeline.refresh_model(force=True)
            finish_pass(pipeline)
            assert stored_ids() == set(ids)
    finally:
        pipeline.close()


def test_a_renamed_segment_reaches_its_idle_users_records_in_a_pass_begun_at_once(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """A walkthrough renamed a segment and undid it: 545 idle users kept the name for a day
    of event time (on a quiet stream, for ever), since only a dropped segment began a pass."""
    settings, store, events = buyers_without_periodic_passes(
        kafka_bootstrap, redis_url, new_topic(), namespace, redis_client
    )
    keys = store.keys

    def stored_names() -> set[str]:
        return {read_record(redis_client, keys.segment(e["user_id"]))["segment"] for e in events}

    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=len(events), idle_exit_seconds=20)
        finish_pass(pipeline)  # the first one: the older buyers lapse
        model = store.load_current()
        assert model is not None and len(stored_names()) == 2
        segment = model.ids[0]
        # A trainer's version whose labels moved begins no pass: the periodic one brings it.
        relabelled = model.model_copy(
            update={"names": model.names[::-1], "model_version": model.model_version + 1}
        ).revalidated()
        store.publish(relabelled)
        pipeline.refresh_model(force=True)
        assert not pipeline.rescore.due_now
        store.publish(model.model_copy(update={"model_version": relabelled.model_version + 1}))
        pipeline.refresh_model(force=True)
        before_rename = store.current_version()
        assert before_rename is not None
        renamed = rename_segment(store, segment, "VIP").after
        assert renamed is not None
        pipeline.refresh_model(force=True)
        assert pipeline.rescore.due_now
        finish_pass(pipeline)
        assert "VIP" in stored_names()
        # A consumer started after the rename begins a pass with its first model.
        restarted = SegmentPipeline(settings)
        restarted.refresh_model(force=True)
        assert restarted.rescore.due_now
        # A rollback to the names before: a pass too.
        store.rollback(before_rename)
        pipeline.refresh_model(force=True)
        assert pipeline.rescore.due_now
        finish_pass(pipeline)
        assert stored_names() == set(model.names)
        # A trainer's version that carries the chosen name (the rename's own version came and
        # went between two polls): a pass too.
        store.publish(renamed.model_copy(update={"model_version": renamed.model_version + 2}))
        assert "renamed_at_ms" in renamed.metrics.extra
        carried = store.load_current()
        assert carried is not None
        store.publish(
            carried.model_copy(
                update={
                    "model_version": carried.model_version + 1,
                    "metrics": carried.metrics.model_copy(update={"extra": {}}),
                }
            )
        )
        pipeline.refresh_model(force=True)
        assert pipeline.rescore.due_now
        finish_pass(pipeline)
        assert "VIP" in stored_names()
        rename_segment(store, segment, None)  # undone: the rule's name comes back
        pipeline.refresh_model(force=True)
        finish_pass(pipeline)
        assert stored_names() == set(model.names)
    finally:
        pipeline.close()


def test_a_re_score_chunk_is_fenced_like_a_batch(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """A partition that gets a new owner between a chunk's read and its write: the chunk is
    not written (the idle user keeps the new owner's record), and the consumer, whose
    partition it no longer is, stops at the next read."""
    from consumer.exceptions import PartitionTakenError

    topic = new_topic()
    settings = settings_for(
        kafka_bootstrap,
        redis_url,
        topic,
        namespace,
        **DAILY_PASSES,
    )
    keys = KeyLayout(namespace)
    ModelStore(redis_client, keys).publish(recency_model())
    events = first_purchases(1) + [
        {"event_id": f"b{d}", "user_id": "busy", "type": "view", "ts": int(T0 + d * MS_PER_DAY)}
        for d in range(0, 300, 3)
    ]
    produce(kafka_bootstrap, topic, as_records(events))
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=len(events), idle_exit_seconds=20)
        # A loaded broker may rebalance the group once more (CI saw 'revoked [0]' right after
        # the assignment): the step below needs the partition, so poll until it is back.
        deadline = time.monotonic() + 30
        while not pipeline.metrics.assignment:
            assert time.monotonic() < deadline, "the partition was not assigned again"
            assert pipeline.consumer is not None
            pipeline.consumer.poll(0.1)
        idle_record = redis_client.get(keys.segment("u0"))
        real_read = pipeline.store.read_states_fenced

        reads = 0

        def read_then_lose_the_partition(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            out = real_read(*args, **kwargs)
            redis_client.hincrby(keys.partition_owners, f"{topic}:0", 1)
            return out

        pipeline.store.read_states_fenced = read_then_lose_the_partition  # type: ignore[method-assign]
        # Every record names an older model now, so the chunk that reads them writes them
        # (a pass that had already re-scored u0 during run() would write nothing to fence).
        model = ModelStore(redis_client, keys).load_current()
        assert model is not None
        ModelStore(redis_client, keys).publish(model.model_copy(update={"model_version": 2}))
        pipeline.refresh_model(force=True)
        # A chunk is a SCAN of the whole keyspace: on a Redis holding other tests' keys the
        # first chunks may find none of this namespace's users, and read nothing.
        pipeline.rescore.scored_at = -np.inf  # a pass is due now
        pipeline.rescore.cursor = None
        for _ in range(10_000):
            pipeline.rescore.next_chunk_at = 0.0
            pipeline.rescore.step()  # the chunk that reads is discarded: counted, not written
            if reads:
                break
        assert reads == 1
        assert pipeline.metrics.registry.get_sample_value("streamseg_fenced_writes_total") == 1
        assert redis_client.get(keys.segment("u0")) == idle_record
        pipeline.store.read_states_fenced = real_read  # type: ignore[method-assign]
        with pytest.raises(PartitionTakenError):
            pipeline.rescore.next_chunk_at = 0.0
            pipeline.rescore.step()
    finally:
        pipeline.close()
    assert redis_client.get(keys.segment("u0")) == idle_record


@pytest.mark.parametrize(
    ("rescore", "said"),
    [
        ({"pipeline.rescore_min_wall_seconds": 0.0}, "re-scoring them now"),
        ({"pipeline.rescore_min_wall_seconds": 600.0}, "re-scoring them in 600 s (passes start"),
        ({"pipeline.rescore_interval_seconds": 0.0}, "they move at their next event"),
    ],
)
def test_the_log_says_when_users_of_a_dropped_segment_will_move(
    kafka_bootstrap: str,
    redis_url: str,
    namespace: str,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    rescore: dict[str, object],
    said: str,
) -> None:
    """A pass held back by `rescore_min_wall_seconds` (or passes turned off) is not "now"."""
    settings = settings_for(kafka_bootstrap, redis_url, "unused", namespace, **rescore)
    model = recency_model()
    dropped = max(model.ids) + 1
    redis_client.hset(KeyLayout(namespace).segment_sizes, str(dropped), 5)
    pipeline = SegmentPipeline(settings)
    pipeline.rescore.started_wall = time.monotonic()  # a pass just began
    with caplog.at_level("INFO", logger="consumer.rescore"):
        pipeline.rescore.check_retired_segments(model)
    [line] = [r.getMessage() for r in caplog.records if "does not have" in r.getMessage()]
    assert f"5 users hold segments [{dropped}]" in line and said in line, line
    assert pipeline.rescore.due_now
