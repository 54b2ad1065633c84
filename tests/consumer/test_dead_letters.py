"""`streamseg dead-letters` on what the real pipeline dead-lettered: counts per reason, and
records sent back once the setting that refused them changed."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import orjson
import pytest
import redis
from confluent_kafka import Message, Producer

from consumer.cli import main
from consumer.redis_keys import KeyLayout
from model.features import FeatureConfig
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
    topic = new_topic(partitions=2)
    valid = make_events(200, users=10, seed=41)
    # Two days ahead of the records' timestamps: refused while
    # pipeline.max_event_ahead_seconds is one day. Written to partition 1 whatever their key
    # would hash to, with headers of their own (a repeated name, a null value).
    two_days_ahead = int(time.time() * 1000) + 2 * DAY_MS
    ahead = [
        {"event_id": f"a{i}", "user_id": f"w{i}", "type": "view", "ts": two_days_ahead}
        for i in range(8)
    ]
    own_headers: list[tuple[str, str | bytes | None]] = [
        ("trace", b"1"),
        ("trace", b"2"),
        ("empty", None),
    ]
    garbage: list[tuple[bytes | None, bytes]] = [(b"g", b"{not json")] * 2
    produce(kafka_bootstrap, topic, as_records(valid) + garbage)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for event in ahead:
        value = orjson.dumps(event)
        key = str(event["user_id"]).encode()
        producer.produce(topic, value=value, key=key, partition=1, headers=own_headers)
    assert producer.flush(30) == 0
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    drain(settings, len(valid) + len(ahead) + len(garbage))

    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("STREAMSEG_KAFKA__EVENTS_TOPIC", topic)
    monkeypatch.setenv("STREAMSEG_KAFKA__DEAD_LETTER_TOPIC", settings.kafka.dead_letter_topic)
    assert main(["dead-letters", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert f"10 dead letters in {settings.kafka.dead_letter_topic!r}" in out
    assert "  ts_out_of_range: 8\n" in out and "  not_json: 2\n" in out
    assert re.search(rf"    first: {re.escape(topic)}\[1\]@\d+: ts=", out), out
    assert "    e.g. " in out and "'{not json'" in out
    # The same for a script.
    assert main(["dead-letters", "--examples", "1", "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert answer["topic"] == settings.kafka.dead_letter_topic
    assert answer["read"] == answer["selected"] == 10
    assert {r: v["count"] for r, v in answer["reasons"].items()} == {
        "ts_out_of_range": 8,
        "not_json": 2,
    }
    first = answer["reasons"]["ts_out_of_range"]["first"]
    assert first["position"].startswith(f"{topic}[1]@") and first["text"].startswith("ts=")
    assert first["value_bytes"] == len(orjson.dumps(ahead[0]))
    (example,) = answer["reasons"]["not_json"]["examples"]
    assert example["text"] == "{not json" and example["value_bytes"] == 9
    assert "resent" not in answer

    # What no setting decides is not sent back unless forced: it would come straight back.
    assert main(["dead-letters", "--reason", "not_json", "--resend"]) == 2
    assert "--resend of not_json: no setting changes how the consumer judges them" in (
        capsys.readouterr().err
    )
    for resend in ([], ["--resend"]):  # a typo listed "0 dead letters" without a word
        assert main(["dead-letters", "--reason", "ts_out_of_rnage", *resend]) == 2
        assert "--reason ts_out_of_rnage: no such reason" in capsys.readouterr().err
    assert main(["dead-letters", "--force"]) == 2
    assert "--force goes with --resend" in capsys.readouterr().err
    assert main(["dead-letters", "--resend", "--examples", "0"]) == 0  # settled ones only
    out = capsys.readouterr().out
    assert "8 dead letters" in out and "of reasons oversize, ts_out_of_range (10 in all)" in out
    assert f"sent 8 back to {topic!r} (ts_out_of_range 8)" in out
    everything = read_topic(kafka_bootstrap, topic, len(valid) + len(garbage) + 2 * len(ahead))

    def resent_from(message: Message) -> bool:
        headers = message.headers() or []
        assert isinstance(headers, list)
        return any(name == "streamseg.resent_from" for name, _ in headers)

    resent = [m for m in everything if resent_from(m)]
    assert sorted(orjson.loads(m.value() or b"")["event_id"] for m in resent) == [
        e["event_id"] for e in ahead
    ]
    assert {m.partition() for m in resent} == {1}  # where they came from, not where keys hash
    for m in resent:
        headers = m.headers() or []
        assert isinstance(headers, list)
        assert headers[:-1] == own_headers  # as they were: order, repeats, null
        assert headers[-1][0] == "streamseg.resent_from"

    # With the limit raised, the consumer takes them: the state is every valid event's.
    settings.pipeline.max_event_ahead_seconds = 3 * 86_400
    drain(settings, len(ahead))
    expected = recompute(canonical(valid + ahead), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    counters = redis_client.hgetall(KeyLayout(namespace).counters)
    assert int(counters[b"applied"]) == len(valid) + len(ahead)
