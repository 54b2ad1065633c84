"""Faults a deployment meets: the broker restarts, the group rebalances again and again, the
trainer dies while publishing, Redis turns slow, Redis comes back empty (and the documented
replay-and-promote recovery rebuilds it). Each stream test ends by comparing every
user's state in Redis with an independent recomputation from all events (1e-9 relative): no
event lost, none applied twice."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.lookup import SegmentLookup
from consumer.model_store import ModelStore
from consumer.namespaces import live_namespace
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from devstack.kafka import KafkaBroker
from devstack.redis_server import RedisServer
from devstack.stack import service_env
from model.features import FEATURE_NAMES, LOG_FEATURES, FeatureConfig
from model.labels import label_segments
from model.model_format import SegmentModel
from model.preprocessing import Preprocessor
from model.segmenter import StreamingSegmenter
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    drain,
    make_events,
    produce,
    read_state,
    settings_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def consumer_env(
    bootstrap: str, redis_url: str, topic: str, namespace: str, **settings: str
) -> dict[str, str]:
    """Environment of a ``streamseg run`` subprocess on ``topic`` writing ``namespace``;
    ``settings`` adds ``STREAMSEG_<NAME>`` variables (e.g. ``KAFKA__SESSION_TIMEOUT_MS``)."""
    defaults = {"pipeline.batch_size": 300, "observability.metrics_port": 0}
    return {
        **service_env(bootstrap, redis_url, topic, namespace, defaults),
        **{f"STREAMSEG_{name}": value for name, value in settings.items()},
    }


def start_consumer(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    """``python -m consumer.cli run`` with ``env``; stderr is a pipe (read it when it ends)."""
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "--log-level", "WARNING", "run", *extra],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def counter(client: redis.Redis, namespace: str, name: str) -> int:
    return int(client.hget(f"{namespace}:counters", name) or 0)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` every 50 ms; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds:.0f} s waiting for {what}"
        time.sleep(0.05)


def stop_gracefully(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """SIGTERM ``proc``, wait for it and return its stderr; fails if it does not exit 0."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    text = err.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


def assert_nothing_lost_or_doubled(
    client: redis.Redis, namespace: str, events: list[dict[str, Any]]
) -> None:
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(client, namespace), expected)
    assert counter(client, namespace, "applied") == len(events)


# -- the broker restarts mid-stream ---------------------------------------------------------


def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    redis_url: str, redis_client: redis.Redis, namespace: str
) -> None:
    events = make_events(30_000, users=1_500, seed=7)
    first, second = events[:20_000], events[20_000:]
    with KafkaBroker(num_partitions=2) as broker:
        topic = f"restart-{namespace}"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
        produce(broker.bootstrap_servers, topic, as_records(first))
        # Small batches: the consumer is still reading the first part when the broker goes.
        env = consumer_env(
            broker.bootstrap_servers, redis_url, topic, namespace, PIPELINE__BATCH_SIZE="100"
        )
        proc = start_consumer(env)
        try:
            wait_for(
                lambda: counter(redis_client, namespace, "applied") > 1_000, 60, "first batches"
            )
            applied_at_halt = counter(redis_client, namespace, "applied")
            broker.halt()  # clean shutdown: SIGTERM, the JVM flushes and exits
            assert applied_at_halt < len(first), "the stream ended before the restart"
            time.sleep(2)  # the consumer sees the broker gone, not just a blip
            broker.resume()  # same ports, same log dir: topics and committed offsets survive
            produce(broker.bootstrap_servers, topic, as_records(second))
            wait_for(
                lambda: counter(redis_client, namespace, "applied") >= len(events),
                75,
                "the consumer to drain after the restart",
            )
            assert proc.poll() is None, "the consumer died with the broker"
        finally:
            if proc.poll() is None:
                stop_gracefully(proc)
    assert_nothing_lost_or_doubled(redis_client, namespace, events)


# -- rebalance storm --------------------------------------------------------------------------


def test_rebalance_storm_of_starting_and_stopping_consumers(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic(partitions=4)
    events = make_events(32_500, users=2_000, seed=11)
    # A killed member's partitions wait for its session to expire: the broker minimum, 6 s.
    env = consumer_env(
        kafka_bootstrap, redis_url, topic, namespace, KAFKA__SESSION_TIMEOUT_MS="6000"
    )
    # The stream arrives in the course of the storm: a chunk before and after each fault.
    chunks = iter([events[i : i + 2_500] for i in range(0, len(events), 2_500)])

    def settled(proc: subprocess.Popen[bytes]) -> None:
        # SIGTERM before the process installed its handler (during imports and start-up) is
        # just the default death; the storm is about members stopping mid-stream. The first
        # heartbeat (with the pid) is written by the batch loop, after the handler is set.
        def beating() -> bool:
            beats = redis_client.hvals(f"{namespace}:consumers")
            return any(orjson.loads(b).get("pid") == proc.pid for b in beats)

        wait_for(beating, 60, f"consumer {proc.pid} to enter its batch loop")

    rng = random.Random(11)
    produce(kafka_bootstrap, topic, as_records(next(chunks)))
    members = [start_consumer(env) for _ in range(3)]
    faults = {"SIGTERM": 0, "SIGKILL": 0}
    try:
        wait_for(lambda: counter(redis_client, namespace, "applied") > 0, 60, "first batches")
        for round_ in range(6):
            produce(kafka_bootstrap, topic, as_records(next(chunks)))
            victim = members.pop(rng.randrange(len(members)))
            settled(victim)
            time.sleep(rng.uniform(0.0, 0.5))
            if round_ == 2:  # one crash: its partitions move only after the session timeout
                victim.kill()
                victim.wait(timeout=10)
                faults["SIGKILL"] += 1
            else:
                stop_gracefully(victim)
                faults["SIGTERM"] += 1
            produce(kafka_bootstrap, topic, as_records(next(chunks)))
            members.append(start_consumer(env))
        assert next(chunks, None) is None
        wait_for(
            lambda: counter(redis_client, namespace, "applied") >= len(events),
            75,
            "the group to drain the stream",
        )
    finally:
        for proc in members:
            if proc.poll() is None:
                settled(proc)
                stop_gracefully(proc)
    assert faults == {"SIGTERM": 5, "SIGKILL": 1}
    assert_nothing_lost_or_doubled(redis_client, namespace, events)


# -- the trainer dies while publishing --------------------------------------------------------


def small_model(seed: int = 0) -> SegmentModel:
    """A real 4-segment model fitted on random feature rows."""
    rng = np.random.default_rng(seed)
    X = np.abs(rng.normal(5.0, 3.0, size=(400, len(FEATURE_NAMES))))
    pre = Preprocessor(FEATURE_NAMES, log_columns=LOG_FEATURES).fit(X)
    Z = pre.transform(X)
    seg = StreamingSegmenter(n_clusters=4, random_state=seed).fit(Z)
    labels = label_segments(
        pre.inverse_transform(seg.cluster_centers_), X, seg.predict(Z), FEATURE_NAMES
    )
    return SegmentModel.from_fitted(seg, pre, labels, n_rows=len(X))


_PUBLISH_FOREVER = """
import sys, redis
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from model.model_format import SegmentModel
url, namespace, path = sys.argv[1:4]
store = ModelStore(redis.Redis.from_url(url), KeyLayout(namespace))
model = SegmentModel.from_json(open(path, "rb").read())
print("ready", flush=True)
while True:
    store.publish(model.model_copy(update={"model_version": store.next_version()}))
"""


def test_a_trainer_killed_while_publishing_never_exposes_a_half_written_model(
    redis_url: str, redis_client: redis.Redis, namespace: str, tmp_path: Path
) -> None:
    store = ModelStore(redis_client, KeyLayout(namespace))
    model = small_model()
    store.publish(model.model_copy(update={"model_version": 1}))
    path = tmp_path / "model.json"
    path.write_bytes(model.to_json())
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def read_forever() -> None:
        nonlocal reads
        reader = ModelStore(redis.Redis.from_url(redis_url), KeyLayout(namespace))
        newest = 0
        while not stop.is_set():
            try:
                loaded = reader.load_current()
            except Exception as exc:  # a half-written model would fail to parse here
                failures.append(repr(exc))
                return
            if loaded is None or loaded.model_version < newest:
                failures.append(f"current went from v{newest} to {loaded}")
                return
            newest = loaded.model_version
            reads += 1
            time.sleep(0.001)  # leave the GIL to the test's own loop now and then

    thread = threading.Thread(target=read_forever)
    thread.start()
    rng = random.Random(5)
    kills = 0
    try:
        for _ in range(5):
            proc = subprocess.Popen(
                [sys.executable, "-c", _PUBLISH_FOREVER, redis_url, namespace, str(path)],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n", proc.stderr.read() if proc.stderr else ""
            time.sleep(rng.uniform(0.05, 0.5))
            proc.kill()
            proc.wait(timeout=10)
            kills += 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, failures
    versions = store.versions()
    assert kills == 5 and reads > 100 and len(versions) > 20
    current = store.load_current()
    assert current is not None and current.model_version == store.current_version()
    # Every version in the history is whole: the transaction either ran entirely or not at all.
    for version in rng.sample(versions, 20):
        assert store.load(version).model_version == version


def test_a_corrupt_model_under_the_current_key_is_rejected_and_the_previous_one_kept(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys)
    good = small_model()
    store.publish(good.model_copy(update={"model_version": 1}))
    settings = settings_for("127.0.0.1:9", redis_url, "unused", namespace)
    pipeline = SegmentPipeline(settings)  # never started: refresh_model needs only Redis
    pipeline.refresh_model(force=True)
    assert pipeline.model is not None and pipeline.model.model_version == 1

    document = json.loads(good.to_json())
    with_nan = {**document, "model_version": 2}
    with_nan["centers"] = [[float("nan")] * len(row) for row in document["centers"]]
    wrong_shape = {**document, "model_version": 3}
    wrong_shape["centers"] = [row[:-1] for row in document["centers"]]
    truncated = good.model_copy(update={"model_version": 4}).to_json()[:-40]
    bad_documents = [json.dumps(with_nan).encode(), json.dumps(wrong_shape).encode(), truncated]
    for version, raw in enumerate(bad_documents, start=2):
        redis_client.mset({keys.model_current: raw, keys.model_version: version})
        for _ in range(3):  # polls go on; the error is logged once per version
            pipeline.refresh_model(force=True)
        assert pipeline.model is not None and pipeline.model.model_version == 1, version
    redis_client.set(keys.model_version, "xyz")  # a hand edit: the version itself unreadable
    pipeline.refresh_model(force=True)
    assert pipeline.model is not None and pipeline.model.model_version == 1
    messages = [r.getMessage() for r in caplog.records]
    rejected = [m for m in messages if "rejected published model" in m]
    assert len(rejected) == len(bad_documents) + 1
    assert "holds 'xyz', not a model version" in rejected[-1]

    store.publish(good.model_copy(update={"model_version": 5}))
    pipeline.refresh_model(force=True)
    assert pipeline.model is not None and pipeline.model.model_version == 5
    pipeline.close()


# -- slow Redis -------------------------------------------------------------------------------


def test_a_slow_redis_applies_back_pressure_and_loses_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    topic = new_topic(partitions=2)
    events = make_events(15_000, users=800, seed=31)
    chunks = [events[i : i + 1_500] for i in range(0, len(events), 1_500)]
    with RedisServer() as server:
        settings = settings_for(
            kafka_bootstrap, server.url, topic, namespace, **{"pipeline.batch_size": 300}
        )
        settings.redis.socket_timeout_seconds = 1.0
        client = redis.Redis.from_url(server.url)
        pipeline = SegmentPipeline(settings)
        pipeline.start()
        worker = threading.Thread(
            target=pipeline.run, kwargs={"max_records": len(events), "idle_exit_seconds": 30}
        )
        stop = threading.Event()
        pauses = {"slow": 0, "beyond_timeout": 0}

        def stall_redis() -> None:
            admin = redis.Redis.from_url(server.url)
            rng = random.Random(31)
            while not stop.is_set():
                # Mostly 0.5 s stalls (slow, within the 1 s socket timeout); every third one
                # 3 s, beyond the timeout: the pipeline must pause and retry, not give up.
                if (pauses["slow"] + pauses["beyond_timeout"]) % 3 == 2:
                    admin.client_pause(3_000, all=True)
                    pauses["beyond_timeout"] += 1
                else:
                    admin.client_pause(500, all=True)
                    pauses["slow"] += 1
                stop.wait(rng.uniform(0.6, 1.2))

        staller = threading.Thread(target=stall_redis, daemon=True)
        worker.start()
        staller.start()
        try:
            for chunk in chunks:  # a stream lasting ~10 s, so the stalls hit it throughout
                produce(kafka_bootstrap, topic, as_records(chunk))
                time.sleep(1.0)
            worker.join(timeout=60)
            assert not worker.is_alive(), "the pipeline did not finish under a slow Redis"
        finally:
            stop.set()
            pipeline.stop()
            worker.join(timeout=30)
            staller.join(timeout=10)
            pipeline.close()
        assert pauses["slow"] >= 4 and pauses["beyond_timeout"] >= 2, pauses
        redis_errors = pipeline.metrics.registry.get_sample_value("streamseg_redis_errors_total")
        assert redis_errors is not None and redis_errors >= 1  # it did wait and retry
        time.sleep(1.6)  # let the last pause end before reading
        assert_nothing_lost_or_doubled(client, namespace, events)
        assert pipeline.totals.records == len(events)


# -- Redis restarts with an empty dataset: replay rebuilds it ----------------------------------


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m consumer.cli ARGS`` with ``env``, as an operator would type it."""
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_redis_restarted_empty_is_rebuilt_by_replay_and_promote(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    topic = new_topic(partitions=2)
    events = make_events(12_000, users=800, seed=37)
    # before the restart | consumed into the emptied Redis | while consumers are stopped | after
    before, during, gap, after = (events[i : i + 3_000] for i in range(0, len(events), 3_000))
    rebuilt = f"{namespace}-rebuilt"
    with RedisServer() as server:  # private: the restart must not empty the session's Redis
        client = server.client()
        live = settings_for(kafka_bootstrap, server.url, topic, namespace)
        produce(kafka_bootstrap, topic, as_records(before))
        drain(live, len(before))
        assert_nothing_lost_or_doubled(client, namespace, before)

        server.restart()  # no persistence: it comes back at the same URL with nothing in it
        assert client.dbsize() == 0
        # The consumers carry on from their committed offsets: the state they now write holds
        # only what arrived since the restart. This is the loss the recovery repairs.
        produce(kafka_bootstrap, topic, as_records(during))
        drain(live, len(during))
        assert counter(client, namespace, "applied") == len(during)

        # The recovery in the README (Operating it > Recovery): consumers stopped (events keep
        # arriving meanwhile), replay the whole topic into a new namespace, promote it, restart
        # the consumers writing that namespace in their own group.
        produce(kafka_bootstrap, topic, as_records(gap))
        env = consumer_env(kafka_bootstrap, server.url, topic, namespace)
        done = run_cli(env, "replay", "--from", "earliest", "--namespace-out", rebuilt)
        assert done.returncode == 0, done.stderr
        assert f"replayed {len(before) + len(during) + len(gap):,} records into {rebuilt}" in (
            done.stdout
        )
        done = run_cli(env, "promote", rebuilt)
        assert done.returncode == 0, done.stderr
        assert live_namespace(client, namespace) == rebuilt

        produce(kafka_bootstrap, topic, as_records(after))
        resumed = settings_for(kafka_bootstrap, server.url, topic, rebuilt)
        assert resumed.kafka.group_id == live.kafka.group_id  # same group, same offsets
        drain(resumed, len(gap) + len(after))

        # Every event's effect is in the rebuilt namespace exactly once: the replay applied
        # `gap` too, and the resumed consumers skipped it by (partition, offset).
        assert_nothing_lost_or_doubled(client, rebuilt, events)
        assert counter(client, rebuilt, "duplicates") == len(gap)
        lookup = SegmentLookup(client, namespace=None, fallback_namespace=namespace)
        record = lookup.get(after[-1]["user_id"])
        assert lookup.last_namespace == rebuilt
        assert record is not None and record.model_version == 1  # the replay's model


# -- soak -------------------------------------------------------------------------------------


def test_short_soak_has_no_errors_bounded_lag_and_flat_memory(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    soak_report = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            "scripts/soak.py",
            "--rate",
            "2500",
            "--seconds",
            "20",
            "--json",
            str(soak_report),
        ],
        cwd=REPO_ROOT,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=85,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = orjson.loads(soak_report.read_bytes())
    assert report["errors"] == [], report["errors"]
    assert report["records_lost"] == 0
    assert report["records_produced"] >= 0.9 * 2000 * 20  # 80% of 2500 events/s for 20 s
    assert report["max_lag_records"] < 2000 * 5  # never more than ~5 s behind
    assert report["rss_growth_ratio"] < 0.20
    assert "max lag" in done.stdout
