"""`streamseg report` and `streamseg tune-k` on the state the real pipeline and trainer wrote."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import redis

from consumer.cli import main
from consumer.model_store import ModelStore
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from consumer.report import chart_versions, segment_colour
from consumer.snapshot import read_snapshot
from consumer.trainer import Trainer
from model.features import FEATURE_NAMES
from tests.consumer.pipeline_support import as_records, drain, make_events, produce, settings_for


def test_any_twenty_consecutive_segment_ids_get_distinct_colours() -> None:
    for first in (0, 5, 13):
        colours = {segment_colour(i) for i in range(first, first + 20)}
        assert len(colours) == 20, first
    assert segment_colour(3) == segment_colour(23)  # stable: a function of the id alone


def test_the_sizes_chart_draws_every_version_of_a_short_history() -> None:
    assert chart_versions([3, 1, 2]) == [1, 2, 3]
    assert chart_versions(list(range(1, 25)), most=24) == list(range(1, 25))


def test_the_sizes_chart_spreads_a_long_history_from_oldest_to_newest() -> None:
    kept = list(range(41, 1041))  # 1,000 kept after pruning
    drawn = chart_versions(kept, most=24)
    assert len(drawn) == 24 and drawn[0] == 41 and drawn[-1] == 1040
    assert drawn == sorted(set(drawn))
    gaps = np.diff(drawn)
    assert gaps.max() - gaps.min() <= 1  # evenly spaced


def _point_cli_at(monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str, redis_url: str) -> None:
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)


def _assert_real_image(path: Path) -> None:
    image = mpimg.imread(path)
    assert image.shape[0] >= 200 and image.shape[1] >= 200, (path.name, image.shape)
    pixels = image.reshape(-1, image.shape[-1])
    assert len(np.unique(pixels[::7], axis=0)) > 10, f"{path.name} is a single colour"


@pytest.fixture
def two_model_versions(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> str:
    """A namespace with users' state, counters (20 records dead-lettered) and two model versions."""
    topic = new_topic()
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    settings.trainer.bootstrap_rows = 300
    settings.trainer.update_rows = 100
    events = make_events(4000, users=500, seed=11)
    malformed: list[tuple[bytes | None, bytes]] = [(None, b"{not json")] * 15 + [
        (b"u1", b'{"user_id": "u1", "type": "purchase", "ts": "yesterday"}')
    ] * 5
    produce(kafka_bootstrap, topic, as_records(events[:2500]) + malformed)
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=2500 + len(malformed), idle_exit_seconds=20)
        trainer = Trainer(redis_client, KeyLayout(namespace), settings.trainer)
        trainer.resume()
        assert trainer.step() is not None
        produce(kafka_bootstrap, topic, as_records(events[2500:]))
        pipeline.run(max_records=len(events) + len(malformed), idle_exit_seconds=20)
        assert trainer.step() is not None
    finally:
        pipeline.close()
    return namespace


def test_report_draws_every_figure_from_the_live_state(
    two_model_versions: str,
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _point_cli_at(monkeypatch, kafka_bootstrap, redis_url)
    out = tmp_path / "report"
    assert main(["--namespace", two_model_versions, "report", "--out", str(out)]) == 0

    index = out / "index.html"
    assert str(index.resolve()) in capsys.readouterr().out
    page = index.read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert set(pngs) == {
        "centres.png",
        "counters.png",
        "features.png",
        "pca.png",
        "sizes.png",
        "tiers.png",
    }
    assert sorted(re.findall(r"src='([^']+\.png)'", page)) == pngs
    for name in pngs:
        _assert_real_image(out / name)
    assert "model v2" in page and "mean net revenue" in page
    assert "<td>dead_lettered</td><td>20</td>" in page and "dead_letter." in page


def test_a_segment_name_with_dollar_signs_is_drawn_as_text(
    two_model_versions: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names come from imported models too; matplotlib read "$...$" as TeX and raised."""
    store = ModelStore(redis_client, KeyLayout(two_model_versions))
    model = store.load(store.current_version() or 0)
    names = [r"big $\frac$ spenders", *model.names[1:]]
    store.publish(model.model_copy(update={"names": names, "model_version": 3}))
    _point_cli_at(monkeypatch, kafka_bootstrap, redis_url)
    out = tmp_path / "report"
    assert main(["--namespace", two_model_versions, "report", "--out", str(out)]) == 0
    assert "big $\\frac$ spenders" in (out / "index.html").read_text()
    _assert_real_image(out / "centres.png")


def test_report_without_a_model_shows_counters_and_distributions(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = new_topic()
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    events = make_events(600, users=100, seed=12)
    produce(kafka_bootstrap, topic, as_records(events))
    drain(settings, len(events))
    _point_cli_at(monkeypatch, kafka_bootstrap, redis_url)
    out = tmp_path / "cold"
    assert main(["--namespace", namespace, "report", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "No model published yet" in page
    assert sorted(p.name for p in out.glob("*.png")) == ["counters.png", "features.png"]
    for png in out.glob("*.png"):
        _assert_real_image(png)


def test_tune_k_scores_each_k_on_a_snapshot(
    two_model_versions: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    snapshot = read_snapshot(redis_client, KeyLayout(two_model_versions), max_users=300)
    assert len(snapshot) == 300 and snapshot.total_users == 500
    assert snapshot.user_ids == sorted(snapshot.user_ids)
    assert snapshot.features.shape == (300, len(FEATURE_NAMES))
    assert (snapshot.segment_ids >= 0).any()

    _point_cli_at(monkeypatch, kafka_bootstrap, redis_url)
    plot = tmp_path / "k.png"
    argv = [
        "--namespace",
        two_model_versions,
        "tune-k",
        "--k-min",
        "2",
        "--k-max",
        "6",
        "--sample",
        "400",
        "--out",
        str(plot),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = [line.split() for line in printed.splitlines() if re.match(r"\s*\d+\s+\d", line)]
    assert [int(row[0]) for row in table] == [2, 3, 4, 5, 6]
    recommended = int(re.search(r"recommended K = (\d+)", printed).group(1))  # type: ignore[union-attr]
    best_silhouette = max(table, key=lambda row: float(row[2]))
    assert recommended == int(best_silhouette[0])
    assert f"plot (inertia and silhouette by K): {plot.resolve()}" in printed
    _assert_real_image(plot)
    picks = dict(
        re.findall(
            r"(highest silhouette|highest Calinski-Harabasz|elbow of the inertia curve) K = (\d+)",
            printed.splitlines()[-2],
        )
    )
    assert picks["highest silhouette"] == str(recommended)
    assert picks["highest Calinski-Harabasz"] == max(table, key=lambda row: float(row[3]))[0]

    # --rule elbow recommends what the line under the table named for it.
    assert main([*argv, "--rule", "elbow"]) == 0
    printed = capsys.readouterr().out
    assert (
        f"recommended K = {picks['elbow of the inertia curve']} (elbow of the inertia curve)"
        in printed
    )


def test_tune_k_on_a_namespace_without_users_says_so(
    kafka_bootstrap: str,
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It said "cannot fit the preprocessing on 0 rows"."""
    _point_cli_at(monkeypatch, kafka_bootstrap, redis_url)
    assert main(["--namespace", namespace, "tune-k"]) == 2
    assert f"namespace {namespace!r} has no users yet" in capsys.readouterr().err
