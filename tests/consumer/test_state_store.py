"""The single-server store writes one batch as one transaction, against the real Redis."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from consumer.redis_keys import KeyLayout
from consumer.state_store import BatchWrite, StateStore, _lpush_rows, _pack, _row_bytes
from model.features import STATE_WIDTH

pytestmark = [pytest.mark.redis]

USERS = ["u-1", "{odd}", "a b%", "ü 😀"]


def batch(records: list[bytes | None]) -> BatchWrite:
    return BatchWrite(
        user_ids=USERS,
        states=np.arange(len(USERS) * STATE_WIDTH, dtype=np.float64).reshape(len(USERS), -1),
        segment_records=records,
        training_rows=np.ones((len(USERS), 3)),
        counters={"records": 7, "applied": 4, "ignored": 0},
        size_changes={3: 2, 1: -1},
        new_categories={1234.0: "shoes", 99.0: "ü"},
        watermark_ms=1_767_225_600_000.5,
        applied_offsets={"events:0": 10, "events:1": 5},
    )


def test_one_batch_lands_whole(redis_client: redis.Redis, namespace: str) -> None:
    keys = KeyLayout(namespace)
    store = StateStore(redis_client, keys, training_buffer_rows=100)
    records: list[bytes | None] = [b'{"r":1}', None, b'{"r":3}', b'{"r":4}']
    store.write(batch(records))

    states = store.read_states(USERS)
    np.testing.assert_array_equal(states, batch(records).states)
    assert [redis_client.get(keys.segment(u)) for u in USERS] == records
    assert store.read_counters() == {"records": 7, "applied": 4}  # zero deltas are not sent
    assert store.read_segment_sizes() == {3: 2, 1: -1}
    assert store.read_category_names() == {1234.0: "shoes", 99.0: "ü"}
    assert store.read_watermark() == 1_767_225_600_000.5
    assert redis_client.hgetall(keys.applied_offsets) == {b"events:0": b"10", b"events:1": b"5"}
    rows = redis_client.lrange(keys.training_samples, 0, -1)
    assert rows == [np.ones(3).tobytes()] * len(USERS)  # one element per row
    assert redis_client.ttl(keys.state(USERS[0])) == -1  # no TTL unless configured

    store.write(BatchWrite(user_ids=[], states=np.empty((0, 0)), watermark_ms=5.0))
    assert store.read_watermark() == 1_767_225_600_000.5  # only moves forward


def test_the_training_buffer_keeps_exactly_the_newest_rows(
    redis_client: redis.Redis, namespace: str
) -> None:
    """Batches of any size: the buffer never holds more than ``training_buffer_rows`` rows,
    and they are the newest (a 1-row batch must not let 5,000-row blobs pile up)."""
    keys = KeyLayout(namespace)
    store = StateStore(redis_client, keys, training_buffer_rows=50)
    written = 0
    for size in (40, 1, 30, 1, 1, 60, 2):
        rows = np.arange(written, written + size, dtype=np.float64).reshape(-1, 1)
        store.write(BatchWrite(user_ids=[], states=np.empty((0, 0)), training_rows=rows))
        written += size
    kept = [np.frombuffer(r)[0] for r in redis_client.lrange(keys.training_samples, 0, -1)]
    assert kept == list(np.arange(written - 1, written - 51, -1.0))  # newest first


def test_a_ttl_applies_to_every_user_key(redis_client: redis.Redis, namespace: str) -> None:
    keys = KeyLayout(namespace)
    store = StateStore(redis_client, keys, user_ttl_seconds=300)
    store.write(batch([b"{}"] * len(USERS)))
    for user in USERS:
        assert 0 < redis_client.ttl(keys.state(user)) <= 300
        assert 0 < redis_client.ttl(keys.segment(user)) <= 300


def test_a_rewrite_that_keeps_the_ttl_leaves_the_expiry_running(
    redis_client: redis.Redis, namespace: str
) -> None:
    """A re-score rewrote idle users with SET .. EX: their expiry started again at every
    pass, so with a trainer publishing they never expired. It keeps it (KEEPTTL)."""
    keys = KeyLayout(namespace)
    store = StateStore(redis_client, keys, user_ttl_seconds=300)
    store.write(batch([b"{}"] * len(USERS)))
    for user in USERS:  # as if 200 s had passed
        redis_client.expire(keys.state(user), 100)
        redis_client.expire(keys.segment(user), 100)
    rescored = batch([b'{"rescored":1}'] * len(USERS))
    rescored.keep_ttl = True
    store.write(rescored)
    for user in USERS:
        assert redis_client.get(keys.segment(user)) == b'{"rescored":1}'
        assert 0 < redis_client.ttl(keys.state(user)) <= 100
        assert 0 < redis_client.ttl(keys.segment(user)) <= 100
    store.write(batch([b"{}"] * len(USERS)))  # an event: the expiry starts again
    assert redis_client.ttl(keys.state(USERS[0])) > 100


def test_a_refused_command_raises_and_the_client_stays_usable(
    redis_client: redis.Redis, namespace: str
) -> None:
    keys = KeyLayout(namespace)
    redis_client.set(keys.counters, "not a hash")  # HINCRBY on it fails inside EXEC
    store = StateStore(redis_client, keys)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.write(batch([None] * len(USERS)))
    assert redis_client.ping()
    redis_client.delete(keys.counters)
    store.write(batch([None] * len(USERS)))
    assert store.read_counters()["records"] == 7


def test_lpush_rows_frames_exactly_what_generic_packing_would() -> None:
    rows = np.random.default_rng(3).normal(size=(7, 10))
    key = b"t-ns:training-samples"
    expected = _pack([b"LPUSH", key, *_row_bytes(rows)])
    assert _lpush_rows(key, rows) == expected
    assert _lpush_rows(key, rows[::2]) == _pack([b"LPUSH", key, *_row_bytes(rows[::2])])


def test_hand_edited_counters_and_sizes_are_left_out_not_fatal(
    redis_client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`status`, the heartbeat, the trainer and the report read these hashes: a field that is
    not an integer (a hand edit, another program) is skipped with a warning naming it."""
    keys = KeyLayout(namespace)
    store = StateStore(redis_client, keys)
    store.write(batch([None] * len(USERS)))
    redis_client.hset(keys.counters, mapping={"bogus": "many", "empty": ""})
    redis_client.hset(keys.segment_sizes, mapping={"x": "3", "9": "1.5", "-2": "-4"})

    assert store.read_counters() == {"records": 7, "applied": 4}
    assert store.read_segment_sizes() == {3: 2, 1: -1, -2: -4}
    redis_client.hset(keys.categories, mapping={"shoes": "1234", "77": b"\xff"})
    assert store.read_category_names() == {1234.0: "shoes", 99.0: "ü", 77.0: "\ufffd"}
    warned = " ".join(r.getMessage() for r in caplog.records)
    for field in ("bogus", "empty", "'x'", "'9'"):
        assert field in warned


def test_a_fenced_write_is_discarded_when_a_partition_gets_a_new_owner(
    redis_client: redis.Redis, namespace: str
) -> None:
    keys = KeyLayout(namespace)
    store = StateStore(redis_client, keys)
    store.write(batch([None] * len(USERS)))
    fields = ["events:0", "events:1"]
    # The first read of a partition takes a token; a later one reads it back.
    _, _, stored = store.read_states_fenced(
        USERS, state_keys=[keys.state(u) for u in USERS], partitions=fields, acquire=fields
    )
    assert stored == {"events:0": 1, "events:1": 1}
    store.write(batch([b"{}"] * len(USERS)))  # nobody else: goes through
    assert store.read_counters()["records"] == 14

    states, _, stored = store.read_states_fenced(
        USERS, state_keys=[keys.state(u) for u in USERS], partitions=fields, acquire=[]
    )
    assert stored == {"events:0": 1, "events:1": 1}
    redis_client.hincrby(keys.partition_owners, "events:1", 1)  # a new owner, in between
    stale = batch([b"{}"] * len(USERS))
    stale.states = states + 1
    with pytest.raises(redis.WatchError):
        store.write(stale)
    np.testing.assert_array_equal(store.read_states(USERS), states)  # nothing written
    assert store.read_counters()["records"] == 14
    # A fenced read whose batch never writes leaves no WATCH on a pooled connection.
    store.read_states_fenced(
        USERS, state_keys=[keys.state(u) for u in USERS], partitions=fields, acquire=[]
    )
    store.release_watch()
    redis_client.hincrby(keys.partition_owners, "events:0", 1)
    store.write(stale)
    np.testing.assert_array_equal(store.read_states(USERS), states + 1)
