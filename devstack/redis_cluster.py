"""A throwaway Redis Cluster (Debian's ``redis-server``, 3 masters, no replicas) for tests.

Each node is a `ServerProcess` (so it dies with the Python process that started it) on a free
loopback port with its own ``nodes.conf`` in one temp dir; ``redis-cli --cluster create`` joins
them and assigns the 16384 slots. Ready means ``CLUSTER INFO`` says ``cluster_state:ok`` on
every node, so the first command of a test never meets a ``CLUSTERDOWN``.

    with RedisClusterServer() as cluster:
        cluster.url    # "redis://127.0.0.1:40125/0" (any node; clients discover the rest)
        cluster.urls   # one URL per node
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from devstack.exceptions import ServerStartError
from devstack.server_process import (
    ManagedServer,
    ServerProcess,
    free_loopback_port,
    make_run_dir,
    remove_run_dir,
    require_program,
    sweep_stale_run_dirs,
)

_INSTALL_HINT = (
    "Run `make setup`, or install it yourself: `apt-get update && apt-get install -y redis-server`."
)


def cluster_state(url: str, timeout: float = 0.5) -> str | None:
    """``cluster_state`` of the node at ``url`` (``ok`` / ``fail``); None if it does not answer."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        info = client.execute_command("CLUSTER INFO")
    except redis.RedisError:
        return None
    finally:
        client.close()
    if isinstance(info, dict):  # redis-py parses the reply into a dict
        state = info.get("cluster_state")
        return None if state is None else str(state)
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return None


class RedisClusterServer(ManagedServer):
    """``masters`` cluster-enabled ``redis-server`` nodes joined into one cluster, no replicas.

    No persistence (no RDB, no AOF); ``startup_timeout`` in seconds covers starting the nodes,
    creating the cluster and waiting for ``cluster_state:ok`` everywhere.
    """

    def __init__(self, *, masters: int = 3, startup_timeout: float = 60.0) -> None:
        if masters < 3:
            raise ValueError(f"redis-cli --cluster create needs at least 3 masters, got {masters}")
        self.masters = masters
        self.startup_timeout = startup_timeout
        self.ports: list[int] = []
        self.run_dir: Path | None = None
        #: Seconds from `start` until every node said cluster_state:ok.
        self.startup_seconds: float | None = None
        self._processes: list[ServerProcess] = []

    @property
    def urls(self) -> list[str]:
        """``redis://127.0.0.1:<port>/0`` of every node; only valid after `start`."""
        if not self.ports:
            raise ServerStartError("the Redis cluster has not been started")
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    @property
    def url(self) -> str:
        """URL of the first node: a cluster client discovers the others from it."""
        return self.urls[0]

    @property
    def pids(self) -> list[int]:
        """Process ids of the running nodes."""
        return [p.pid for p in self._processes if p.pid is not None]

    def start(self) -> None:
        """Start the nodes, create the cluster and return once every node says it is ok.

        Raises `MissingToolError` when redis-server or redis-cli is missing, `ServerStartError`
        with the tail of the logs when a node dies or the cluster is not ok in time.
        """
        if self._processes:
            return
        began = time.monotonic()
        server = require_program("redis-server", _INSTALL_HINT)
        cli = require_program("redis-cli", _INSTALL_HINT)
        sweep_stale_run_dirs()
        self.run_dir = run_dir = make_run_dir("redis-cluster")
        deadline = began + self.startup_timeout
        try:
            for index in range(self.masters):
                port = free_loopback_port()
                node_dir = run_dir / f"node-{index}"
                node_dir.mkdir()
                args = [
                    server,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(node_dir),
                    "--daemonize",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    # The bus port is its own free port: the default (port + 10000) may be taken
                    # or above 65535.
                    "--cluster-port",
                    str(free_loopback_port()),
                    "--cluster-node-timeout",
                    "5000",
                ]
                process = ServerProcess(
                    f"redis-cluster-{index}", args, node_dir / "redis.log", cwd=node_dir
                )
                process.start()
                self.ports.append(port)
                self._processes.append(process)
            self._wait(lambda url: cluster_state(url) is not None, deadline, "answer")
            self._create(cli, deadline)
            self._wait(lambda url: cluster_state(url) == "ok", deadline, "say cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _create(self, cli: str, deadline: float) -> None:
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        try:
            done = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(
                f"redis-cli --cluster create did not finish within {self.startup_timeout:.0f} s"
            ) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise ServerStartError(
                f"redis-cli --cluster create exited with code {done.returncode}:\n{output[-3000:]}"
            )

    def _wait(self, ready: Callable[[str], bool], deadline: float, what: str) -> None:
        """Poll ``ready(url)`` for every node until true; fail if a node dies or at ``deadline``."""
        for process, url in zip(self._processes, self.urls, strict=True):
            while not ready(url):
                if process.returncode is not None:
                    raise ServerStartError(
                        f"{process.name} exited with code {process.returncode} during start-up; "
                        f"last lines of its log:\n{process.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{process.name} ({url}) did not {what} within "
                        f"{self.startup_timeout:.0f} s; last lines of its log:\n"
                        f"{process.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after ``timeout`` s) and delete the temp dir."""
        processes, self._processes = self._processes, []
        for process in processes:
            process.stop(timeout=timeout)
        if self.run_dir is not None:
            remove_run_dir(self.run_dir)
            self.run_dir = None
        self.ports = []
