"""Trainer and pipeline together: bootstrap, publish, hot reload, records naming the version."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from consumer import refit_request
from consumer.cli import main
from consumer.model_store import ModelStore
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.settings import TrainerSettings
from consumer.trainer import LivePointerWatch, Trainer
from consumer.trainer_lease import TrainerLease
from devstack.redis_server import RedisServer
from model.features import FEATURE_NAMES
from model.model_format import SegmentModel
from model.quality import inertia
from tests.consumer.pipeline_support import (
    as_records,
    drain,
    make_events,
    produce,
    push_training_rows,
    settings_for,
)
from tests.consumer.test_faults import small_model

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_published_model_is_picked_up_without_restart(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic(partitions=2)
    settings = settings_for(
        kafka_bootstrap,
        redis_url,
        topic,
        namespace,
        **{"pipeline.model_poll_seconds": 0.1},
    )
    settings.trainer.bootstrap_rows = 300
    first = make_events(3000, users=400, seed=1)
    produce(kafka_bootstrap, topic, as_records(first))
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=len(first), idle_exit_seconds=20)
        assert pipeline.model is None

        keys = KeyLayout(namespace)
        trainer = Trainer(redis_client, keys, settings.trainer)
        trainer.resume()
        model = trainer.step()
        assert model is not None and model.model_version == 1
        assert len(set(model.ids)) == settings.trainer.n_clusters

        second = make_events(1000, users=400, seed=2)
        produce(kafka_bootstrap, topic, as_records(second))
        pipeline.run(max_records=len(first) + len(second), idle_exit_seconds=20)
    finally:
        pipeline.close()
    assert pipeline.model is not None and pipeline.model.model_version == 1
    touched = {e["user_id"] for e in second}
    for user in touched:
        record = orjson.loads(redis_client.get(keys.segment(user)))
        assert record["status"] == "assigned"
        assert record["model_version"] == 1
        assert record["segment_id"] in model.ids
        assert record["segment"] == model.names[model.ids.index(record["segment_id"])]
    # Sizes count every user whose record names a segment (idle users get one from the
    # re-score at the watermark), and agree with the records themselves.
    sizes = {int(k): int(v) for k, v in redis_client.hgetall(keys.segment_sizes).items()}
    everyone = {e["user_id"] for e in first + second}
    records = [orjson.loads(r) for r in redis_client.mget([keys.segment(u) for u in everyone])]
    named: dict[int, int] = {}
    for r in records:
        if r["status"] == "assigned":
            named[r["segment_id"]] = named.get(r["segment_id"], 0) + 1
    assert {k: v for k, v in sizes.items() if v} == named


def test_model_rollback_restores_an_earlier_version(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic()
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    settings.trainer.bootstrap_rows = 200
    settings.trainer.update_rows = 100
    events = make_events(2500, users=300, seed=3)
    produce(kafka_bootstrap, topic, as_records(events[:1500]))
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=1500, idle_exit_seconds=20)
        trainer = Trainer(redis_client, KeyLayout(namespace), settings.trainer)
        trainer.resume()
        assert trainer.step() is not None
        produce(kafka_bootstrap, topic, as_records(events[1500:]))
        pipeline.run(max_records=2500, idle_exit_seconds=20)
        second = trainer.step()
    finally:
        pipeline.close()
    assert second is not None and second.model_version == 2
    store = ModelStore(redis_client, KeyLayout(namespace))
    assert store.versions() == [2, 1]
    store.rollback(1)
    assert store.current_version() == 1
    current = store.load_current()
    assert current is not None and current.model_version == 1


def test_a_running_trainer_continues_from_a_model_rolled_back_or_imported(
    redis_client: redis.Redis, namespace: str
) -> None:
    """The trainer read the current model only at start: after `model rollback` or `model
    import` its next update published from its own model and undid the operator's change."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(8)
    d = len(FEATURE_NAMES)
    users = [f"u{i}" for i in range(300)]
    config = TrainerSettings(n_clusters=2, bootstrap_rows=300, update_rows=300)
    trainer = Trainer(redis_client, keys, config)
    trainer.resume()
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (300, d)), users)
    own = trainer.step()
    assert own is not None
    store = ModelStore(redis_client, keys)
    data = own.model_dump()
    data.update(ids=[40, 41], next_id=42, model_version=store.next_version())
    store.publish(SegmentModel.model_validate(data))  # what `model import` does
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (300, d)), users)
    update = trainer.step()
    assert update is not None and update.model_version == own.model_version + 2
    assert sorted(update.ids) == [40, 41]  # matched to the imported segments, not its own


def test_a_rollback_during_a_fit_is_not_overwritten_by_its_publish(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before each step misses a rollback that lands while the trainer fits: the
    publish itself is conditional on the version the update started from."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(10)
    d = len(FEATURE_NAMES)
    users = [f"u{i}" for i in range(300)]
    trainer = Trainer(
        redis_client, keys, TrainerSettings(n_clusters=2, bootstrap_rows=300, update_rows=300)
    )
    trainer.resume()
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (300, d)), users)
    own = trainer.step()
    assert own is not None and trainer.segmenter is not None
    store = ModelStore(redis_client, keys)
    data = own.model_dump()
    data.update(ids=[40, 41], next_id=42, model_version=store.next_version())
    imported = SegmentModel.model_validate(data)
    predict = trainer.segmenter.predict  # called by every kind of update, before its publish

    def predict_while_an_import_lands(Z: np.ndarray) -> object:
        if store.current_version() != imported.model_version:
            store.publish(imported)
        return predict(Z)

    monkeypatch.setattr(trainer.segmenter, "predict", predict_while_an_import_lands)
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (300, d)), users)
    assert trainer.step() is None  # not published: the import stays current
    assert store.current_version() == imported.model_version
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (300, d)), users)
    update = trainer.step()  # continues from the import
    assert update is not None and sorted(update.ids) == [40, 41]


def test_lookup_client_reads_what_redis_cli_reads(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from consumer.lookup import SegmentLookup
    from tests.consumer.pipeline_support import HOSTILE_IDS

    topic = new_topic()
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    events = make_events(800, users=50, seed=4)
    produce(kafka_bootstrap, topic, as_records(events))
    drain(settings, len(events))
    lookup = SegmentLookup(redis_client, namespace)
    users = sorted({e["user_id"] for e in events})
    records = lookup.get_many([*users, "nobody"])
    assert records[-1] is None
    assert [r.user_id for r in records[:-1] if r is not None] == users
    hostile = next(u for u in users if u in HOSTILE_IDS)
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    key = KeyLayout(namespace).segment(hostile)
    out = subprocess.run(
        ["redis-cli", "-p", port, "GET", key], capture_output=True, check=True
    ).stdout
    assert orjson.loads(out)["user_id"] == hostile
    assert lookup.get(hostile) == records[users.index(hostile)]
    # `streamseg lookup` prints the stored JSON as redis-cli shows it, byte for byte.
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    for live in ([], ["--live"]):  # no pointer set here: --live reads redis.namespace too
        assert main(["--namespace", namespace, "lookup", *live, hostile, "nobody"]) == 0
        printed = capsys.readouterr().out.encode()
        assert printed == out.rstrip(b"\n") + b'\n{"user_id":"nobody","status":"unknown"}\n'
    assert main(["--namespace", namespace, "lookup", "nobody"]) == 1


def test_a_trainer_that_lost_its_lease_cannot_publish(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    import time

    from consumer.exceptions import LeaseLostError

    topic = new_topic()
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    settings.trainer.bootstrap_rows = 200
    events = make_events(1500, users=300, seed=8)
    produce(kafka_bootstrap, topic, as_records(events))
    drain(settings, len(events))
    keys = KeyLayout(namespace)
    slow = TrainerLease(redis_client, keys.trainer_lease, seconds=2)
    assert slow.acquire()
    time.sleep(2.2)  # a fit longer than the lease: the standby takes over
    standby = TrainerLease(redis_client, keys.trainer_lease, seconds=30)
    assert standby.acquire()
    with pytest.raises(LeaseLostError):
        Trainer(redis_client, keys, settings.trainer, lease=slow).step()
    assert ModelStore(redis_client, keys).versions() == []
    published = Trainer(redis_client, keys, settings.trainer, lease=standby).step()
    assert published is not None and published.model_version == 1


def test_a_refit_fits_the_newest_rows_of_refit_periods(
    redis_client: redis.Redis, namespace: str
) -> None:
    """The buffer holds the users' past too: a refit takes users x refit_periods newest rows
    (users counted in the segment sizes), so its centres describe the users as they are."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(0)

    def push(rows: int, level: float) -> None:
        X = rng.lognormal(mean=level, sigma=0.3, size=(rows, len(FEATURE_NAMES)))
        push_training_rows(redis_client, keys, X)

    config = TrainerSettings(n_clusters=2, bootstrap_rows=200, update_rows=100, refit_periods=2)
    trainer = Trainer(redis_client, keys, config)
    trainer.resume()
    push(3000, 0.0)  # the past: small values
    assert trainer.step() is not None  # bootstrap on all 3000 rows
    redis_client.hset(keys.segment_sizes, mapping={"0": 150, "1": 100, "7": -5})  # 250 users
    push(500, 3.0)  # the present: values ~20x larger, the scaling is stale
    model = trainer.step()
    assert model is not None and model.metrics.n_rows == 2 * 250
    assert trainer.metrics.refits.labels(reason="scaling")._value.get() == 1
    # Every centre lies among the present rows, none among the past ones.
    assert trainer.preprocessor is not None and trainer.segmenter is not None
    centres = trainer.preprocessor.inverse_transform(trainer.segmenter.cluster_centers_)
    assert (centres[:, 1] > 5.0).all()


def test_the_trainer_fits_each_user_once_at_their_newest_row(
    redis_client: redis.Redis, namespace: str
) -> None:
    """A consumer catching up on a backlog pushes an active user's row for every period they
    act in but an idle user's only when a re-score pass runs: fitting every row over-weighted
    the active users. Each user counts once, at their newest row."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(4)
    d = len(FEATURE_NAMES)
    active = [f"active-{i}" for i in range(200)]
    idle = [f"idle-{i}" for i in range(200)]
    for _ in range(10):  # the active users' past: one row per period, older values
        push_training_rows(redis_client, keys, rng.lognormal(0.0, 0.1, (200, d)), active)
    push_training_rows(redis_client, keys, rng.lognormal(3.0, 0.1, (200, d)), idle)
    push_training_rows(redis_client, keys, rng.lognormal(3.0, 0.1, (200, d)), active)

    trainer = Trainer(redis_client, keys, TrainerSettings(n_clusters=2, bootstrap_rows=400))
    trainer.resume()
    X = trainer.buffered_rows()
    assert len(X) == 400 and (X > 5.0).all()  # the users as they are now, each once
    model = trainer.step()
    assert model is not None and model.metrics.n_rows == 400
    # The newest 500 rows hold 100 of the active users' past: they count once too.
    assert trainer.buffered_rows(max_rows=500).shape == (400, d)


def test_a_bootstrap_waits_for_rows_of_enough_users(
    redis_client: redis.Redis, namespace: str
) -> None:
    """``bootstrap_rows`` counts rows (a small shop bootstraps on a few periods of each user);
    the fit needs the newest rows of as many users as k-means++ needs rows (here 100)."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(5)
    d = len(FEATURE_NAMES)
    trainer = Trainer(redis_client, keys, TrainerSettings(n_clusters=2, bootstrap_rows=100))
    trainer.resume()
    for _ in range(30):  # 30 periods of 5 users: rows enough, users not
        users = [f"u{i}" for i in range(5)]
        push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (5, d)), users)
    assert trainer.step() is None
    users = [f"v{i}" for i in range(95)]
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (95, d)), users)
    model = trainer.step()
    assert model is not None and model.metrics.n_rows == 100


def test_a_waiting_trainer_reads_the_buffer_only_when_what_was_missing_can_be_there(
    namespace: str,
) -> None:
    """Steps run every second while the trainer waits to bootstrap: each would read (and log)
    the whole buffer. It looks again only when the pipeline's counter says enough rows (or
    rows of enough new users) may have arrived. On a private Redis, whose LRANGE count is
    this trainer's alone."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        keys = KeyLayout(namespace)
        rng = np.random.default_rng(7)
        d = len(FEATURE_NAMES)

        def buffer_reads() -> int:
            return int(client.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0))

        trainer = Trainer(client, keys, TrainerSettings(n_clusters=2, bootstrap_rows=300))
        trainer.resume()
        everyone = [f"u{i}" for i in range(50)]
        push_training_rows(client, keys, rng.lognormal(0.0, 1.0, (50, d)), everyone)
        before = buffer_reads()
        assert trainer.step() is None  # 50 of 300 rows
        assert buffer_reads() == before + 1
        for _ in range(4):  # 250 missing rows: 200 more are not enough
            push_training_rows(client, keys, rng.lognormal(0.0, 1.0, (50, d)), everyone)
            assert trainer.step() is None
        assert buffer_reads() == before + 1
        push_training_rows(client, keys, rng.lognormal(0.0, 1.0, (50, d)), everyone)
        assert trainer.step() is None  # 300 rows, but of 50 users: 50 more users are missing
        assert buffer_reads() == before + 2
        push_training_rows(client, keys, rng.lognormal(0.0, 1.0, (49, d)), everyone[:49])
        assert trainer.step() is None
        assert buffer_reads() == before + 2
        newcomers = [f"v{i}" for i in range(50)]
        push_training_rows(client, keys, rng.lognormal(0.0, 1.0, (50, d)), newcomers)
        model = trainer.step()
        assert buffer_reads() == before + 3
        assert model is not None and model.metrics.n_rows == 100


def test_a_refit_whose_window_holds_too_few_users_fits_every_user(
    redis_client: redis.Redis, namespace: str
) -> None:
    """The refit window counts rows; when its newest rows are a few users' repeats (a catch-up
    of a few active users), each user's newest row of the whole buffer is fitted instead of
    failing for want of rows."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(6)
    d = len(FEATURE_NAMES)
    config = TrainerSettings(n_clusters=2, bootstrap_rows=200, update_rows=100)
    trainer = Trainer(redis_client, keys, config)
    trainer.resume()
    everyone = [f"u{i}" for i in range(150)]
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 0.3, (150, d)), everyone)
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 0.3, (150, d)), everyone)
    assert trainer.step() is not None  # 300 rows of 150 users
    active = [f"u{i}" for i in range(5)]
    for _ in range(60):  # 300 rows of 5 users, 20x larger: the scaling is stale
        push_training_rows(redis_client, keys, rng.lognormal(3.0, 0.3, (5, d)), active)
    model = trainer.step()
    assert model is not None and model.metrics.n_rows == 150
    assert trainer.metrics.refits.labels(reason="scaling")._value.get() == 1


def test_the_refit_check_refits_centres_that_trail_the_users(
    redis_client: redis.Redis, namespace: str
) -> None:
    """Mini-batch steps never relocate a centre: centres stuck in a poor optimum stay there,
    until the refit check finds fresh k-means++ centres fitting the newest rows much better.
    With the centres already good, the check changes nothing."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(1)
    blobs = rng.normal(0.0, 5.0, size=(3, len(FEATURE_NAMES)))

    def push(rows: int) -> None:
        X = blobs[rng.integers(0, 3, rows)] + rng.normal(0.0, 0.3, (rows, len(FEATURE_NAMES)))
        push_training_rows(redis_client, keys, X)

    config = TrainerSettings(
        n_clusters=3, bootstrap_rows=600, update_rows=300, rescale_tolerance=100.0
    )
    trainer = Trainer(redis_client, keys, config)
    trainer.resume()
    push(600)
    assert trainer.step() is not None
    assert trainer.segmenter is not None and trainer.preprocessor is not None
    good = trainer.segmenter.cluster_centers_.copy()
    push(300)
    model = trainer.step()
    assert model is not None and model.metrics.n_rows == 300  # an update, no refit
    assert 0.0 <= trainer.metrics.refit_check_gain._value.get() <= config.refit_min_gain

    # Two centres in one blob and one between the others: each step moves them only a bit.
    stuck = np.stack([good[0], good[0] + 0.01, (good[1] + good[2]) / 2])
    trainer.segmenter.replace_centers(stuck)
    push(300)
    model = trainer.step()
    assert model is not None and model.metrics.n_rows == 600  # refitted on the newest rows
    assert trainer.metrics.refit_check_gain._value.get() > 0.5
    assert trainer.metrics.refits.labels(reason="check")._value.get() == 1
    assert trainer.metrics.refits.labels(reason="scaling")._value.get() == 0
    Z = trainer.preprocessor.transform(trainer.buffered_rows(max_rows=600))
    assert inertia(Z, trainer.segmenter.cluster_centers_) <= 1.01 * inertia(Z, good)


def test_half_life_periods_forgets_per_period_whatever_the_shop_size(
    redis_client: redis.Redis, namespace: str
) -> None:
    """With ``half_life_periods`` an update of one period's rows (one per user) halves the old
    weight every that many periods: the half-life in rows follows the users counted."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(2)

    def push(rows: int) -> None:
        X = rng.lognormal(mean=1.0, sigma=0.3, size=(rows, len(FEATURE_NAMES)))
        push_training_rows(redis_client, keys, X)

    config = TrainerSettings(
        n_clusters=2,
        bootstrap_rows=400,
        update_rows=100,
        half_life_periods=2.0,
        rescale_tolerance=100.0,
        refit_check_updates=0,
    )
    trainer = Trainer(redis_client, keys, config)
    trainer.resume()
    push(400)
    assert trainer.step() is not None
    assert trainer.segmenter is not None
    assert trainer.segmenter.half_life_batches is None
    before = trainer.segmenter.counts_.sum()

    redis_client.hset(keys.segment_sizes, mapping={"0": 120, "1": 80})  # 200 users
    push(200)  # one period: old weight x 0.5 ** (1 / 2)
    model = trainer.step()
    assert model is not None and model.metrics.n_rows == 200
    assert trainer.segmenter.counts_.sum() == pytest.approx(before * 0.5**0.5 + 200)
    assert model.segmenter_params["half_life_points"] == 400.0

    # A shop 10x larger: the same period, the same forgetting.
    redis_client.hset(keys.segment_sizes, mapping={"0": 1200, "1": 800})
    before = trainer.segmenter.counts_.sum()
    push(2000)
    assert trainer.step() is not None
    assert trainer.segmenter.counts_.sum() == pytest.approx(before * 0.5**0.5 + 2000)

    # Three periods' rows of the same 2,000 users in one update: fitted once each, and
    # three periods of forgetting (it used to decay by the users fitted, one period).
    before = trainer.segmenter.counts_.sum()
    users = [f"u{i}" for i in range(2000)]
    for _ in range(3):
        X = rng.lognormal(mean=1.0, sigma=0.3, size=(len(users), len(FEATURE_NAMES)))
        push_training_rows(redis_client, keys, X, users)
    model = trainer.step()
    assert model is not None and model.metrics.n_rows == 2000
    assert trainer.segmenter.counts_.sum() == pytest.approx(before * 0.5**1.5 + 2000)


def test_with_behaviour_unchanged_versions_barely_move_users(
    redis_client: redis.Redis, namespace: str
) -> None:
    """Acceptance: rows from one unchanging population (a correlated cloud without clusters,
    where many partitions are nearly as good) keep each user's segment between consecutive
    versions for at least 98% of users, with the refit check after every update. (With
    ``refit_min_gain`` 0.005 a refit moved 18% of them; judging the scaling by the scaled
    rows' IQR refitted it by chance, moving 17%.)"""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(3)
    d = len(FEATURE_NAMES)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)

    def population(rows: int) -> np.ndarray:
        return np.exp(0.5 * rng.normal(size=(rows, d)) @ mixing)

    def push(rows: int) -> None:
        push_training_rows(redis_client, keys, population(rows))

    config = TrainerSettings(n_clusters=6, bootstrap_rows=2000, update_rows=1000)
    trainer = Trainer(redis_client, keys, config)
    trainer.resume()
    push(2000)
    assert trainer.step() is not None
    redis_client.hset(keys.segment_sizes, "0", 1500)  # refits use the newest 3,000 rows
    users = population(5000)
    models = [trainer.published]
    for _ in range(12):
        push(1000)
        models.append(trainer.step())
    ids = [m.assign(users)[0] for m in models if m is not None]
    assert len(ids) == 13
    moved = [float(np.mean(a != b)) for a, b in itertools.pairwise(ids)]
    assert max(moved) < 0.02, moved


def test_the_trainer_rides_out_a_redis_restart(tmp_path: Path) -> None:
    """Redis down for 3 s while ``streamseg train`` holds the lease: the trainer says so,
    keeps running, takes the lease again when Redis is back and bootstraps from the rows
    pushed afterwards (before, the lease renewal's ConnectionError ended the process)."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    log_file = tmp_path / "train.log"

    def wait_for(text: str, times: int = 1) -> None:
        deadline = time.monotonic() + 30
        while log_file.read_text().count(text) < times:
            assert trainer.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)

    with RedisServer() as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")},
            "STREAMSEG_REDIS__URL": server.url,
            "STREAMSEG_REDIS__NAMESPACE": namespace,
            "STREAMSEG_REDIS__SOCKET_TIMEOUT_SECONDS": "1",
            "STREAMSEG_TRAINER__LEASE_SECONDS": "2",
            "STREAMSEG_TRAINER__BOOTSTRAP_ROWS": "100",
            "STREAMSEG_TRAINER__N_CLUSTERS": "2",
            "STREAMSEG_OBSERVABILITY__METRICS_PORT": "0",
        }
        command = [sys.executable, "-m", "consumer.cli", "train", "--max-seconds", "60"]
        with log_file.open("w") as sink:
            trainer = subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT
            )
        try:
            wait_for("trainer lease acquired")
            server.halt()
            time.sleep(3)
            server.resume()
            wait_for("Redis did not answer the lease")
            wait_for("trainer lease acquired", times=2)
            wait_for("Redis answers again")
            rng = np.random.default_rng(8)
            users = [f"u{i}" for i in range(120)]
            client = redis.Redis.from_url(server.url)
            rows = rng.lognormal(0.0, 1.0, (len(users), len(FEATURE_NAMES)))
            push_training_rows(client, KeyLayout(namespace), rows, users)
            wait_for("published model v1")
        finally:
            trainer.terminate()
            assert trainer.wait(timeout=30) == 0, log_file.read_text()
        said = log_file.read_text()
        assert "signal 15: stopping after the step in progress" in said
        assert re.search(
            r"trainer stopped after [\d.]+ s: published \d+ model versions? \(v1-v", said
        )


def test_train_once_without_enough_data_says_what_is_missing(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--once`` used to wait forever for rows that were not coming."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_OBSERVABILITY__METRICS_PORT", "0")
    monkeypatch.setenv("STREAMSEG_TRAINER__BOOTSTRAP_ROWS", "100")
    base = ["--namespace", namespace, "train", "--once", "--max-seconds", "60"]
    started = time.monotonic()
    assert main(base) == 1
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err
    assert "trainer.bootstrap_rows=100 rows of at least 100 users; 0 rows pushed" in error
    users = [f"u{i}" for i in range(150)]
    rows = np.random.default_rng(9).lognormal(0.0, 1.0, (len(users), len(FEATURE_NAMES)))
    push_training_rows(redis_client, KeyLayout(namespace), rows, users)
    assert main(base) == 0  # bootstraps and publishes v1
    capsys.readouterr()
    assert main(base) == 1  # resumes v1: an update waits for update_rows new rows
    error = capsys.readouterr().err
    assert "an update needs trainer.update_rows=5,000 new rows; 0 since v1" in error
    # Rows pushed while no trainer ran are fresh for the next one (a resumed trainer used
    # to count from the counter as it found it, so --once could never update).
    push_training_rows(redis_client, KeyLayout(namespace), rows * 1.1, users)
    monkeypatch.setenv("STREAMSEG_TRAINER__UPDATE_ROWS", "150")
    assert main(base) == 0
    assert ModelStore(redis_client, KeyLayout(namespace)).current_version() == 2


def test_a_trainer_waiting_for_the_lease_names_its_holder(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second trainer waited in silence (a walkthrough lost ten minutes to it), and
    ``--once`` waited forever: it now says who holds the lease, and --once gives up."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_OBSERVABILITY__METRICS_PORT", "0")
    first = TrainerLease(redis_client, KeyLayout(namespace).trainer_lease, 30.0)
    assert first.acquire()
    try:
        holder = first.holder()
        assert holder is not None and holder.endswith(f":{os.getpid()}")
        base = ["--namespace", namespace, "train"]
        assert main([*base, "--once", "--max-seconds", "60"]) == 1
        err = capsys.readouterr().err
        assert f"--once: trainer {holder} holds the lease of namespace {namespace}" in err
        assert "model refit" not in err
        assert main([*base, "--once", "--refit", "--max-seconds", "60"]) == 1
        assert "; `streamseg model refit` asks it for a refit" in capsys.readouterr().err
        assert main([*base, "--max-seconds", "2"]) == 0
        said = capsys.readouterr().err
        waiting = f"trainer {holder} holds the lease of namespace {namespace}: waiting"
        assert said.count(waiting) == 1
    finally:
        first.release()


def test_train_without_redis_at_start_up_stops_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `run` does: an outage once started is waited out, a wrong URL or password at
    start-up is an error (it used to retry and log once a second, forever)."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("STREAMSEG_OBSERVABILITY__METRICS_PORT", "0")
    started = time.monotonic()
    assert main(["train", "--max-seconds", "60"]) == 2
    assert time.monotonic() - started < 30
    assert "streamseg: error: Redis (redis.url) did not answer" in capsys.readouterr().err


def test_the_trainer_says_when_the_live_pointer_names_another_namespace(
    redis_client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a promote the trainer went on training a namespace lookups no longer read,
    without a word."""
    pointer = PointerKeys()  # the trainer reads the real pointer key of this test server
    watch = LivePointerWatch(redis_client, namespace, every_seconds=0.0)
    try:
        with caplog.at_level("INFO", logger="consumer.trainer"):
            watch.check()  # no pointer: the trainer's namespace is live
            redis_client.set(pointer.live, f"{namespace}-retrain")
            watch.check()
            watch.check()  # said once per namespace
            redis_client.set(pointer.live, namespace)
            watch.check()
    finally:
        redis_client.delete(pointer.live)
    said = [r.getMessage() for r in caplog.records if "live pointer" in r.getMessage()]
    assert said == [
        f"the live pointer names namespace {namespace}-retrain (a promote): lookups read its "
        f"segments while this trainer trains {namespace}; start a trainer with --namespace "
        f"{namespace}-retrain (or redis.namespace) and stop this one",
        f"the live pointer names this trainer's namespace {namespace} again",
    ]


def test_a_trainer_never_publishes_a_version_number_again_after_redis_lost_the_history(
    redis_client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis lost the namespace while a trainer ran: its next trainer (a new lease) found no
    model and published v1 again, another model under a number consumers held, so they never
    loaded it. The numbers this run used carry over: it publishes v3 and says why."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(9)
    config = TrainerSettings(n_clusters=2, bootstrap_rows=100, update_rows=100)
    first = Trainer(redis_client, keys, config)
    first.resume()
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (200, len(FEATURE_NAMES))))
    assert first.step() is not None
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (200, len(FEATURE_NAMES))))
    second = first.step()
    assert second is not None and second.model_version == 2 == first.published_up_to

    for pattern in (f"{namespace}:*", f"{{{namespace}:model}}:*"):  # the data loss
        for key in list(redis_client.scan_iter(match=pattern, count=1000)):
            redis_client.delete(key)
    after = Trainer(redis_client, keys, config, published_up_to=first.published_up_to)
    after.resume()
    push_training_rows(redis_client, keys, rng.lognormal(0.0, 1.0, (200, len(FEATURE_NAMES))))
    with caplog.at_level("ERROR", logger="consumer.model_store"):
        model = after.step()
    assert model is not None and model.model_version == 3
    assert ModelStore(redis_client, keys).current_version() == 3
    assert any("did Redis lose its data?" in r.getMessage() for r in caplog.records)


def test_a_step_longer_than_the_lease_still_publishes(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease was renewed only between steps: a fit longer than ``trainer.lease_seconds``
    (a refit of a million rows takes most of the default 10 s) let it lapse, the publish was
    refused, and the next step lapsed again, so the model never changed. A thread now renews
    it during the step."""
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(3)
    users = [f"u{i}" for i in range(300)]
    push_training_rows(
        redis_client, keys, rng.lognormal(0.0, 1.0, (300, len(FEATURE_NAMES))), users
    )
    fit = Trainer.step

    def slow_step(self: Trainer) -> SegmentModel | None:
        time.sleep(3.0)  # twice the lease: a large shop's fit
        return fit(self)

    monkeypatch.setattr(Trainer, "step", slow_step)
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_OBSERVABILITY__METRICS_PORT", "0")
    monkeypatch.setenv("STREAMSEG_TRAINER__LEASE_SECONDS", "1.5")
    monkeypatch.setenv("STREAMSEG_TRAINER__BOOTSTRAP_ROWS", "200")
    started = time.monotonic()
    assert main(["--namespace", namespace, "train", "--once", "--max-seconds", "20"]) == 0
    assert time.monotonic() - started < 15
    assert ModelStore(redis_client, keys).current_version() == 1
    assert redis_client.exists(keys.trainer_lease) == 0  # released at the end


def test_train_once_that_runs_out_of_time_without_publishing_fails(
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every step failing, ``--once --max-seconds`` stopped at its limit with status 0, as if
    it had published."""
    from model.exceptions import StreamsegError

    def failing_step(self: Trainer) -> SegmentModel | None:
        raise StreamsegError("unusable rows")

    monkeypatch.setattr(Trainer, "step", failing_step)
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_OBSERVABILITY__METRICS_PORT", "0")
    monkeypatch.setenv("STREAMSEG_TRAINER__UPDATE_INTERVAL_SECONDS", "0.5")
    assert main(["--namespace", namespace, "train", "--once", "--max-seconds", "2"]) == 1
    error = capsys.readouterr().err
    assert "training step failed: unusable rows" in error
    assert "--once: nothing published within --max-seconds 2" in error


def test_train_once_refit_refits_now_and_keeps_the_ids(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator who changed something the trainer has not caught up with had to wait for
    update_rows new rows, or stop everything and replay."""
    keys = KeyLayout(namespace)
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_OBSERVABILITY__METRICS_PORT", "0")
    monkeypatch.setenv("STREAMSEG_TRAINER__BOOTSTRAP_ROWS", "100")
    monkeypatch.setenv("STREAMSEG_TRAINER__N_CLUSTERS", "3")
    base = ["--namespace", namespace, "train", "--once", "--max-seconds", "60"]
    assert main([*base, "--refit"]) == 1  # nothing to bootstrap from
    assert "trainer.bootstrap_rows=100 rows" in capsys.readouterr().err
    users = [f"u{i}" for i in range(300)]
    groups = np.exp(3.0 * (np.arange(len(users)) % 3))[:, None]
    rng = np.random.default_rng(4)
    rows = groups * rng.lognormal(0.0, 0.2, (len(users), len(FEATURE_NAMES)))
    push_training_rows(redis_client, keys, rows, users)
    assert main(base) == 0  # v1
    store = ModelStore(redis_client, keys)
    first = store.load_current()
    assert first is not None
    # The users doubled their spending: a refit now, without any new rows counted.
    push_training_rows(redis_client, keys, rows * 2.0, users)
    redis_client.hset(keys.counters, "training_rows", 300)  # as if no row were fresh
    capsys.readouterr()
    assert main([*base, "--refit"]) == 0
    refitted = store.load_current()
    assert refitted is not None and refitted.model_version == 2
    assert sorted(refitted.ids) == sorted(first.ids)  # matched, not new segments
    assert refitted.preprocessing != first.preprocessing  # the scaling was refitted too
    # On the refit window's newest rows: bootstrap_rows here, as no pipeline counted users.
    assert "refitted scaling and centres on 100 rows (request)" in capsys.readouterr().err

    assert main(["--namespace", namespace, "train", "--refit"]) == 2
    assert "--refit goes with --once" in capsys.readouterr().err


def test_model_refit_asks_the_active_trainer_and_waits_for_its_answer(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = KeyLayout(namespace)
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    command = ["--namespace", namespace, "model", "refit"]
    redis_client.hset(keys.counters, "events", 1)  # a namespace, no trainer yet
    assert main(command) == 1
    assert "no trainer holds the lease" in capsys.readouterr().err

    lease = TrainerLease(redis_client, keys.trainer_lease, seconds=30)
    assert lease.acquire()
    config = TrainerSettings(n_clusters=2, bootstrap_rows=300, update_rows=10_000)
    trainer = Trainer(redis_client, keys, config, lease=lease)
    trainer.resume()
    rng = np.random.default_rng(6)
    users = [f"u{i}" for i in range(300)]
    push_training_rows(redis_client, keys, rng.lognormal(0, 1, (300, len(FEATURE_NAMES))), users)
    first = trainer.step()
    assert first is not None
    assert trainer.step() is None  # an update waits for 10,000 new rows

    def step_in_a_second() -> tuple[threading.Thread, list[SegmentModel | None]]:
        """The trainer steps in another thread, as `streamseg train` would."""
        stepped: list[SegmentModel | None] = []
        stepper = threading.Timer(1.0, lambda: stepped.append(trainer.step()))
        stepper.start()
        return stepper, stepped

    stepper, stepped = step_in_a_second()
    try:
        assert main([*command, "--wait", "30"]) == 0
    finally:
        stepper.join()
    out = capsys.readouterr().out
    assert f"refit requested: trainer {lease.holder()} refits at its next step" in out
    assert stepped[0] is not None and stepped[0].model_version == first.model_version + 1
    assert f"model v{first.model_version + 1} is current: the refit" in out
    assert redis_client.exists(keys.refit_request) == 0  # taken: one request, one refit
    assert trainer.step() is None

    # Too few users to refit: the request is answered with the reason, not left to fail again.
    redis_client.delete(keys.training_samples)
    push_training_rows(redis_client, keys, rng.lognormal(0, 1, (5, len(FEATURE_NAMES))), users[:5])
    stepper, stepped = step_in_a_second()
    try:
        assert main([*command, "--wait", "30"]) == 1
    finally:
        stepper.join()
    assert stepped == [None]
    assert (
        "did not refit: a refit needs rows of at least 100 users; the training buffer holds "
        "rows of 5" in capsys.readouterr().err
    )
    assert redis_client.exists(keys.refit_request) == 0

    # A request no trainer takes in time: --wait gives up and says it is still pending.
    assert main([*command, "--wait", "1"]) == 1
    assert "the request is still pending" in capsys.readouterr().err
    assert 3500 < redis_client.ttl(keys.refit_request) <= 3600  # lapses within the hour
    lease.release()


def test_a_requested_refit_whose_publish_is_refused_is_done_at_the_next_step(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyLayout(namespace)
    trainer = Trainer(
        redis_client, keys, TrainerSettings(n_clusters=2, bootstrap_rows=300, update_rows=10_000)
    )
    trainer.resume()
    rng = np.random.default_rng(7)
    users = [f"u{i}" for i in range(300)]
    push_training_rows(redis_client, keys, rng.lognormal(0, 1, (300, len(FEATURE_NAMES))), users)
    first = trainer.step()
    assert first is not None and trainer.segmenter is not None
    store = ModelStore(redis_client, keys)
    number = refit_request.make_request(redis_client, keys)
    predict = trainer.segmenter.predict  # a refit calls it before its publish

    def predict_while_a_rollback_lands(Z: np.ndarray) -> object:
        if store.current_version() == first.model_version:
            store.publish_next(first)  # what an import of the same model does
        return predict(Z)

    monkeypatch.setattr(trainer.segmenter, "predict", predict_while_a_rollback_lands)
    assert trainer.step() is None  # refused: another version came first
    assert "another version became current" in trainer.missing()
    assert refit_request.is_pending(redis_client, keys)  # still asked for
    assert refit_request.read_answer(redis_client, keys, number) is None
    refitted = trainer.step()
    assert refitted is not None and refitted.model_version == first.model_version + 2
    answer = refit_request.read_answer(redis_client, keys, number)
    assert answer == {"covers": number, "version": refitted.model_version}
    assert not refit_request.is_pending(redis_client, keys)


def test_train_once_refit_answers_a_pending_request(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It refitted and left the request, so the next trainer started refitted again."""
    keys = KeyLayout(namespace)
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_OBSERVABILITY__METRICS_PORT", "0")
    monkeypatch.setenv("STREAMSEG_TRAINER__BOOTSTRAP_ROWS", "100")
    users = [f"u{i}" for i in range(300)]
    rows = np.random.default_rng(8).lognormal(0, 1, (300, len(FEATURE_NAMES)))
    push_training_rows(redis_client, keys, rows, users)
    base = ["--namespace", namespace, "train", "--once", "--max-seconds", "60"]
    assert main(base) == 0  # v1
    number = refit_request.make_request(redis_client, keys)  # left by a trainer that died
    assert main([*base, "--refit"]) == 0
    assert refit_request.read_answer(redis_client, keys, number) == {"covers": number, "version": 2}
    assert not refit_request.is_pending(redis_client, keys)


def test_a_trainer_continuing_from_a_rollback_gives_no_id_a_newer_version_gave(
    redis_client: redis.Redis, namespace: str
) -> None:
    """It took the rolled-back model's next_id, so a segment made after `model rollback 1`
    could take the id of v2's new segment, and with it a name chosen for that one."""
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys)
    first = small_model()
    store.publish(first)
    data = first.model_dump()
    data.update(ids=[0, 1, 2, 9], next_id=10, model_version=2)  # v2 made segment 9
    store.publish(SegmentModel.model_validate(data))
    store.rollback(1)
    trainer = Trainer(redis_client, keys, TrainerSettings(n_clusters=4))
    trainer.resume()
    assert trainer.segmenter is not None
    assert first.next_id < 10 and trainer.segmenter.next_id_ == 10


def test_a_refit_answers_the_requests_made_before_it_and_not_one_made_during_it(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests before a step: one refit answers both. A request made while a refit
    reads its rows waits for the next step's refit, on the newer rows."""
    keys = KeyLayout(namespace)
    trainer = Trainer(
        redis_client, keys, TrainerSettings(n_clusters=2, bootstrap_rows=300, update_rows=10_000)
    )
    trainer.resume()
    users = [f"u{i}" for i in range(300)]
    rows = np.random.default_rng(9).lognormal(0, 1, (300, len(FEATURE_NAMES)))
    push_training_rows(redis_client, keys, rows, users)
    first = trainer.step()
    assert first is not None and trainer.segmenter is not None
    one = refit_request.make_request(redis_client, keys)
    two = refit_request.make_request(redis_client, keys)
    assert two == one + 1
    refitted = trainer.step()
    assert refitted is not None
    for number in (one, two):
        assert refit_request.read_answer(redis_client, keys, number) == {
            "covers": two,
            "version": refitted.model_version,
        }
    assert trainer.step() is None  # one refit for both

    read_rows = trainer.buffered_rows
    during: list[int] = []

    def rows_while_a_request_comes(max_rows: int | None = None) -> np.ndarray:
        if not during:
            during.append(refit_request.make_request(redis_client, keys))
        return read_rows(max_rows)

    refit_request.make_request(redis_client, keys)
    monkeypatch.setattr(trainer, "buffered_rows", rows_while_a_request_comes)
    again = trainer.step()
    assert again is not None
    assert refit_request.read_answer(redis_client, keys, during[0]) is None  # not covered
    assert refit_request.is_pending(redis_client, keys)
    latest = trainer.step()  # the next step refits for it
    assert latest is not None
    assert refit_request.read_answer(redis_client, keys, during[0]) == {
        "covers": during[0],
        "version": latest.model_version,
    }
