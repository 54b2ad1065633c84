"""A misspelt --namespace is named as such by lookup and model, not shown as unknown users
or a cold start (status: tests/consumer/test_status.py)."""

from __future__ import annotations

import pytest
import redis

from consumer.cli import main
from consumer.redis_keys import KeyLayout, PointerKeys


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
