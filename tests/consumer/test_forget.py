"""`streamseg forget` on what the real pipeline and trainer wrote: every trace of the users in
Redis goes, nobody else's, and the compacted segments topic gets their tombstones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import orjson
import pytest
import redis

from consumer.cli import main
from consumer.namespaces import register_namespace
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.state_store import StateStore
from consumer.training_rows import decode_rows, user_key
from model.features import FEATURE_NAMES
from tests.consumer.pipeline_support import point_cli_at_servers, read_topic

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
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shadow = f"{namespace}-shadow"
    register_namespace(redis_client, shadow)  # as a replay registers it
    try:
        for ns in (namespace, shadow):
            keys = KeyLayout(ns)
            redis_client.set(keys.segment("u1"), b'{"segment_id": 3}')
            redis_client.set(keys.state("u1"), b"\0" * 8)
            redis_client.hset(keys.segment_sizes, "3", 10)
        monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
        argv = ["--namespace", namespace, "forget", "--all-namespaces", "--no-tombstones", "u1"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        for ns in (namespace, shadow):
            keys = KeyLayout(ns)
            assert f"namespace {ns}: deleted 1 states, 1 segment records" in out
            assert redis_client.exists(keys.segment("u1"), keys.state("u1")) == 0
            assert redis_client.hget(keys.segment_sizes, "3") == b"9"
    finally:
        redis_client.srem(PointerKeys().registry, shadow)
