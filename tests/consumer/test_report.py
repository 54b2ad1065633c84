"""`streamseg report` on the state the real pipeline and trainer wrote."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from consumer.cli import main
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from consumer.report import chart_versions, segment_colour
from tests.consumer.figure_support import assert_real_image
from tests.consumer.pipeline_support import (
    as_records,
    drain,
    make_events,
    point_cli_at_servers,
    produce,
    settings_for,
)


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


def test_report_draws_every_figure_from_the_live_state(
    two_model_versions: str,
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
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
        assert_real_image(out / name)
    assert "model v2" in page and "mean net revenue" in page
    assert "<td>dead_lettered</td><td>20</td>" in page and "dead_letter." in page
    # counters of records are a share of the records consumed; others (change events) are not
    assert re.search(r"<td>dead_lettered</td><td>20</td><td>\d+\.\d\d%</td>", page)
    assert re.search(r"<td>segment_changes</td><td>[\d,]+</td><td>-</td>", page)


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
    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
    out = tmp_path / "report"
    assert main(["--namespace", two_model_versions, "report", "--out", str(out)]) == 0
    assert "big $\\frac$ spenders" in (out / "index.html").read_text()
    assert_real_image(out / "centres.png")


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
    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
    out = tmp_path / "cold"
    assert main(["--namespace", namespace, "report", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "No model published yet" in page
    assert sorted(p.name for p in out.glob("*.png")) == ["counters.png", "features.png"]
    for png in out.glob("*.png"):
        assert_real_image(png)
