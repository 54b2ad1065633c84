"""The ``streamseg`` entry point itself: exit statuses shared by every command."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from consumer.cli import build_parser, main
from devstack.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """``streamseg ... | head``: a closed pipe is status 141, as for any command a shell
    pipes, without a BrokenPipeError traceback."""
    command = [sys.executable, "-m", "consumer.cli", "generate", "--users", "300", "--days", "2"]
    writer = subprocess.Popen(
        [*command, "--no-kafka", "--out", "-", "--no-progress"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdout is not None and writer.stderr is not None
    assert len(writer.stdout.read(100)) == 100
    writer.stdout.close()
    errors = writer.stderr.read().decode()
    assert writer.wait(timeout=60) == 141
    assert "Traceback" not in errors and "BrokenPipeError" not in errors


def test_status_names_the_server_that_did_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As every command: one line naming the setting, exit status 2 (status said 'cannot read
    the deployment's state' and exited 1). A Kafka that does not answer: see test_status."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", "redis://127.0.0.1:1/0")
    assert main(["status"]) == 2
    assert "streamseg: error: Redis (redis.url) did not answer" in capsys.readouterr().err


def test_a_redis_that_refuses_is_not_said_not_to_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong password (or an ACL user without a key) is a refusal, not an outage."""
    with RedisServer(password="right-" + uuid.uuid4().hex) as server:
        monkeypatch.setenv("STREAMSEG_REDIS__URL", f"redis://:wrong@127.0.0.1:{server.port}/0")
        assert main(["lookup", "u1"]) == 2
    said = capsys.readouterr().err
    assert "streamseg: error: Redis (redis.url) refused: " in said and "wrong" not in said


def test_run_exits_when_redis_refuses_at_start_up(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """It printed the one line and then never exited: the Kafka consumer it had made before
    asking Redis was never closed, and librdkafka's threads kept the process alive."""
    with RedisServer(password="right-" + uuid.uuid4().hex) as server:
        env = {
            **os.environ,
            "STREAMSEG_REDIS__URL": f"redis://:wrong@127.0.0.1:{server.port}/0",
            "STREAMSEG_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMSEG_KAFKA__EVENTS_TOPIC": new_topic(),
            "STREAMSEG_OBSERVABILITY__METRICS_PORT": "0",
        }
        done = subprocess.run(
            [sys.executable, "-m", "consumer.cli", "run"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr.decode(errors="replace")
    assert b"streamseg: error: Redis (redis.url) refused" in done.stderr


def test_the_global_options_work_after_the_command_too() -> None:
    """``streamseg lookup --namespace shop u1`` said "unrecognized arguments"; a level in
    lower case was an invalid choice; ``model show v3`` (as `model list` prints versions)
    was not an int."""
    parser = build_parser()
    after = parser.parse_args(["lookup", "--namespace", "shop", "--log-level", "debug", "u1"])
    assert (after.namespace, after.log_level, after.log_format) == ("shop", "DEBUG", "text")
    before = parser.parse_args(["--namespace", "shop", "lookup", "u1"])
    assert (before.namespace, before.log_level, before.config) == ("shop", "INFO", None)
    nested = parser.parse_args(["model", "show", "v3", "--namespace", "shop"])
    assert (nested.version, nested.namespace) == (3, "shop")
    assert parser.parse_args(["model", "export", "m.json", "--version", "v2"]).model_version == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["model", "rollback", "v0"])


def test_a_database_index_redis_refuses_is_not_said_not_to_answer(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url.rsplit("/", 1)[0] + "/99")
    assert main(["lookup", "u1"]) == 2
    said = capsys.readouterr().err
    assert "streamseg: error: Redis (redis.url) refused: " in said and "index" in said
