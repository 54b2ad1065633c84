"""The ``streamseg`` entry point itself: exit statuses shared by every command."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from consumer.cli import main
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
