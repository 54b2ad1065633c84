"""`streamseg explain` on what the real pipeline and trainer wrote."""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson
import pytest
import redis

from consumer.cli import main
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from consumer.settings import PipelineSettings
from consumer.state_store import StateStore
from model.features import COL, FeatureConfig, derive_features
from tests.consumer.pipeline_support import (
    T0,
    as_records,
    drain,
    point_cli_at_servers,
    produce,
    settings_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_explain_names_the_nearest_segments_and_the_features_that_decide(
    two_model_versions: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = KeyLayout(two_model_versions)
    user = "u7"
    store = StateStore(redis_client, keys)
    state = store.read_states([user])
    clock = store.read_watermark()
    assert clock is not None
    lateness = PipelineSettings().allowed_lateness_seconds * 1000.0
    at = max(float(state[0, COL["last_ts_ms"]]), clock - lateness)
    features = derive_features(state, at, FeatureConfig())
    model = ModelStore(redis_client, keys).load_current()
    assert model is not None
    [segment], positions, _ = model.assign(features)

    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
    assert main(["--namespace", two_model_versions, "explain", user]) == 0
    out = capsys.readouterr().out
    stored = orjson.loads(redis_client.get(keys.segment(user)) or b"{}")
    assert f"stored record: {orjson.dumps(stored).decode()}" in out
    nearest = re.search(r"nearest segments \(id, name, distance in scaled units\): (\d+) ", out)
    assert nearest is not None and int(nearest[1]) == segment
    assert f"why {model.names[positions[0]]!r} and not " in out
    assert all(name in out for name in model.feature_names)  # one row per feature

    # For scripts: the same at full precision.
    assert main(["--namespace", two_model_versions, "explain", user, "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert answer["record"] == stored and answer["model_version"] == model.model_version
    assert list(answer["features"].values()) == features[0].tolist()
    assert answer["nearest"][0]["segment_id"] == segment
    assert len(answer["nearest"]) == len(model.ids)
    terms = answer["margin_terms"]
    assert list(terms) == model.feature_names
    assert sum(terms.values()) == pytest.approx(answer["margin"], rel=1e-12)
    distances = [n["distance"] for n in answer["nearest"]]
    assert answer["margin"] == pytest.approx(distances[1] ** 2 - distances[0] ** 2, rel=1e-9)

    assert main(["--namespace", two_model_versions, "explain", "nobody"]) == 1
    assert "user 'nobody' has no state in namespace" in capsys.readouterr().out
    assert main(["--namespace", two_model_versions, "explain", "nobody", "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out)["state"] is None
    assert main(["--namespace", f"{two_model_versions}-typo", "explain", user]) == 2
    assert "holds no data" in capsys.readouterr().err


def test_explain_prints_ids_as_data_and_features_alone_before_any_model(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A user id "u[/x]" is rich markup's closing tag: explain died with MarkupError."""
    topic = new_topic()
    user = "u[/x] [red]"
    event = {"event_id": "e1", "user_id": user, "type": "view", "ts": int(T0)}
    produce(kafka_bootstrap, topic, as_records([event]))
    drain(settings_for(kafka_bootstrap, redis_url, topic, namespace), 1)
    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
    assert main(["--namespace", namespace, "explain", user]) == 0
    out = capsys.readouterr().out
    assert f"user {user!r} in namespace {namespace!r}" in out
    assert "no model published yet (cold start): the features alone" in out
    assert "views" in out
