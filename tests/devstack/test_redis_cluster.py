"""The local Redis Cluster is a real one: 3 masters serve every slot, clients follow keys to
the right node, and no node outlives its stop or the process that started it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from devstack.redis_cluster import RedisClusterServer, cluster_state
from devstack.server_process import sweep_stale_run_dirs

pytestmark = [pytest.mark.redis]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.1)


def test_three_masters_serve_every_slot_and_stop_without_a_trace() -> None:
    with RedisClusterServer(masters=3) as cluster:
        assert len(cluster.urls) == 3
        assert all(cluster_state(url) == "ok" for url in cluster.urls)
        pids, run_dir, urls = cluster.pids, cluster.run_dir, cluster.urls
        client: RedisCluster = RedisCluster.from_url(cluster.url)
        masters = client.get_primaries()
        assert len(masters) == 3
        slots = client.cluster_slots()
        assert sum(end - start + 1 for start, end in slots) == 16384
        users = [f"u{i}" for i in range(300)]
        for user in users:
            client.set(f"ns:{{{user}}}:state", user)
        assert [client.get(f"ns:{{{u}}}:state") for u in users] == [u.encode() for u in users]
        # Keys spread over the masters: each node holds only its own slots' keys.
        held = [int(client.get_redis_connection(n).dbsize()) for n in masters]
        assert sum(held) == len(users) and all(held)
        client.close()
    assert run_dir is not None and not run_dir.exists()
    _wait_gone(pids)
    for url in urls:
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()


_START_AND_WAIT = """
import json, sys, time
from devstack.redis_cluster import RedisClusterServer
cluster = RedisClusterServer()
cluster.start()
print(json.dumps({"pids": cluster.pids, "run_dir": str(cluster.run_dir)}), flush=True)
time.sleep(600)
"""


def test_nodes_die_with_the_process_that_started_them() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _START_AND_WAIT],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, parent.stderr.read().decode() if parent.stderr else "no output"
        started = json.loads(line)
        assert len(started["pids"]) == 3 and all(_alive(p) for p in started["pids"])
        parent.send_signal(signal.SIGKILL)  # no Python code runs: only PR_SET_PDEATHSIG
        parent.wait(timeout=10)
        _wait_gone(started["pids"])
        sweep_stale_run_dirs()  # what the next start does with a dead owner's temp dir
        assert not Path(started["run_dir"]).exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
        if parent.stderr is not None:
            parent.stderr.close()
