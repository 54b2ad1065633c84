"""``streamseg run --processes N``: N consumers of one group under one supervising command."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis
from confluent_kafka.admin import AdminClient

from consumer.cli import main
from consumer.processes import child_setup
from devstack.kafka import group_settled
from devstack.stack import service_env
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    make_events,
    produce,
    read_state,
    settings_for,
)
from tests.reference_features import recompute

_STARTED = re.compile(r"started (\d+) consumer processes \(pids ([\d, ]+)\)")
# Each child's closing line, named by its process (the pid alone said nothing of which).
_STOPPED = re.compile(
    r"\[(streamseg-run-\d+)\] consumer\.run: stopped after [\d.]+ s: records=(\d+)"
)


def start_run(env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "run", "--metrics-port", "0", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def child_pids(proc: subprocess.Popen[str], lines: list[str]) -> list[int]:
    """Read the supervisor's log until it names its children."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, "supervisor ended before starting its processes:\n" + "".join(lines)
        lines.append(line)
        if found := _STARTED.search(line):
            return [int(pid) for pid in found.group(2).split(", ")]
    raise AssertionError("no 'started N consumer processes' line:\n" + "".join(lines))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_settled(admin: AdminClient, group: str, members: int) -> None:
    deadline = time.monotonic() + 60
    while not group_settled(admin, group, members):
        assert time.monotonic() < deadline, f"group {group} did not settle with {members} members"
        time.sleep(0.1)


def wait_for_records(client: redis.Redis, namespace: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while int(client.hget(f"{namespace}:counters", "records") or 0) < at_least:
        assert time.monotonic() < deadline, "the processes made no progress"
        time.sleep(0.01)


_BUSY_EVENTS = 60_000


def two_busy_processes(
    kafka_bootstrap: str, redis_url: str, topic: str, namespace: str, client: redis.Redis
) -> tuple[subprocess.Popen[str], list[str], list[int]]:
    """``run --processes 2`` in the middle of a stream longer than the test: (the command,
    its log lines so far, the children's pids)."""
    produce(kafka_bootstrap, topic, as_records(make_events(_BUSY_EVENTS, users=5_000, seed=12)))
    env = service_env(kafka_bootstrap, redis_url, topic, namespace, {"pipeline.batch_size": 200})
    proc = start_run(env, "--processes", "2")
    lines: list[str] = []
    pids = child_pids(proc, lines)
    wait_for_records(client, namespace, 2_000)
    return proc, lines, pids


@pytest.mark.slow
def test_two_processes_share_the_partitions_and_apply_every_event_once(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic(partitions=4)
    events = make_events(20_000, users=1_500, seed=11)
    env = service_env(kafka_bootstrap, redis_url, topic, namespace, {"pipeline.batch_size": 500})

    proc = start_run(env, "--processes", "2", "--idle-exit-seconds", "8")
    lines: list[str] = []
    pids = child_pids(proc, lines)
    # Events only once both hold partitions: otherwise the first to join may take them all
    # (a proof of nothing), or the second may leave idle before the group has settled.
    wait_until_settled(kafka_admin, f"g-{topic}", members=2)
    produce(kafka_bootstrap, topic, as_records(events))
    _, rest = proc.communicate(timeout=180)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log

    assert len(set(pids)) == 2 and proc.pid not in pids
    per_process = dict(_STOPPED.findall(log))
    assert sorted(per_process) == ["streamseg-run-0", "streamseg-run-1"], log
    assert all(int(n) > 0 for n in per_process.values()), f"one got no partition: {per_process}"
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    assert int(redis_client.hget(f"{namespace}:counters", "applied") or 0) == len(events)


@pytest.mark.slow
def test_sigterm_stops_every_process_cleanly(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    proc, lines, pids = two_busy_processes(
        kafka_bootstrap, redis_url, new_topic(partitions=2), namespace, redis_client
    )

    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert not [pid for pid in pids if alive(pid)]
    # Each child finished its batch and logged its totals: a graceful stop, not a kill.
    assert len(_STOPPED.findall(log)) == 2, log
    counted = int(redis_client.hget(f"{namespace}:counters", "records") or 0)
    assert counted < _BUSY_EVENTS, "the stream ended before the signal: make it longer"


@pytest.mark.slow
def test_a_failed_process_stops_the_others_and_the_command_fails(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    proc, lines, (victim, survivor) = two_busy_processes(
        kafka_bootstrap, redis_url, new_topic(partitions=2), namespace, redis_client
    )

    os.kill(victim, signal.SIGKILL)
    _, rest = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGKILL, log
    assert "exited with status 137: stopping the other processes" in log
    assert not alive(survivor)
    # The survivor was stopped, not killed: it finished its batch and logged its totals.
    assert len(_STOPPED.findall(log)) == 1, log


@pytest.mark.slow
def test_more_processes_than_partitions_is_named_even_when_the_children_create_the_topic(
    kafka_bootstrap: str, kafka_admin: AdminClient, redis_url: str, namespace: str
) -> None:
    # A topic nobody created: the children create it (one partition) after the fork.
    topic = f"fresh-{namespace}"
    env = service_env(kafka_bootstrap, redis_url, topic, namespace)
    proc = start_run(env, "--processes", "2", "--idle-exit-seconds", "3")
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        kafka_admin.delete_topics([topic, f"{topic}.segments", f"{topic}.dlq"])
    assert proc.returncode == 0, err
    assert f"topic {topic} has 1 partitions for 2 processes (pipeline.processes)" in err


def test_children_get_their_own_metrics_port_and_static_member_id() -> None:
    settings = settings_for(
        "127.0.0.1:9092",
        "redis://127.0.0.1:6379/0",
        "t",
        "ns",
        **{"kafka.group_instance_id": "host-a"},
    )
    args = argparse.Namespace(metrics_port=9200, processes=3)
    children = [child_setup(args, settings, i, default_port=9108) for i in range(3)]
    assert [a.metrics_port for a, _ in children] == [9200, 9201, 9202]
    assert [s.kafka.group_instance_id for _, s in children] == ["host-a-0", "host-a-1", "host-a-2"]
    assert [s.pipeline.processes for _, s in children] == [1, 1, 1]
    assert settings.kafka.group_instance_id == "host-a"  # the parent's settings are unchanged

    off = argparse.Namespace(metrics_port=0, processes=2)
    assert [child_setup(off, settings, i, default_port=9108)[0].metrics_port for i in (0, 1)] == [
        0,
        0,
    ]


def test_a_bad_process_count_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--processes", "0"]) == 2
    assert "pipeline.processes" in capsys.readouterr().err


@pytest.mark.slow
def test_a_start_up_error_is_reported_as_streamseg_run_alone_reports_it() -> None:
    env = {
        **os.environ,
        "STREAMSEG_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens there
        "STREAMSEG_REDIS__URL": "redis://127.0.0.1:1/0",
    }
    proc = start_run(env, "--processes", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "streamseg: error: cannot reach Kafka at 127.0.0.1:1" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_redis_that_does_not_answer_is_reported_by_a_child_in_one_line(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    env = service_env(kafka_bootstrap, "redis://127.0.0.1:1/0", new_topic(), namespace)
    proc = start_run(env, "--processes", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "streamseg: error: Redis (redis.url) did not answer" in err
    assert "Traceback" not in err
