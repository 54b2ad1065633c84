"""`streamseg tune-k` on the state the real pipeline and trainer wrote."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from consumer.cli import main
from consumer.exceptions import ConfigError
from consumer.redis_keys import KeyLayout
from consumer.snapshot import Snapshot, read_snapshot
from consumer.tune_k import tune_k_on_snapshot
from model.features import FEATURE_NAMES, STATE_WIDTH
from tests.consumer.figure_support import assert_real_image
from tests.consumer.pipeline_support import point_cli_at_servers


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

    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
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
    assert_real_image(plot)
    picks = dict(
        re.findall(
            r"(highest silhouette|highest Calinski-Harabasz|elbow of the inertia curve) K = (\d+)",
            next(line for line in printed.splitlines() if line.startswith("each rule's pick")),
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

    # --json says the same for a script, at full precision.
    assert main([*argv, "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert [s["k"] for s in answer["scores"]] == [2, 3, 4, 5, 6]
    assert [round(s["silhouette"], 3) for s in answer["scores"]] == [float(r[2]) for r in table]
    assert answer["recommended_k"] == recommended and answer["rule"] == "silhouette"
    assert answer["picks"] == {
        "silhouette": recommended,
        "calinski-harabasz": int(picks["highest Calinski-Harabasz"]),
        "elbow": int(picks["elbow of the inertia curve"]),
    }
    assert answer["users_sampled"] == 400 and answer["users"] == 500
    assert answer["plot"] == str(plot.resolve())

    # The edge of the range is no answer: say so. A sample too small names the sample.
    assert main([*argv, "--k-max", "2"]) == 0
    assert "the recommended K is the largest tried" in capsys.readouterr().out
    assert not answer["recommended_is_largest_tried"] or recommended == 6
    assert main([*argv, "--k-max", "2", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["recommended_is_largest_tried"] is True
    assert main([*argv, "--sample", "5"]) == 2
    assert (
        "K up to 6 needs more than 6 users, and tune-k has a sample of 5 users (--sample) "
        "of its 500" in capsys.readouterr().err
    )


def test_tune_k_refuses_a_figure_it_cannot_write_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--out k.txt`` failed with a matplotlib traceback after every fit had run; now it is
    refused before Redis is even asked (nothing answers at this URL)."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", "redis://127.0.0.1:1/0")
    assert main(["tune-k", "--out", str(tmp_path / "k.txt")]) == 2
    error = capsys.readouterr().err
    assert "cannot write a figure as 'txt'; name it .png, .svg or .pdf" in error


def test_tune_k_on_a_namespace_without_users_says_so(
    kafka_bootstrap: str,
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It said "cannot fit the preprocessing on 0 rows"."""
    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
    assert main(["--namespace", namespace, "tune-k"]) == 2
    assert f"namespace {namespace!r} has no users yet" in capsys.readouterr().err


@pytest.mark.parametrize(("k_min", "k_max"), [(1, 5), (6, 5)])
def test_a_k_range_that_cannot_be_scored_is_named(k_min: int, k_max: int) -> None:
    snapshot = Snapshot(
        user_ids=[],
        states=np.empty((0, STATE_WIDTH)),
        features=np.empty((0, len(FEATURE_NAMES))),
        segment_ids=np.empty(0, dtype=np.int64),
        watermark_ms=None,
        total_users=0,
    )
    with pytest.raises(ConfigError, match=rf"need 2 <= --k-min <= --k-max, got {k_min}..{k_max}"):
        tune_k_on_snapshot(snapshot, k_min, k_max)
