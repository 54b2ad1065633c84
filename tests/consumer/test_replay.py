"""Replay into a shadow namespace, compare, promote and roll back, against the real servers."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from consumer.cli import main
from consumer.compare import compare_namespaces
from consumer.exceptions import ConfigError
from consumer.lookup import SegmentLookup
from consumer.namespaces import (
    drop_namespace,
    list_namespaces,
    live_namespace,
    promote,
    rollback,
)
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.replay import replay
from consumer.segment_record import encode_record
from consumer.settings import Settings
from consumer.snapshot import read_snapshot
from devstack.redis_server import RedisServer
from devstack.stack import service_env
from model.features import FeatureConfig
from model.model_format import SegmentModel
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    drain,
    make_events,
    produce,
    read_state,
    read_topic,
    settings_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

ALL = 1 << 30
REPO_ROOT = Path(__file__).resolve().parents[2]


def replay_setup(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    n_events: int = 3000,
) -> tuple[Settings, list[dict[str, object]], PointerKeys]:
    """A 3-partition topic holding ``n_events`` events (out of order, hostile ids)."""
    topic = new_topic(partitions=3)
    events = make_events(n_events, users=200, seed=11)
    produce(kafka_bootstrap, topic, as_records(events))
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    settings.trainer.n_clusters = 4
    return settings, events, PointerKeys(root=namespace)  # pointer keys isolated per test


def point_cli_at(
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    redis_url: str,
    topic: str,
    namespace: str,
) -> None:
    """`main()` in-process against the session's servers, ``topic`` and ``namespace``."""
    for name, value in {
        "KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA__EVENTS_TOPIC": topic,
        "KAFKA__SEGMENTS_TOPIC": f"{topic}.segments",
        "KAFKA__DEAD_LETTER_TOPIC": f"{topic}.dlq",
        "KAFKA__GROUP_ID": f"g-{topic}",
        "REDIS__URL": redis_url,
        "REDIS__NAMESPACE": namespace,
        "TRAINER__N_CLUSTERS": "4",
    }.items():
        monkeypatch.setenv(f"STREAMSEG_{name}", value)


def test_replay_from_earliest_rebuilds_the_live_features(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    settings, events, pointer = replay_setup(kafka_bootstrap, redis_url, new_topic, namespace)
    drain(settings, len(events))

    shadow = f"{namespace}-shadow"
    result = replay(settings, shadow, seed=3, pointer=pointer)

    assert result.complete and result.records == len(events)
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, shadow), expected)
    assert_state_matches(read_state(redis_client, namespace), expected)
    live_snap = read_snapshot(redis_client, KeyLayout(namespace), ALL)
    shadow_snap = read_snapshot(redis_client, KeyLayout(shadow), ALL)
    assert shadow_snap.user_ids == live_snap.user_ids
    assert shadow_snap.watermark_ms == live_snap.watermark_ms
    np.testing.assert_allclose(shadow_snap.features, live_snap.features, rtol=1e-9, atol=1e-12)
    # The shadow's model scored every user; the live namespace is untouched (cold start).
    assert result.model is not None and result.rescored_users == len(expected)
    records = [SegmentLookup(redis_client, shadow).get(u) for u in expected]
    assert all(r is not None and r.model_version == result.model.model_version for r in records)
    sizes = {
        int(k): int(v) for k, v in redis_client.hgetall(KeyLayout(shadow).segment_sizes).items()
    }
    assert sum(sizes.values()) == len(expected)
    # Each first assignment is a change event on the replay's own segments topic, counted.
    changes = read_topic(
        kafka_bootstrap, f"{settings.kafka.segments_topic}.replay-{shadow}", len(expected)
    )
    assert {(m.key() or b"").decode() for m in changes} == set(expected)
    assert int(redis_client.hget(KeyLayout(shadow).counters, "segment_changes") or 0) == len(
        expected
    )
    assert redis_client.get(KeyLayout(namespace).model_version) is None
    assert (shadow_snap.segment_ids >= 0).all() and (live_snap.segment_ids == -1).all()
    # The replay trained on its snapshot: it left no (months-old) rows for a trainer.
    assert redis_client.llen(KeyLayout(shadow).training_samples) == 0
    assert redis_client.llen(KeyLayout(namespace).training_samples) > 0


def test_two_replays_with_one_seed_agree_exactly(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, _, pointer = replay_setup(kafka_bootstrap, redis_url, new_topic, namespace)
    first, second = f"{namespace}-a", f"{namespace}-b"
    one = replay(settings, first, seed=7, pointer=pointer)
    two = replay(settings, second, seed=7, pointer=pointer)

    a = read_snapshot(redis_client, KeyLayout(first), ALL)
    b = read_snapshot(redis_client, KeyLayout(second), ALL)
    assert a.user_ids == b.user_ids
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.features, b.features)
    assert one.model is not None and two.model is not None
    np.testing.assert_array_equal(np.array(one.model.centers), np.array(two.model.centers))
    assert (one.model.ids, one.model.names) == (two.model.ids, two.model.names)

    comparison = compare_namespaces(redis_client, first, second)
    assert comparison.common_users == comparison.compared_users == len(a)
    assert comparison.change_share == 0.0
    assert comparison.adjusted_rand == pytest.approx(1.0)
    assert all(p.shadow_size == p.other_size and not p.moved for p in comparison.pairs)

    # A replay with one segment more: compared with the first, its extra segment matches none,
    # the sizes still add up on both sides, and a moved field is one that changed by > 20%.
    settings.trainer.n_clusters = 5
    third = f"{namespace}-c"
    five = replay(settings, third, seed=7, pointer=pointer)
    assert five.model is not None and one.model is not None
    wider = compare_namespaces(redis_client, third, first)
    assert wider.compared_users == len(a)
    assert len(wider.pairs) == 5
    assert [p.shadow_id for p in wider.pairs if p.other_id is None] != []
    assert sum(p.shadow_size for p in wider.pairs) == len(a)
    assert sum(p.other_size for p in wider.pairs) == len(a)
    assert wider.change_share > 0 and wider.adjusted_rand < 1
    # The same for a script: every figure at full precision, a moved field as [other, shadow].
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    assert main(["compare", third, "--with", first, "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert answer["change_share"] == wider.change_share
    assert answer["adjusted_rand"] == wider.adjusted_rand
    assert answer["inertia_shadow_scaling"] == wider.inertia_shadow_scaling
    assert [p["shadow_id"] for p in answer["pairs"]] == [p.shadow_id for p in wider.pairs]
    assert [p["moved"] for p in answer["pairs"]] == [
        {field: list(values) for field, values in p.moved.items()} for p in wider.pairs
    ]

    def profiles(model: SegmentModel) -> dict[tuple[int | None, str], float]:
        return {
            (model.ids[i], name): value
            for i, profile in enumerate(model.profiles)
            for name, value in profile.model_dump().items()
        }

    shadow_profiles, other_profiles = profiles(five.model), profiles(one.model)
    for pair in wider.pairs:
        for name, (was, now) in pair.moved.items():
            assert was == pytest.approx(other_profiles[(pair.other_id, name)], abs=1e-9)
            assert now == pytest.approx(shadow_profiles[(pair.shadow_id, name)], abs=1e-9)
            assert abs(now - was) > 0.2 * abs(was)
    assert any(pair.moved for pair in wider.pairs)


def test_an_interrupted_replay_resumes_without_double_counting(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    settings, events, pointer = replay_setup(kafka_bootstrap, redis_url, new_topic, namespace)
    shadow = f"{namespace}-shadow"
    partial = replay(settings, shadow, max_records=1000, pointer=pointer)
    assert not partial.complete and partial.records == 1000 and partial.model is None
    assert redis_client.get(KeyLayout(shadow).model_version) is None

    rest = replay(settings, shadow, pointer=pointer, progress=True)

    assert rest.complete and rest.model is not None
    assert sum(rest.skipped.values()) == 1000  # resumed from the committed offsets
    assert rest.records == len(events) - 1000
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, shadow), expected)


def write_namespace(client: redis.Redis, ns: str, users: list[str], version: int) -> None:
    """Records of ``users`` naming model ``version``, and a current model version."""
    keys = KeyLayout(ns)
    client.mset(
        {
            keys.segment(u): encode_record(
                u,
                segment_id=0,
                segment="champions",
                tier=1,
                model_version=version,
                distance=0.5,
                top_category_spend=None,
                top_category_views=None,
                event_time="2026-01-01T00:00:00.000Z",
                computed_at="2026-01-01T00:00:00.000Z",
            )
            for u in users
        }
    )
    client.set(keys.model_version, version)


def test_an_integer_user_id_is_looked_up_as_its_decimal_string(
    namespace: str, redis_client: redis.Redis
) -> None:
    """The event contract takes user ids as integers too (normalised to strings): a lookup
    client takes them too, on both read paths."""
    write_namespace(redis_client, namespace, ["42"], version=1)
    pointer = PointerKeys(root=namespace)  # unset: the following read uses the fallback
    for lookup in (
        SegmentLookup(redis_client, namespace),
        SegmentLookup(redis_client, None, fallback_namespace=namespace, pointer=pointer),
    ):
        record = lookup.get(42)
        assert record is not None and record.user_id == "42"
        assert lookup.get_many([42, "42", 7]) == [record, record, None]


def test_promote_and_rollback_switch_readers_atomically(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    blue, green = f"{namespace}-blue", f"{namespace}-green"
    users = [f"u{i}" for i in range(300)] + ["{odd}", "a b%"]
    write_namespace(redis_client, blue, users, version=1)
    write_namespace(redis_client, green, users, version=2)
    pointer = PointerKeys(root=namespace)
    promote(redis_client, blue, pointer)

    reader = SegmentLookup(
        redis.Redis.from_url(redis_url), namespace=None, fallback_namespace=blue, pointer=pointer
    )
    done = threading.Event()
    seen: list[tuple[str | None, set[int | None]]] = []
    failures: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                many = {r.model_version if r else None for r in reader.get_many(users)}
                seen.append((reader.last_namespace, many))
                one = reader.get(users[-1])
                seen.append((reader.last_namespace, {one.model_version if one else None}))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(50):
            if i % 2 == 0:
                promote(redis_client, green, pointer)
            else:
                rollback(redis_client, pointer)
    finally:
        done.set()
        thread.join(30)
    assert not failures
    wanted = {blue: {1}, green: {2}}
    assert all(versions == wanted[ns] for ns, versions in seen if ns is not None)
    assert {ns for ns, _ in seen} == {blue, green}  # the switches were seen by the reader
    assert redis_client.get(pointer.live) == blue.encode()  # the 50th switch was a rollback


def test_a_following_pipeline_moves_with_the_pointer_and_catches_up(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """promote and rollback move a running pipeline too: each namespace it enters is first
    caught up from its own applied offsets, so it ends holding every event exactly once."""
    topic = new_topic(partitions=3)
    events = make_events(3000, users=200, seed=5)
    a, b, c, d = events[:1200], events[1200:2000], events[2000:2600], events[2600:]
    settings = settings_for(
        kafka_bootstrap, redis_url, topic, namespace, **{"pipeline.follow_live_namespace": True}
    )
    settings.trainer.n_clusters = 4
    pointer = PointerKeys(root=namespace)
    shadow = f"{namespace}-shadow"
    produce(kafka_bootstrap, topic, as_records(a))
    redis_client.set(pointer.live, namespace)  # named live, so that a rollback can return
    live = SegmentPipeline(settings, pointer=pointer)
    live.start()
    try:
        live.run(max_records=len(a), idle_exit_seconds=20)
        result = replay(settings, shadow, seed=3, pointer=pointer)  # holds a only
        assert result.complete and result.model is not None
        # The replay says where its namespace stands, for every partition it planned.
        shadow_keys = KeyLayout(shadow)
        applied = redis_client.hgetall(shadow_keys.applied_offsets)
        assert {k.decode(): int(v) for k, v in applied.items()} == {
            f"{topic}:{r.partition}": r.stop for r in result.ranges
        }
        assert sum(r.stop for r in result.ranges) == len(a)
        for r in result.ranges:
            assert redis_client.zscore(shadow_keys.watermark, f"rescored:{r.partition}")
        produce(kafka_bootstrap, topic, as_records(b))
        live.run(max_records=len(a) + len(b), idle_exit_seconds=20)
        assert live.keys.namespace == namespace

        promote(redis_client, shadow, pointer)
        produce(kafka_bootstrap, topic, as_records(c))
        live.run(idle_exit_seconds=4)  # switches, reads b again (for the shadow), then c
        assert live.keys.namespace == shadow
        expected = recompute(canonical(a + b + c), FeatureConfig())
        assert_state_matches(read_state(redis_client, shadow), expected)
        left_behind = recompute(canonical(a + b), FeatureConfig())
        assert_state_matches(read_state(redis_client, namespace, list(left_behind)), left_behind)
        shadow_records = [SegmentLookup(redis_client, shadow).get(u) for u in expected]
        assert all(r and r.model_version == result.model.model_version for r in shadow_records)
        # The live segments topic ends naming each user's segment in the shadow: the switch
        # announced every assigned user (the live namespace, in cold start, had sent none).
        sent = live.totals.segment_changes
        messages = [
            ((m.key() or b"").decode(), orjson.loads(m.value() or b"{}"))
            for m in read_topic(kafka_bootstrap, settings.kafka.segments_topic, sent)
        ]
        latest = dict(messages)
        # Every event names the namespace its ids count in; the announcement, once per user,
        # also the namespace its previous_segment_id came from.
        assert {e["namespace"] for _, e in messages} == {shadow}
        announced = [u for u, e in messages if e["previous_namespace"] == namespace]
        assert announced and len(announced) == len(set(announced))
        iso_ms = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
        assert all(iso_ms.fullmatch(e["event_time"]) for _, e in messages)
        assert {u: (e["segment_id"], e["model_version"]) for u, e in latest.items()} == {
            u: (r.segment_id, r.model_version)
            for u, r in zip(expected, shadow_records, strict=True)
            if r is not None
        }

        rollback(redis_client, pointer)
        produce(kafka_bootstrap, topic, as_records(d))
        live.run(idle_exit_seconds=4)  # back: reads c again (for the old namespace), then d
        assert live.keys.namespace == namespace
    finally:
        live.close()
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    counters = {
        k.decode(): int(v) for k, v in redis_client.hgetall(KeyLayout(namespace).counters).items()
    }
    assert counters["applied"] == len(events)  # c was read twice, applied once per namespace


def test_drop_refuses_the_live_namespace_and_deletes_another(
    namespace: str, redis_client: redis.Redis
) -> None:
    blue, green = f"{namespace}-blue", f"{namespace}-green"
    write_namespace(redis_client, blue, ["u1", "u2"], version=1)
    write_namespace(redis_client, green, ["u1", "u2"], version=2)
    pointer = PointerKeys(root=namespace)
    promote(redis_client, blue, pointer)
    promote(redis_client, green, pointer)

    with pytest.raises(ConfigError, match="live"):
        drop_namespace(redis_client, green, configured=blue, pointer=pointer)
    with pytest.raises(ConfigError, match="configured"):
        drop_namespace(redis_client, blue, configured=blue, pointer=pointer)
    # Without a pointer the configured namespace is also the live one: it said "live".
    unset = PointerKeys(root=f"{namespace}-unset")
    with pytest.raises(ConfigError, match=r"it is the configured \(the pipeline writes it\)"):
        drop_namespace(redis_client, blue, configured=blue, pointer=unset)
    listed = {n.name: n for n in list_namespaces(redis_client, "streamseg-unused", pointer)}
    assert listed[green].live and listed[green].model_version == 2

    deleted = drop_namespace(redis_client, blue, configured="streamseg-unused", pointer=pointer)

    assert deleted == 3  # two records and the model version
    assert redis_client.get(KeyLayout(green).segment("u1")) is not None
    assert redis_client.get(pointer.previous) is None  # no rollback into a dropped namespace
    with pytest.raises(ConfigError, match="never promoted, or the previous namespace was dropped"):
        rollback(redis_client, pointer)  # it said "never promoted" after two promotes


def test_the_commands_replay_compare_promote_and_drop(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, as_records(make_events(2000, users=150, seed=4)))
    point_cli_at(monkeypatch, kafka_bootstrap, redis_url, topic, namespace)
    first, second = f"{namespace}-a", f"{namespace}-b"
    pointer = PointerKeys()  # the commands use the real pointer keys of this test server
    try:
        for name in (first, second):
            argv = ["replay", "--from", "earliest", "--namespace-out", name, "--no-progress"]
            argv += ["--nice", "0"]  # in-process: leave the test session's priority alone
            assert main([*argv, "--seed", "1"]) == 0
        assert main(["compare", first, "--with", second]) == 0
        assert main(["promote", first]) == 0
        assert main(["compare", first]) == 2  # with the live one: itself, refused
        assert main(["drop", first]) == 2  # live: refused
        assert main(["namespaces"]) == 0
        assert main(["promote", second]) == 0
        assert main(["rollback-namespace"]) == 0
        assert redis_client.get(pointer.live) == first.encode()
        out = capsys.readouterr().out
        assert "adjusted Rand index" in out and "1.000" in out
        assert f"* {first}" in out
        assert main(["drop", second]) == 0
        assert read_snapshot(redis_client, KeyLayout(second), ALL).total_users == 0
        # Replaying into a dropped namespace starts over despite its group's committed offsets.
        assert main([*argv, "--seed", "1"]) == 0
        assert read_snapshot(redis_client, KeyLayout(second), ALL).total_users == 150
    finally:
        redis_client.delete(pointer.live, pointer.previous)
        redis_client.srem(pointer.registry, first, second)


def test_the_progress_bar_and_the_summary_state_one_rate(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The bar showed rich's speed (the last 30 s, at most 1,000 batches) as events/s, the
    summary the whole reading's average as records/s: 15,324 and 47,903 for one replay whose
    pace changed. Both now show records read and applied per second of reading. And one
    partition is one partition, not "1 partitions"."""
    topic = new_topic(partitions=1)
    produce(kafka_bootstrap, topic, as_records(make_events(1500, users=120, seed=8)))
    point_cli_at(monkeypatch, kafka_bootstrap, redis_url, topic, namespace)
    shadow = f"{namespace}-r"
    argv = ["replay", "--from", "earliest", "--namespace-out", shadow, "--nice", "0"]
    try:
        assert main([*argv, "--max-events", "500", "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "1500 records in 1 partition (0 done before)" in err
        assert "stopped with 1 partition unfinished" in err
        assert main([*argv, "--progress"]) == 0
    finally:
        redis_client.srem(PointerKeys().registry, shadow)  # the command's real registry
    out, err = capsys.readouterr()
    summary = re.search(r"replayed 1,000 records .*?([\d,]+) records/s", out)
    assert summary is not None, out
    bar = re.findall(r"([\d,]+) records/s", err)
    assert bar and bar[-1] == summary[1], (err, out)
    assert "events/s" not in err


def test_a_from_before_every_record_says_the_replay_starts_at_the_beginning(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--from selects by Kafka record time: a review asked for March's events of a backfill
    produced today and got the whole topic without a word."""
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, as_records(make_events(600, users=120, seed=3)))
    point_cli_at(monkeypatch, kafka_bootstrap, redis_url, topic, namespace)
    shadow = f"{namespace}-march"
    try:
        argv = ["replay", "--from", "2024-03-01", "--namespace-out", shadow, "--no-progress"]
        assert main(argv) == 0
    finally:
        redis_client.srem(PointerKeys().registry, shadow)
    err = capsys.readouterr().err
    assert f"--from 2024-03-01T00:00:00.000Z is before every record of {topic}: the replay " in err


def test_a_from_in_the_middle_of_the_topic_replays_what_follows_without_a_warning(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The warning's other side: records before --from exist, so nothing is said, and only
    the records produced after it are read."""
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, as_records(make_events(600, users=120, seed=3)))
    time.sleep(0.2)
    middle = time.time_ns() // 1_000_000
    time.sleep(0.2)
    produce(kafka_bootstrap, topic, as_records(make_events(400, users=150, seed=4)))
    point_cli_at(monkeypatch, kafka_bootstrap, redis_url, topic, namespace)
    shadow = f"{namespace}-later"
    try:
        argv = ["replay", "--from", str(middle), "--namespace-out", shadow, "--no-progress"]
        assert main(argv) == 0
    finally:
        redis_client.srem(PointerKeys().registry, shadow)
    out, err = capsys.readouterr()
    assert "before every record" not in err
    assert re.search(r"replayed 400 records into ", out), out


def _thread_niceness(pid: int) -> list[int]:
    """The niceness of every thread of process ``pid``, from Linux's /proc."""
    values = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # thread ended
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            values.append(int(stat.rsplit(")", 1)[1].split()[16]))  # field 19: nice
    return values


def replay_argv(shadow: str, *options: str) -> list[str]:
    """``streamseg replay`` of the whole topic into ``shadow``, as a command line."""
    argv = [sys.executable, "-m", "consumer.cli", "--log-level", "WARNING", "replay"]
    return [*argv, "--from", "earliest", "--namespace-out", shadow, "--no-progress", *options]


@contextlib.contextmanager
def replay_process(
    env: dict[str, str], argv: list[str], reading: Callable[[], bool]
) -> Iterator[subprocess.Popen[str]]:
    """Start ``argv`` and wait until ``reading()`` says it reads (60 s at most); the process
    is killed on the way out if still running."""
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not reading():
            assert proc.poll() is None and time.monotonic() < deadline, "replay not reading"
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("options", "raised_by"), [([], 10), (["--nice", "0"], 0)])
def test_a_replay_runs_at_a_raised_niceness_in_every_thread(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    options: list[str],
    raised_by: int,
) -> None:
    """By default `streamseg replay` yields the CPU to the live pipeline (niceness +10);
    ``--nice 0`` leaves it as it was."""
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, as_records(make_events(2000, users=150, seed=5)))
    shadow = f"{namespace}-shadow"
    env = service_env(kafka_bootstrap, redis_url, topic, namespace, {"trainer.n_clusters": 4})
    argv = replay_argv(shadow, "--max-rate", "1000", *options)  # ~2 s: seen while it runs
    counters = KeyLayout(shadow).counters
    with replay_process(env, argv, lambda: bool(redis_client.hget(counters, "records"))) as proc:
        niceness = _thread_niceness(proc.pid)  # reading: the Kafka client's threads exist
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "replayed 2,000 records" in out
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + raised_by)
    assert len(niceness) > 1 and set(niceness) == {expected}, niceness


def test_a_replay_stopped_by_sigterm_commits_and_resumes_without_repeats(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """SIGTERM (what a service manager sends) ended a replay without committing: the same
    command read everything again, and dead-lettered the bad records a second time. It now
    stops after the batch in hand, like Ctrl-C, and exits 143."""
    topic = new_topic(partitions=2)
    events = make_events(3000, users=150, seed=6)
    produce(kafka_bootstrap, topic, as_records(events))
    shadow = f"{namespace}-shadow"
    env = service_env(kafka_bootstrap, redis_url, topic, namespace, {"trainer.n_clusters": 4})
    argv = replay_argv(shadow)
    counters = KeyLayout(shadow).counters

    def halfway() -> bool:
        return int(redis_client.hget(counters, "records") or 0) >= 500

    # At most 500 records/s: reading lasts ~6 s, stopped while it runs.
    with replay_process(env, [*argv, "--max-rate", "500"], halfway) as proc:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "run the same command again to resume" in out
    first = int(redis_client.hget(counters, "records") or 0)
    assert 500 <= first < len(events)
    done = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"replayed {len(events) - first:,} records" in done.stdout  # none read twice
    assert int(redis_client.hget(counters, "records") or 0) == len(events)


def test_a_replay_of_an_empty_range_is_refused_and_registers_nothing(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """It read 0 records, then failed with 'too few users for 6 segments', and the empty
    namespace stayed listed by `streamseg namespaces`."""
    settings, _, pointer = replay_setup(kafka_bootstrap, redis_url, new_topic, namespace, 300)
    shadow = f"{namespace}-later"
    later = int(time.time() * 1000) + 86_400_000  # no record is that recent
    with pytest.raises(ConfigError, match="holds no record in the range asked"):
        replay(settings, shadow, from_ms=later, pointer=pointer)
    assert not redis_client.sismember(pointer.registry, shadow)


def test_a_replay_with_too_few_users_for_its_segments_says_so_and_trains_when_asked_for_fewer(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
) -> None:
    """The check was "more users than segments", but the fit needs max(10 x K, 100) rows: a
    small import read the whole topic, then failed in the fit with a message about rows."""
    settings, _, pointer = replay_setup(kafka_bootstrap, redis_url, new_topic, namespace, 300)
    shadow = f"{namespace}-small"
    with pytest.raises(ConfigError, match=r"20 segments need at least 200 \(max\(10 x segments"):
        replay(settings, shadow, n_clusters=20, pointer=pointer)
    result = replay(settings, shadow, n_clusters=4, pointer=pointer)  # resumes: nothing to read
    assert result.complete and result.records == 0
    assert result.model is not None and len(result.model.ids) == 4


def test_replay_arguments_are_checked_before_any_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing is done for a command refused: a bad --namespace-out was refused only after the
    replay had lowered its priority (here the test session's) and logged its niceness."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    with pytest.raises(SystemExit):
        main(["replay", "--from", "earliest", "--namespace-out", "x", "--n-clusters", "0"])
    assert "argument --n-clusters: '0' must be 2-64" in capsys.readouterr().err
    argv = ["replay", "--from", "2026-11-02", "--to", "2026-11-01", "--namespace-out", "x"]
    assert main(argv) == 2
    assert "--to 2026-11-01 is not after --from 2026-11-02" in capsys.readouterr().err
    # Each option's error lists the words that option takes, not the other's.
    assert main(["replay", "--from", "earliest", "--to", "earliest", "--namespace-out", "x"]) == 2
    assert "--to 'earliest': not epoch milliseconds, ISO-8601 or latest" in (
        capsys.readouterr().err
    )
    assert main(["replay", "--from", "latest", "--namespace-out", "x"]) == 2
    assert "--from 'latest': not epoch milliseconds, ISO-8601 or earliest" in (
        capsys.readouterr().err
    )
    assert main(["replay", "--from", "earliest", "--namespace-out", "a:b{c}"]) == 2
    err = capsys.readouterr().err
    assert "--namespace-out 'a:b{c}': must be 1-64 characters" in err
    assert "niceness" not in err
    # The configured namespace is not called live (the pointer may name another).
    argv = ["--namespace", "shop", "replay", "--from", "earliest"]
    assert main([*argv, "--namespace-out", "shop"]) == 2
    err = capsys.readouterr().err
    assert "'shop' is the configured namespace (redis.namespace)" in err
    assert "niceness" not in err
    assert os.getpriority(os.PRIO_PROCESS, 0) == niceness


def test_the_first_promote_can_be_rolled_back_to_the_configured_namespace(
    namespace: str, redis_client: redis.Redis
) -> None:
    """Before any promote the pointer is unset and readers use the configured namespace:
    that is what a rollback of the first promote returns to."""
    configured, shadow = f"{namespace}-main", f"{namespace}-shadow"
    write_namespace(redis_client, configured, ["u1"], version=1)
    write_namespace(redis_client, shadow, ["u1"], version=2)
    pointer = PointerKeys(root=namespace)
    assert promote(redis_client, shadow, pointer, fallback=configured) is None
    assert rollback(redis_client, pointer) == configured
    assert live_namespace(redis_client, "unused", pointer) == configured
    assert rollback(redis_client, pointer) == shadow  # and forth again


def test_promoting_the_live_namespace_again_keeps_the_way_back(
    namespace: str, redis_client: redis.Redis
) -> None:
    """A retried promote made the live namespace its own previous: rollback then switched
    nothing. Promoting what is live changes nothing, the configured one (while the pointer is
    unset) included."""
    configured, shadow = f"{namespace}-main", f"{namespace}-shadow"
    write_namespace(redis_client, configured, ["u1"], version=1)
    write_namespace(redis_client, shadow, ["u1"], version=2)
    pointer = PointerKeys(root=namespace)
    assert promote(redis_client, configured, pointer, fallback=configured) is None
    assert redis_client.get(pointer.live) is None and redis_client.get(pointer.previous) is None
    promote(redis_client, shadow, pointer, fallback=configured)
    assert promote(redis_client, shadow, pointer, fallback=configured) == shadow  # again
    assert rollback(redis_client, pointer) == configured


def test_streamseg_lookup_live_follows_promote_and_rollback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI with the real pointer key (`PointerKeys()`), on a private Redis so that no
    other test sees it: ``--live`` reads what the pointer names, without it redis.namespace."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        write_namespace(client, "shop", ["u1"], version=1)
        write_namespace(client, "shop-rebuilt", ["u1"], version=2)
        monkeypatch.setenv("STREAMSEG_REDIS__URL", server.url)
        base = ["--namespace", "shop", "lookup"]

        def version(*live: str) -> int:
            assert main([*base, *live, "u1"]) == 0
            return int(orjson.loads(capsys.readouterr().out)["model_version"])

        # Before any promote the pointer means the configured namespace; the library said
        # "never seen" for everyone, reading its own default, streamseg.
        assert version("--live") == 1
        following = SegmentLookup.from_url(server.url, None, fallback_namespace="shop")
        record = following.get("u1")
        assert record is not None and record.model_version == 1

        assert main(["--namespace", "shop", "promote", "shop-rebuilt"]) == 0
        capsys.readouterr()
        assert (version("--live"), version()) == (2, 1)
        record = following.get("u1")
        assert record is not None and record.model_version == 2
        assert main(["--namespace", "shop", "rollback-namespace"]) == 0
        capsys.readouterr()
        assert version("--live") == 1
