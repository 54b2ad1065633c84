"""`streamseg run` as a process (consumer/run.py): a stop during start-up is clean (stops
mid-stream and their accounting: test_faults)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable

import pytest

from tests.consumer.test_faults import consumer_env, start_consumer

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_a_sigterm_during_start_up_ends_the_process_cleanly(
    kafka_bootstrap: str, redis_url: str, namespace: str, new_topic: Callable[..., str]
) -> None:
    """The handlers are installed before start-up: SIGTERM while the consumer creates its
    (missing) events topic ends it with status 0 and no traceback, not the default death."""
    topic = f"{new_topic()}-{uuid.uuid4().hex[:6]}"  # not created: start-up creates it, and says so
    proc = start_consumer(consumer_env(kafka_bootstrap, redis_url, topic, namespace))
    assert proc.stderr is not None
    said = b""
    deadline = time.monotonic() + 60
    while b"did not exist: created it" not in said:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, said.decode(errors="replace")
        said += line
        assert time.monotonic() < deadline, said.decode(errors="replace")
    proc.send_signal(signal.SIGTERM)  # start() is still ahead of the batch loop
    _, rest = proc.communicate(timeout=60)
    text = (said + rest).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "Traceback" not in text
