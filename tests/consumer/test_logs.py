"""Logs an operator can ship: JSON lines for notable events, and never a secret."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from consumer.cli import main
from consumer.logs import JsonFormatter, RepeatFilter, RetriedNotice, librdkafka_log
from consumer.pipeline import SegmentPipeline
from tests.consumer.pipeline_support import as_records, make_events, produce, settings_for

REDIS_SECRET = "s3cr3t-redis-PW-4242"
SASL_SECRET = "s3cr3t-sasl-PW-4242"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log record of the test, at DEBUG, as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_pipeline_logs_json_lines_without_secrets(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    json_log: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic()
    events = make_events(200, users=20, seed=1)
    produce(kafka_bootstrap, topic, [*as_records(events), (b"u1", b"not json")])
    parts = urlsplit(redis_url)
    # The test Redis has no password: its default user accepts any (ACL "nopass").
    secret_url = urlunsplit(parts._replace(netloc=f"default:{REDIS_SECRET}@{parts.netloc}"))
    settings = settings_for(
        kafka_bootstrap,
        secret_url,
        topic,
        namespace,
        **{"kafka.sasl_password": SASL_SECRET, "observability.heartbeat_seconds": 0.1},
    )
    assert REDIS_SECRET not in repr(settings) and SASL_SECRET not in str(settings.model_dump())
    pipeline = SegmentPipeline(settings)
    pipeline.start()
    try:
        pipeline.run(max_records=len(events) + 1, idle_exit_seconds=20)
        pipeline.run(idle_exit_seconds=0.3)  # one heartbeat after the dead letter
    finally:
        pipeline.close()

    lines = [orjson.loads(line) for line in json_log.getvalue().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    messages = [line["message"] for line in lines]
    assert any(m.startswith("started:") for m in messages)
    assert any(m.startswith("assigned") for m in messages)
    assert any("dead-lettered 1 records" in m for m in messages)
    assert len(lines) < 50, "a log line per record or per batch"
    captured = capsys.readouterr()
    for text in (json_log.getvalue(), captured.out, captured.err):
        assert REDIS_SECRET not in text and SASL_SECRET not in text


def test_help_never_shows_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMSEG_REDIS__URL", f"redis://default:{REDIS_SECRET}@redis:6379/0")
    monkeypatch.setenv("STREAMSEG_KAFKA__SASL_PASSWORD", SASL_SECRET)
    for argv in (["--help"], ["run", "--help"], ["train", "--help"], ["status", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: streamseg" in out
        assert REDIS_SECRET not in out and SASL_SECRET not in out
    assert "--log-format" in main_help(capsys)


def main_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["--help"])
    return capsys.readouterr().out


def test_librdkafka_repeats_are_logged_once_per_interval() -> None:
    """A broker that is down makes librdkafka log every reconnect, each line with its own
    numbers: the first is kept, its repeats within the interval are not, other lines are."""
    repeats = RepeatFilter(seconds=0.2)

    def passes(message: str) -> bool:
        return repeats.filter(logging.makeLogRecord({"msg": message}))

    refused = (
        "Connect to ipv4#127.0.0.1:1 failed: Connection refused (after {} ms in state CONNECT)"
    )
    assert passes(refused.format(0))
    assert not passes(refused.format(12))
    assert passes("SASL authentication error: invalid credentials")
    time.sleep(0.25)
    assert passes(refused.format(3))
    assert any(isinstance(f, RepeatFilter) for f in librdkafka_log.filters)


def test_a_condition_librdkafka_retries_by_itself_is_info_not_a_warning() -> None:
    """Every first produce to a fresh broker warned 'Failed to acquire idempotence PID ...
    Coordinator load in progress: retrying'."""
    notice = RetriedNotice()
    loading = logging.makeLogRecord(
        {
            "name": "consumer.librdkafka",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "GETPID [thrd:main]: Failed to acquire idempotence PID from broker "
            "127.0.0.1:9092/1: Broker: Coordinator load in progress: retrying",
        }
    )
    level = librdkafka_log.level
    librdkafka_log.setLevel(logging.INFO)
    try:
        assert notice.filter(loading) and loading.levelname == "INFO"
        librdkafka_log.setLevel(logging.WARNING)  # --log-level WARNING: not shown
        loading.levelno, loading.levelname = logging.WARNING, "WARNING"
        assert not notice.filter(loading)
    finally:
        librdkafka_log.setLevel(level)
    other = logging.makeLogRecord({"levelno": logging.WARNING, "msg": "SASL authentication error"})
    assert notice.filter(other) and other.levelno == logging.WARNING
    assert any(isinstance(f, RetriedNotice) for f in librdkafka_log.filters)


def test_with_json_logs_the_error_that_stops_a_command_is_a_json_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMSEG_REDIS__URL", f"redis://svc:{REDIS_SECRET}@127.0.0.1:1/0")
    assert main(["--log-format", "json", "lookup", "u1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    entries = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert entries[-1]["level"] == "ERROR" and entries[-1]["logger"] == "streamseg"
    assert entries[-1]["message"].startswith("error: Redis (redis.url) did not answer")
    assert REDIS_SECRET not in "\n".join(lines)
