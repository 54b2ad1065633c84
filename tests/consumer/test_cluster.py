"""Scaling out on a Redis Cluster: the store groups keys per slot and master, lookups and
namespace switches work across slots, and a consumer group of several processes writing a
3-master cluster ends in exactly the state and records one process writes to one Redis."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from redis.cluster import RedisCluster

from consumer import refit_request
from consumer.exceptions import ConfigError
from consumer.lookup import SegmentLookup
from consumer.model_store import ModelStore
from consumer.namespaces import count_users, drop_namespace, promote, rollback
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.segment_names import read_chosen_names, rename_segment
from consumer.segment_record import encode_record
from consumer.settings import RedisClient
from consumer.state_store import BatchWrite, StateStore, read_values
from consumer.trainer_lease import TrainerLease
from model.features import STATE_WIDTH, FeatureConfig
from tests.consumer.pipeline_support import (
    HOSTILE_IDS,
    as_records,
    assert_state_matches,
    canonical,
    drain,
    make_events,
    produce,
    read_state,
    settings_for,
)
from tests.consumer.test_faults import (
    consumer_env,
    small_model,
    start_consumer,
    stop_gracefully,
    wait_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.redis]


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[RedisCluster]:
    client: RedisCluster = RedisCluster.from_url(redis_cluster_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def cluster_namespace(cluster: RedisCluster) -> Iterator[str]:
    """A unique namespace on the cluster; its keys (on every master) are deleted after."""
    prefix = f"c-{uuid.uuid4().hex[:8]}"
    yield prefix
    found = list(cluster.scan_iter(match=f"*{prefix}*", count=1000))
    if found:
        cluster.unlink(*found)


def _masters(cluster: RedisCluster) -> dict[str, redis.Redis]:
    return {n.name: cluster.get_redis_connection(n) for n in cluster.get_primaries()}


def _calls(node: redis.Redis, command: str) -> int:
    stats = node.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def _owner(cluster: RedisCluster, key: str) -> str:
    node = cluster.get_node_from_key(key)
    assert node is not None, f"no node serves {key!r}"
    return str(node.name)


def _batch(users: list[str], seed: int = 0) -> BatchWrite:
    rng = np.random.default_rng(seed)
    return BatchWrite(
        user_ids=users,
        states=rng.random((len(users), STATE_WIDTH)),
        segment_records=[orjson.dumps({"user_id": u, "segment_id": 1}) for u in users],
        counters={"records": len(users), "applied": len(users)},
        size_changes={1: len(users)},
        new_categories={7.0: "shoes"},
        watermark_ms=1_767_225_600_000.0,
    )


# -- the store ---------------------------------------------------------------------------------


def test_store_writes_each_user_to_its_slots_master_in_one_command(
    cluster: RedisCluster, cluster_namespace: str
) -> None:
    keys = KeyLayout(cluster_namespace)
    store = StateStore(cluster, keys)
    users = [f"u{i}" for i in range(3000)] + HOSTILE_IDS
    masters = _masters(cluster)
    msets_before = {name: _calls(node, "mset") for name, node in masters.items()}
    gets_before = {name: _calls(node, "get") for name, node in masters.items()}
    batch = _batch(users)

    store.write(batch)
    states = store.read_states(users)

    np.testing.assert_array_equal(states, batch.states)
    owners = [_owner(cluster, keys.state(u)) for u in users]
    # A user's state and record share the user's slot, so one MSET writes both atomically.
    assert owners == [_owner(cluster, keys.segment(u)) for u in users]
    per_master = {name: owners.count(name) for name in masters}
    assert all(per_master.values()), "3000 users should land on every master"
    for name, node in masters.items():
        assert _calls(node, "mset") - msets_before[name] == per_master[name], name
        assert _calls(node, "get") - gets_before[name] == per_master[name], name
    records = read_values(cluster, [keys.segment(u) for u in users])
    assert [orjson.loads(r or b"null")["user_id"] for r in records] == users
    assert store.read_counters() == {"records": len(users), "applied": len(users)}
    assert store.read_segment_sizes() == {1: len(users)}
    assert store.read_category_names() == {7.0: "shoes"}
    assert store.read_watermark() == 1_767_225_600_000.0


def test_store_with_ttl_writes_state_and_record_with_expiry(
    cluster: RedisCluster, cluster_namespace: str
) -> None:
    keys = KeyLayout(cluster_namespace)
    store = StateStore(cluster, keys, user_ttl_seconds=300, training_buffer_rows=1000)
    users = [f"t{i}" for i in range(500)]
    batch = _batch(users, seed=1)
    batch.segment_records = [orjson.dumps({"u": u}) if i % 2 else None for i, u in enumerate(users)]
    batch.training_rows = np.ones((len(users), 4))

    store.write(batch)

    np.testing.assert_array_equal(store.read_states(users), batch.states)
    for i, user in enumerate(users[:50]):
        assert 0 < cluster.ttl(keys.state(user)) <= 300
        if i % 2 == 0:  # no record in this batch: none written
            assert cluster.ttl(keys.segment(user)) == -2
        else:
            assert 0 < cluster.ttl(keys.segment(user)) <= 300
    assert cluster.llen(keys.training_samples) == len(users)  # one element per row

    # A re-score's rewrite keeps the expiry running (KEEPTTL), as on one server.
    cluster.expire(keys.state(users[1]), 100)
    rescored = _batch(users[:2], seed=3)
    rescored.keep_ttl = True
    store.write(rescored)
    assert 0 < cluster.ttl(keys.state(users[1])) <= 100


def test_a_slot_moved_behind_the_clients_back_is_followed(
    cluster: RedisCluster, cluster_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyLayout(cluster_namespace)
    store = StateStore(cluster, keys)
    users = [f"m{i}" for i in range(200)]
    store.write(_batch(users))
    # A user whose slot holds no key yet (of any test on this shared cluster): only such a
    # slot can move by decree. A fixed id collided now and then with another test's keys.
    for attempt in range(1000):
        mover = f"moved-{attempt}-{cluster_namespace}"
        slot = cluster.keyslot(keys.state(mover))
        old = cluster.get_node_from_key(keys.state(mover))
        assert old is not None
        owner = cluster.get_redis_connection(old)
        if owner.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0:
            break
    else:
        raise AssertionError("no empty slot among 1,000 candidate users")
    new = next(n for n in cluster.get_primaries() if n.name != old.name)
    new_id = cluster.get_redis_connection(new).execute_command("CLUSTER MYID")
    # The slot holds no key yet, so it can move by decree; the client's map is now stale.
    for node in cluster.get_primaries():
        cluster.get_redis_connection(node).execute_command("CLUSTER SETSLOT", slot, "NODE", new_id)
    batch = _batch([*users, mover], seed=2)
    redone: list[tuple[str, str]] = []
    retry = StateStore._retry_user_write

    def spy(self: StateStore, cluster_: RedisCluster, keys_: tuple[str, str], *rest: Any) -> None:
        redone.append(keys_)
        retry(self, cluster_, keys_, *rest)

    monkeypatch.setattr(StateStore, "_retry_user_write", spy)

    store.write(batch)  # the old owner answers MOVED for the mover: redone via the client

    assert redone == [(keys.state(mover), keys.segment(mover))]

    assert cluster.get_redis_connection(new).exists(keys.state(mover), keys.segment(mover)) == 2
    np.testing.assert_array_equal(store.read_states([*users, mover]), batch.states)


def test_scan_state_keys_walks_every_master_in_one_pass(
    cluster: RedisCluster, cluster_namespace: str
) -> None:
    keys = KeyLayout(cluster_namespace)
    store = StateStore(cluster, keys)
    users = [f"s{i}" for i in range(2000)] + HOSTILE_IDS
    store.write(_batch(users))
    found: list[str] = []
    cursor, steps = 0, 0
    while True:
        cursor, chunk = store.scan_state_keys(cursor, count=500)
        found += [keys.user_from_state_key(k.decode()) for k in chunk]
        steps += 1
        if cursor == 0:
            break
        assert steps < 1000
    assert sorted(set(found)) == sorted(users)
    assert count_users(cluster, cluster_namespace) == len(users)


# -- readers and namespace switches ----------------------------------------------------------


def test_lookup_reads_records_across_masters_and_follows_the_pointer(
    cluster: RedisCluster, cluster_namespace: str
) -> None:
    old, new = f"{cluster_namespace}-old", f"{cluster_namespace}-new"
    pointer = PointerKeys(root=cluster_namespace)
    users = [f"l{i}" for i in range(300)] + HOSTILE_IDS
    for ns, segment in ((old, "old"), (new, "new")):
        for user in users:
            record = encode_record(
                user,
                segment_id=1,
                segment=segment,
                tier=1,
                model_version=1,
                distance=0.5,
                top_category_spend=None,
                top_category_views=None,
                event_time="2026-01-01T00:00:00.000Z",
                computed_at="2026-01-01T00:00:00.000Z",
            )
            cluster.set(KeyLayout(ns).segment(user), record)
        ModelStore(cluster, KeyLayout(ns)).publish(small_model())

    fixed = SegmentLookup(cluster, old)
    assert [r.segment if r else None for r in fixed.get_many([*users, "nobody"])] == [
        *(["old"] * len(users)),
        None,
    ]
    live = SegmentLookup(cluster, None, fallback_namespace=old, pointer=pointer)
    assert {r.segment for r in live.get_many(users) if r} == {"old"}
    assert live.last_namespace == old

    assert promote(cluster, new, pointer) is None
    assert {r.segment for r in live.get_many(users) if r} == {"new"}
    assert live.last_namespace == new
    assert promote(cluster, old, pointer) == new
    assert rollback(cluster, pointer) == new
    assert {r.segment for r in live.get_many(users) if r} == {"new"}
    assert cluster.get(pointer.previous) == old.encode()

    deleted = drop_namespace(cluster, old, configured=cluster_namespace, pointer=pointer)
    assert deleted == len(users) + 4  # records + current, version, v:1, versions
    assert SegmentLookup(cluster, old).get_many(users[:5]) == [None] * 5


def test_trainer_lease_and_versioned_publish_run_on_a_cluster(
    cluster: RedisCluster, cluster_namespace: str
) -> None:
    keys = KeyLayout(cluster_namespace)
    lease = TrainerLease(cluster, keys.trainer_lease, seconds=5)
    assert lease.acquire() and lease.renew()
    store = ModelStore(cluster, keys)
    first = store.publish_next(small_model(), lease_key=keys.trainer_lease, token=lease.token)
    second = store.publish_next(small_model(1), lease_key=keys.trainer_lease, token=lease.token)
    assert (first.model_version, second.model_version) == (1, 2)
    assert store.current_version() == 2 and store.versions() == [2, 1]
    lease.release()
    assert not lease.renew()


def test_a_rename_and_a_refit_request_run_on_a_cluster(
    cluster: RedisCluster, cluster_namespace: str
) -> None:
    """Both are transactions on the model slot: the names hash with the version, the request
    taken with its answer."""
    keys = KeyLayout(cluster_namespace)
    store = ModelStore(cluster, keys)
    store.publish(small_model())
    done = rename_segment(store, 1, "VIP")
    assert done.after is not None and done.after.model_version == 2
    assert read_chosen_names(cluster, keys) == {1: "VIP"}
    number = refit_request.make_request(cluster, keys)
    assert refit_request.is_pending(cluster, keys)
    refit_request.answer(cluster, keys, number, version=3)
    assert refit_request.read_answer(cluster, keys, number) == {"covers": number, "version": 3}
    assert not refit_request.is_pending(cluster, keys)


def test_publishes_prune_the_model_history_on_a_cluster(
    cluster: RedisCluster, cluster_namespace: str
) -> None:
    """The WATCH, the read of the history and the MULTI with its DELs run in the model slot."""
    keys = KeyLayout(cluster_namespace)
    lease = TrainerLease(cluster, keys.trainer_lease, seconds=5)
    assert lease.acquire()
    store = ModelStore(cluster, keys, history_versions=2)
    for version in range(1, 5):
        published = store.publish_next(
            small_model(), lease_key=keys.trainer_lease, token=lease.token
        )
        assert published.model_version == version
    store.publish(small_model().model_copy(update={"model_version": 5}))
    assert store.versions() == [5, 4] and store.current_version() == 5
    assert [v for v in range(1, 6) if cluster.exists(keys.model_history(v))] == [4, 5]
    with pytest.raises(ConfigError, match="oldest kept version is 4"):
        store.rollback(3)
    assert store.rollback(4).model_version == 4
    lease.release()


# -- the same stream, one process on one Redis vs a consumer group on a cluster ----------------


def _records(client: RedisClient, namespace: str, users: list[str]) -> dict[str, dict[str, Any]]:
    keys = KeyLayout(namespace)
    raw = read_values(client, [keys.segment(u) for u in users])
    out = {}
    for user, value in zip(users, raw, strict=True):
        assert value is not None, f"no segment record for {user!r} in {namespace}"
        record = orjson.loads(value)
        del record["computed_at"]  # wall-clock time of the write: differs by design
        out[user] = record
    return out


@pytest.mark.kafka
@pytest.mark.slow
def test_consumer_group_on_a_cluster_matches_one_process_on_one_redis(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    redis_cluster_url: str,
    cluster: RedisCluster,
    cluster_namespace: str,
    new_topic: Callable[..., str],
) -> None:
    topic, cluster_topic = new_topic(partitions=6), new_topic(partitions=6)
    events = make_events(24_000, users=2_000, seed=23)
    model = small_model(3)
    # Re-scoring idle users runs on wall-clock time: off, so both runs are deterministic.
    no_rescore = {"pipeline.rescore_interval_seconds": 0.0}

    # One process, one Redis, the whole stream at once.
    ModelStore(redis_client, KeyLayout(namespace)).publish(model)
    produce(kafka_bootstrap, topic, as_records(events))
    single = settings_for(kafka_bootstrap, redis_url, topic, namespace, **no_rescore)
    began = time.monotonic()
    drain(single, len(events))
    single_seconds = time.monotonic() - began

    # A group of processes on the cluster, on a topic of the same shape (same keys, same
    # partitions, same order within a partition) fed in four chunks: 3 members take the
    # first, a 4th joins as the second arrives, one leaves as the third arrives.
    ModelStore(cluster, KeyLayout(cluster_namespace)).publish(model)
    env = consumer_env(
        kafka_bootstrap,
        redis_cluster_url,
        cluster_topic,
        cluster_namespace,
        REDIS__CLUSTER="true",
        PIPELINE__RESCORE_INTERVAL_SECONDS="0",
        PIPELINE__BATCH_SIZE="200",
        OBSERVABILITY__HEARTBEAT_SECONDS="1",
    )
    chunks = [events[i : i + 6_000] for i in range(0, len(events), 6_000)]

    def applied() -> int:
        return int(cluster.hget(f"{cluster_namespace}:counters", "applied") or 0)

    def beats(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
        found = [orjson.loads(b) for b in cluster.hvals(f"{cluster_namespace}:consumers")]
        return [beat for beat in found if beat.get("pid") == proc.pid]

    def settled(proc: subprocess.Popen[bytes]) -> None:
        # SIGTERM before the signal handler is installed is a plain death, not a leave.
        wait_for(lambda: bool(beats(proc)), 90, f"consumer {proc.pid} to enter its batch loop")

    began = time.monotonic()
    produce(kafka_bootstrap, cluster_topic, as_records(chunks[0]))
    members: list[subprocess.Popen[bytes]] = [start_consumer(env) for _ in range(3)]
    try:
        wait_for(lambda: applied() >= 6_000, 90, "the group to take the first chunk")
        produce(kafka_bootstrap, cluster_topic, as_records(chunks[1]))
        members.append(start_consumer(env))
        wait_for(lambda: applied() >= 12_000, 90, "the second chunk, with a member joining")
        joined = members[-1]
        wait_for(
            lambda: any(beat.get("partitions") for beat in beats(joined)),
            60,
            "the joining member to own partitions",
        )
        leaving = members.pop(0)
        settled(leaving)
        produce(kafka_bootstrap, cluster_topic, as_records(chunks[2]))
        stop_gracefully(leaving)
        produce(kafka_bootstrap, cluster_topic, as_records(chunks[3]))
        wait_for(lambda: applied() >= len(events), 120, "the group to drain the stream")
    finally:
        for proc in members:
            if proc.poll() is None:
                settled(proc)
                stop_gracefully(proc)
    cluster_seconds = time.monotonic() - began
    print(f"single: {single_seconds:.1f} s; cluster group: {cluster_seconds:.1f} s")

    users = sorted({e["user_id"] for e in events})
    on_single = read_state(redis_client, namespace, users)
    on_cluster = read_state(cluster, cluster_namespace, users)
    assert_state_matches(on_cluster, on_single)
    assert_state_matches(on_cluster, recompute(canonical(events), FeatureConfig()))
    assert applied() == len(events)

    single_records = _records(redis_client, namespace, users)
    cluster_records = _records(cluster, cluster_namespace, users)
    for user in users:
        want, got = single_records[user], cluster_records[user]
        assert got.pop("distance") == pytest.approx(want.pop("distance"), rel=1e-9, abs=1e-6)
        assert got == want, user
    sizes = StateStore(cluster, KeyLayout(cluster_namespace)).read_segment_sizes()
    assert sizes == StateStore(redis_client, KeyLayout(namespace)).read_segment_sizes()
    assert sum(sizes.values()) == len(users)
