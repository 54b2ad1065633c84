"""`streamseg dead-letters` on what the real pipeline dead-lettered: counts per reason, and
records sent back once the setting that refused them changed."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
import redis

from consumer.cli import main
from consumer.redis_keys import KeyLayout
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    drain,
    header_values,
    make_events,
    produce,
    read_state,
    read_topic,
    settings_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

DAY_MS = 86_400_000


def test_dead_letters_are_counted_by_reason_and_sent_back_after_the_fix(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic()
    valid = make_events(200, users=10, seed=41)
    # Two days ahead of the records' timestamps: refused while
    # pipeline.max_event_ahead_seconds is one day.
    two_days_ahead = int(time.time() * 1000) + 2 * DAY_MS
    ahead = [
        {"event_id": f"a{i}", "user_id": f"u{i}", "type": "view", "ts": two_days_ahead}
        for i in range(3)
    ]
    garbage: list[tuple[bytes | None, bytes]] = [(b"g", b"{not json")] * 2
    produce(kafka_bootstrap, topic, as_records(valid) + as_records(ahead) + garbage)
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    drain(settings, len(valid) + len(ahead) + len(garbage))

    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("STREAMSEG_KAFKA__EVENTS_TOPIC", topic)
    monkeypatch.setenv("STREAMSEG_KAFKA__DEAD_LETTER_TOPIC", settings.kafka.dead_letter_topic)
    assert main(["dead-letters", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert f"5 dead letters in {settings.kafka.dead_letter_topic!r}" in out
    assert "  ts_out_of_range: 3\n" in out and "  not_json: 2\n" in out
    assert f"    first: {topic}[0]@{len(valid)}: ts=" in out
    assert "    e.g. " in out and "'{not json'" in out

    assert main(["dead-letters", "--reason", "ts_out_of_range", "--resend", "--examples", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 dead letters" in out and "(5 in all)" in out
    assert f"sent 3 back to {topic!r} (ts_out_of_range 3)" in out
    resent = read_topic(kafka_bootstrap, topic, len(valid) + len(ahead) + len(garbage) + 3)[-3:]
    assert [orjson.loads(m.value() or b"")["event_id"] for m in resent] == ["a0", "a1", "a2"]
    origins = [header_values(m)["streamseg.resent_from"].decode() for m in resent]
    assert origins == [f"{settings.kafka.dead_letter_topic}[0]@{i}" for i in range(3)]

    # With the limit raised, the consumer takes them: the state is every valid event's.
    settings.pipeline.max_event_ahead_seconds = 3 * 86_400
    drain(settings, 3)
    expected = recompute(canonical(valid + ahead), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    counters = redis_client.hgetall(KeyLayout(namespace).counters)
    assert int(counters[b"applied"]) == len(valid) + len(ahead)
