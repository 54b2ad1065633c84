"""The feature settings a namespace's consumers record (consumer/feature_settings.py), and
`explain` computing with them rather than with its own."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import pytest
import redis

from consumer.cli import main
from consumer.feature_settings import FeatureSettings, recorded_feature_settings
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from consumer.state_store import StateStore
from model.features import COL, FeatureConfig, derive_features
from tests.consumer.pipeline_support import (
    as_records,
    drain,
    make_events,
    point_cli_at_servers,
    produce,
    settings_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_what_another_service_wrote_there_is_no_record() -> None:
    refused = b'{"features": {"views_half_life_days": -1}, "allowed_lateness_seconds": 60}'
    for raw in (b"", b"{}", refused, b"[1]", b'{"features": [], "allowed_lateness_seconds": 1}'):
        assert FeatureSettings.from_json(raw) is None, raw
    own = FeatureSettings(FeatureConfig(views_half_life_days=3.5), 60.0)
    assert FeatureSettings.from_json(own.to_json()) == own
    # A field a newer release added is left out, not the whole record.
    newer = orjson.loads(own.to_json())
    newer["features"]["wishlist_half_life_days"] = 7
    assert FeatureSettings.from_json(orjson.dumps(newer)) == own


def test_explain_decays_with_the_settings_the_consumers_recorded(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    new_topic: Callable[..., str],
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run with the default configuration against consumers with other half-lives, explain
    described other features than the segments were given (10 of 11 users in a review)."""
    topic = new_topic()
    events = make_events(200, users=10, seed=4)
    produce(kafka_bootstrap, topic, as_records(events))
    overrides = {"features.views_half_life_days": 3.0, "pipeline.allowed_lateness_seconds": 60}
    drain(settings_for(kafka_bootstrap, redis_url, topic, namespace, **overrides), len(events))
    keys = KeyLayout(namespace)
    recorded = recorded_feature_settings(redis_client, keys)
    assert recorded == FeatureSettings(FeatureConfig(views_half_life_days=3.0), 60.0)

    user = events[0]["user_id"]
    store = StateStore(redis_client, keys)
    state = store.read_states([user])
    clock = store.read_watermark()
    assert clock is not None
    at = max(float(state[0, COL["last_ts_ms"]]), clock - 60_000)
    expected = derive_features(state, at, recorded.features)[0]
    assert expected.tolist() != derive_features(state, at, FeatureConfig())[0].tolist()

    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
    assert main(["--namespace", namespace, "explain", user, "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert list(answer["features"].values()) == expected.tolist()
    assert answer["feature_settings"] == "namespace"
    assert main(["--namespace", namespace, "explain", user]) == 0
    assert (
        "with the consumers' feature settings, not this command's (features.views_half_life_days "
        "14 -> 3, pipeline.allowed_lateness_seconds 3600 -> 60)"
    ) in capsys.readouterr().out

    # A consumer of the namespace with other settings says so at start, and records its own.
    other = SegmentPipeline(settings_for(kafka_bootstrap, redis_url, topic, namespace))
    said = logging.getLogger("consumer.feature_settings")
    said.addHandler(caplog.handler)  # main() above replaced the root's handlers
    try:
        other.start()
    finally:
        said.removeHandler(caplog.handler)
        other.close()
    assert "was written with other feature settings (features.views_half_life_days 3 -> 14" in (
        caplog.text
    )
    assert recorded_feature_settings(redis_client, keys) == FeatureSettings(FeatureConfig(), 3600)


def test_a_pipeline_records_its_settings_in_the_namespace_it_moves_to(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    new_topic: Callable[..., str],
    namespace: str,
) -> None:
    """A consumer following the live pointer writes the namespace it moved to: its settings
    were recorded only under the configured one."""
    overrides = {"features.views_half_life_days": 5.0}
    settings = settings_for(kafka_bootstrap, redis_url, new_topic(), namespace, **overrides)
    moved_to = f"{namespace}-promoted"
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    expected = FeatureSettings(FeatureConfig(views_half_life_days=5.0), 3600.0)
    try:
        assert recorded_feature_settings(redis_client, KeyLayout(moved_to)) is None
        pipeline.switch_namespace(moved_to)
        assert recorded_feature_settings(redis_client, KeyLayout(namespace)) == expected
        assert recorded_feature_settings(redis_client, KeyLayout(moved_to)) == expected
    finally:
        pipeline.close()
        redis_client.delete(KeyLayout(moved_to).feature_settings)
