"""A misspelt --namespace is named as such by lookup, model and report, not shown as unknown
users, a cold start or an empty report (status: tests/consumer/test_status.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from consumer.cli import main
from consumer.redis_keys import KeyLayout, PointerKeys
from tests.consumer.pipeline_support import as_records, drain, make_events, produce, settings_for


@pytest.fixture
def session_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`main()` in-process against the session's Redis (CI sets no environment)."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)


@pytest.mark.usefixtures("session_redis")
@pytest.mark.parametrize(
    "command",
    [["lookup", "u1"], ["model", "show"], ["model", "list"]],
    ids=["lookup", "model-show", "model-list"],
)
def test_a_command_reading_a_namespace_that_holds_nothing_says_so(
    command: list[str],
    namespace: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """lookup printed {"status":"unknown"} (exit 1), model show "no model published yet
    (cold start)": nothing hinted at the misspelt namespace."""
    real = f"{namespace}-real"
    redis_client.hset(KeyLayout(real).counters, mapping={"records": 1})
    registry = PointerKeys().registry
    redis_client.sadd(registry, real)
    try:
        assert main(["--namespace", f"{namespace}-nosuch", *command]) == 2
        err = capsys.readouterr().err
        assert f"streamseg: error: namespace '{namespace}-nosuch' holds no data" in err
        assert real in err.split("(known namespaces: ")[1]
        # The namespace that exists: an unknown user is unknown, no model is a cold start.
        expected = 0 if command == ["model", "list"] else 1
        assert main(["--namespace", real, *command]) == expected
        captured = capsys.readouterr()
        assert "holds no data" not in captured.err
        assert ("unknown" if command[0] == "lookup" else "cold start") in captured.out
    finally:
        redis_client.srem(registry, real)


def test_a_namespace_a_pipeline_wrote_is_named_in_the_hint(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Only replays, pointers and the default were named: a namespace with 395 users that a
    pipeline wrote was missing from "known namespaces" and from `streamseg namespaces`. And
    `report` of a namespace that holds nothing wrote an empty report."""
    topic = new_topic()
    events = make_events(20, users=5, seed=3)
    produce(kafka_bootstrap, topic, as_records(events))
    drain(settings_for(kafka_bootstrap, redis_url, topic, namespace), len(events))
    registry = PointerKeys().registry
    try:
        assert redis_client.sismember(registry, namespace)
        monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
        assert main(["--namespace", f"{namespace}-typo", "report", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"namespace '{namespace}-typo' holds no data" in err
        assert namespace in err.split("(known namespaces: ")[1].split(")")[0].split(", ")
        assert not any(tmp_path.iterdir())
    finally:
        redis_client.srem(registry, namespace)
