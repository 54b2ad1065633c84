"""A throwaway Redis server (Debian's ``redis-server``) on a free loopback port, for tests."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import redis

from devstack.exceptions import ServerStartError
from devstack.server_process import (
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


def redis_is_ready(url: str, timeout: float = 0.5) -> bool:
    """True when the Redis at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """``redis-server`` without persistence in its own temp dir; ``startup_timeout`` in seconds.

    ``password`` protects the ``default`` user (then `url` carries it); ``acl_users`` are ACL
    rule lines as in ``redis.conf`` after ``user``, e.g.
    ``"app on >secret ~app:* -@all +get"``, defined at start-up.
    """

    def __init__(
        self,
        *,
        startup_timeout: float = 30.0,
        password: str | None = None,
        acl_users: Sequence[str] = (),
    ) -> None:
        self.startup_timeout = startup_timeout
        self.password = password
        self.acl_users = list(acl_users)
        self.port: int | None = None
        self.run_dir: Path | None = None
        #: Seconds from `start` until the server answered PING.
        self.startup_seconds: float | None = None
        self._process: ServerProcess | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (with the default user's password, if any); only valid
        after `start`."""
        if self.port is None:
            raise ServerStartError("the Redis server has not been started")
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def user_url(self, user: str, password: str) -> str:
        """URL logging in as ACL user ``user`` with ``password``; only valid after `start`."""
        if self.port is None:
            raise ServerStartError("the Redis server has not been started")
        return f"redis://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of redis-server, None before `start`."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and return once it answers PING.

        Raises `MissingToolError` when redis-server is not installed, `ServerStartError` with the
        tail of its log when it does not answer within ``startup_timeout`` seconds.
        """
        if self._process is not None:
            return
        began = time.monotonic()
        program = require_program("redis-server", _INSTALL_HINT)
        sweep_stale_run_dirs()
        self.run_dir = run_dir = make_run_dir("redis")
        try:
            self.port = free_loopback_port()
            # No RDB snapshots, no AOF: nothing to fork or write, a clean slate each run.
            args = [
                program,
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(run_dir),
                "--daemonize",
                "no",
            ]
            if self.password:
                args += ["--requirepass", self.password]
            for rule in self.acl_users:
                args += ["--user", *rule.split()]
            self._process = ServerProcess("redis", args, run_dir / "redis.log", cwd=run_dir)
            self._process.start()
            deadline = began + self.startup_timeout
            while not redis_is_ready(self.url):
                if self._process.returncode is not None:
                    raise ServerStartError(
                        f"redis-server exited with code {self._process.returncode} during "
                        f"start-up; last lines of its log:\n{self._process.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"redis-server on port {self.port} did not answer PING within "
                        f"{self.startup_timeout:.0f} s; last lines of its log:\n"
                        f"{self._process.log_tail()}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout`` seconds) and delete its temp dir."""
        if self._process is not None:
            self._process.stop(timeout=timeout)
            self._process = None
        if self.run_dir is not None:
            remove_run_dir(self.run_dir)
            self.run_dir = None
        self.port = None
