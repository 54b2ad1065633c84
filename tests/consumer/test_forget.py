"""`streamseg forget` on what the real pipeline and trainer wrote: every trace of the users in
Redis goes, nobody else's, and the compacted segments topic gets their tombstones."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import numpy as np
import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic
from redis.cluster import RedisCluster

import consumer.forget
from consumer.cli import main
from consumer.namespaces import register_namespace
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.state_store import StateStore
from consumer.training_rows import decode_rows, user_key
from model.features import FEATURE_NAMES
from tests.consumer.pipeline_support import point_cli_at_servers, push_training_rows, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def buffer_keys(client: redis.Redis, keys: KeyLayout) -> np.ndarray:
    """The user key of every row of the training buffer."""
    rows = client.lrange(keys.training_samples, 0, -1)
    return decode_rows(rows, len(FEATURE_NAMES))[1]


def test_forget_erases_the_users_and_only_them(
    two_model_versions: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    new_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = KeyLayout(two_model_versions)
    records = {
        keys.user_from_state_key(key.decode()): orjson.loads(
            redis_client.get(key.decode().removesuffix(":state") + ":seg") or b"null"
        )
        for key in redis_client.scan_iter(match=keys.state_pattern, count=1000)
    }
    assigned = sorted(u for u, r in records.items() if r and r["status"] == "assigned")
    hostile = [u for u in assigned if "{" in u or "%" in u or " " in u]
    plain = [u for u in assigned if u not in hostile]
    gone = [plain[0], hostile[0]]  # an id whose key is escaped too
    sizes_before = StateStore(redis_client, keys).read_segment_sizes()
    rows_before = buffer_keys(redis_client, keys)
    theirs = np.isin(rows_before, [user_key(u) for u in gone])
    assert theirs.any() and not theirs.all()

    segments_topic = new_topic()
    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
    monkeypatch.setenv("STREAMSEG_KAFKA__SEGMENTS_TOPIC", segments_topic)
    assert main(["--namespace", two_model_versions, "forget", *gone, "nobody"]) == 0
    out = capsys.readouterr().out
    assert (
        f"namespace {two_model_versions}: deleted 2 states, 2 segment records, "
        f"{int(theirs.sum())} training rows (3 user ids asked)"
    ) in out

    for user in gone:
        state, segment = keys.state_and_segment([user])[0]
        assert redis_client.exists(state, segment) == 0, user
    kept = [u for u in records if u not in gone]
    assert all(redis_client.exists(keys.state_and_segment([u])[0][0]) for u in kept)
    expected_sizes = dict(sizes_before)
    for user in gone:
        expected_sizes[records[user]["segment_id"]] -= 1
    assert StateStore(redis_client, keys).read_segment_sizes() == expected_sizes
    rows_after = buffer_keys(redis_client, keys)
    assert sorted(rows_after.tolist()) == sorted(rows_before[~theirs].tolist())
    assert int(redis_client.hget(keys.counters, "forgotten_users") or 0) == 2

    tombstones = read_topic(kafka_bootstrap, segments_topic, 3)
    assert [(m.key(), m.value()) for m in tombstones] == [
        (u.encode(), None) for u in [*gone, "nobody"]
    ]

    # Again: nothing left to erase, nothing counted twice.
    assert main(["--namespace", two_model_versions, "forget", *gone, "--no-tombstones"]) == 0
    assert "deleted 0 states, 0 segment records, 0 training rows" in capsys.readouterr().out
    assert int(redis_client.hget(keys.counters, "forgotten_users") or 0) == 2


def test_forget_all_namespaces_reaches_replays_too(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    new_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A replay's namespace and its own segments topic (<segments>.replay-<NAME>) too."""
    shadow = f"{namespace}-shadow"
    segments = new_topic()
    replay_segments = f"{segments}.replay-{shadow}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(replay_segments, 1, 1)])[replay_segments].result(timeout=30)
    register_namespace(redis_client, shadow)  # as a replay registers it
    try:
        for ns in (namespace, shadow):
            keys = KeyLayout(ns)
            redis_client.set(keys.segment("u1"), b'{"segment_id": 3}')
            redis_client.set(keys.state("u1"), b"\0" * 8)
            redis_client.hset(keys.segment_sizes, "3", 10)
        point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
        monkeypatch.setenv("STREAMSEG_KAFKA__SEGMENTS_TOPIC", segments)
        # Without --all-namespaces: erased here, and the copy elsewhere is named.
        assert main(["--namespace", namespace, "forget", "--no-tombstones", "u1"]) == 0
        out = capsys.readouterr().out
        assert f"namespace {namespace}: deleted 1 states, 1 segment records" in out
        assert f"still held in other namespaces: {shadow} (replays" in out
        assert main(["--namespace", namespace, "forget", "--all-namespaces", "u1"]) == 0
        out = capsys.readouterr().out
        assert f"namespace {namespace}: deleted 0 states, 0 segment records" in out
        assert f"namespace {shadow}: deleted 1 states, 1 segment records" in out
        for ns in (namespace, shadow):
            keys = KeyLayout(ns)
            assert redis_client.exists(keys.segment("u1"), keys.state("u1")) == 0
            assert redis_client.hget(keys.segment_sizes, "3") == b"9"
        assert "still held" not in out
        assert main(["--namespace", namespace, "forget", "--no-tombstones", "u1"]) == 0
        assert "still held" not in capsys.readouterr().out  # gone everywhere now
        assert f"2 tombstones sent to {segments!r}, {replay_segments!r}" in out
        for topic in (segments, replay_segments):
            [tombstone] = read_topic(kafka_bootstrap, topic, 1)
            assert (tombstone.key(), tombstone.value()) == (b"u1", None)
    finally:
        redis_client.srem(PointerKeys().registry, shadow)


def test_forget_counts_a_repeated_id_once_and_refuses_a_misspelt_namespace(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = KeyLayout(namespace)
    redis_client.set(keys.segment("u1"), b'{"segment_id": 3}')
    redis_client.hset(keys.segment_sizes, "3", 5)
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    base = ["forget", "--no-tombstones"]
    assert main(["--namespace", namespace, *base, "u1", "u1"]) == 0  # one user, asked twice
    assert redis_client.hget(keys.segment_sizes, "3") == b"4"
    assert "deleted 0 states, 1 segment records" in capsys.readouterr().out
    # A typo erases nothing and says so, like every command reading a namespace.
    assert main(["--namespace", f"{namespace}-typo", *base, "u2"]) == 2
    assert f"namespace '{namespace}-typo' holds no data" in capsys.readouterr().err


def test_a_bad_line_on_stdin_stops_forget_after_saying_what_it_erased(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A line too long for an id in the middle of the input: it stopped with a traceback,
    after erasing the ids before it, without saying so."""
    keys = KeyLayout(namespace)
    for user in ("u1", "u2"):
        redis_client.set(keys.segment(user), b'{"segment_id": 1}')
    redis_client.hset(keys.segment_sizes, "1", 2)
    monkeypatch.setattr(consumer.forget, "_CHUNK", 1)  # u1 is erased before the bad line
    monkeypatch.setattr("sys.stdin", io.StringIO("u1\n" + "x" * 5000 + "\nu2\n"))
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    assert main(["--namespace", namespace, "forget", "--no-tombstones", "-"]) == 2
    said = capsys.readouterr()
    assert f"namespace {namespace}: deleted 0 states, 1 segment records" in said.out
    assert (
        "longer than 4,096 characters" in said.err and "the 1 ids before it are erased" in said.err
    )
    assert "Traceback" not in said.err
    assert redis_client.exists(keys.segment("u1")) == 0
    assert redis_client.exists(keys.segment("u2")) == 1  # after the bad line: not read


def test_an_id_that_is_not_utf8_stops_forget_after_the_ids_before_it(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Latin-1 line: the ids before it, in its chunk too, are erased; it and the rest
    are not, and it is named."""
    keys = KeyLayout(namespace)
    for user in ("u1", "u2", "u3"):
        redis_client.set(keys.segment(user), b'{"segment_id": 1}')
    redis_client.hset(keys.segment_sizes, "1", 3)
    monkeypatch.setattr("sys.stdin", io.StringIO("u1\nu1\nu2\ncaf\udce9\nu3\n"))
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    assert main(["--namespace", namespace, "forget", "--no-tombstones", "-"]) == 2
    said = capsys.readouterr()
    assert f"namespace {namespace}: deleted 0 states, 2 segment records" in said.out
    assert "user id 'caf\\udce9' is not valid UTF-8" in said.err
    assert "the 2 ids before it are erased" in said.err
    assert redis_client.exists(keys.segment("u1"), keys.segment("u2")) == 0
    assert redis_client.exists(keys.segment("u3")) == 1
    assert redis_client.hget(keys.segment_sizes, "1") == b"1"


def test_forget_on_a_redis_cluster_takes_each_user_from_the_segment_deleted(
    redis_cluster_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The cluster path (one script per user deletes state and record and returns the
    record) erases users whose keys lie on several masters and takes each from their
    segment's size. It does not stage the race the script closes (a batch between a read
    and a delete)."""
    cluster: RedisCluster = RedisCluster.from_url(redis_cluster_url)
    namespace = f"f-{uuid.uuid4().hex[:8]}"
    keys = KeyLayout(namespace)
    users = [f"u{i}" for i in range(12)]
    try:
        slots = {cluster.keyslot(keys.segment(u)) for u in users}
        masters = {cluster.get_node_from_key(keys.segment(u)) for u in users}
        assert len(slots) > 1 and len(masters) > 1
        for i, user in enumerate(users):
            cluster.set(keys.state(user), b"\x00" * 8)
            cluster.set(keys.segment(user), orjson.dumps({"segment_id": i % 3}))
        cluster.hset(keys.segment_sizes, mapping={"0": 4, "1": 4, "2": 4})
        rng = np.random.default_rng(1)
        push_training_rows(cluster, keys, rng.lognormal(size=(12, len(FEATURE_NAMES))), users)
        monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_cluster_url)
        monkeypatch.setenv("STREAMSEG_REDIS__CLUSTER", "true")
        gone = users[:5]  # segments 0, 1, 2, 0, 1
        assert main(["--namespace", namespace, "forget", "--no-tombstones", *gone]) == 0
        assert (
            f"namespace {namespace}: deleted 5 states, 5 segment records, 5 training rows"
            in capsys.readouterr().out
        )
        assert StateStore(cluster, keys).read_segment_sizes() == {0: 2, 1: 2, 2: 3}
        assert all(cluster.exists(keys.state(u), keys.segment(u)) == 0 for u in gone)
        assert all(cluster.exists(keys.state(u), keys.segment(u)) == 2 for u in users[5:])
        assert int(cluster.hget(keys.counters, "forgotten_users") or 0) == 5
        assert sorted(
            decode_rows(cluster.lrange(keys.training_samples, 0, -1), len(FEATURE_NAMES))[
                1
            ].tolist()
        ) == sorted(user_key(u) for u in users[5:])
    finally:
        found = list(cluster.scan_iter(match=f"*{namespace}*", count=1000))
        if found:
            cluster.unlink(*found)
        cluster.close()
