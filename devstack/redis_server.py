"""A throwaway Redis server (Debian's ``redis-server``) on a free loopback port, for tests."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import redis

from devstack.exceptions import ServerStartError
from devstack.server_process import (
    RestartableServer,
    ServerProcess,
    free_loopback_port,
    make_run_dir,
    remove_run_dir,
    require_program,
    sweep_stale_run_dirs,
)
from devstack.tls import TlsCertificates, make_certificates

_INSTALL_HINT = (
    "Run `make setup`, or install it yourself: `apt-get update && apt-get install -y redis-server`."
)


def redis_is_ready(
    url: str, timeout: float = 0.5, *, certificates: TlsCertificates | None = None
) -> bool:
    """True when the Redis at ``url`` answers PING within ``timeout`` seconds.

    For a ``rediss://`` URL, ``certificates`` gives the CA to trust and the client certificate
    to present (needed when the server requires one).
    """
    tls: dict[str, Any] = {}
    if certificates is not None and url.startswith("rediss://"):
        tls = {
            "ssl_ca_certs": str(certificates.ca_cert),
            "ssl_certfile": str(certificates.client_cert),
            "ssl_keyfile": str(certificates.client_key),
        }
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, **tls
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer(RestartableServer):
    """``redis-server`` without persistence in its own temp dir; ``startup_timeout`` in seconds.

    ``password`` protects the ``default`` user (then `url` carries it); ``acl_users`` are ACL
    rule lines as in ``redis.conf`` after ``user``, e.g.
    ``"app on >secret ~app:* -@all +get"``, defined at start-up.

    ``tls=True`` makes it TLS-only (``--port 0 --tls-port <port>``, `url` is ``rediss://``),
    with ``certificates`` (`devstack.tls`), or a fresh throwaway CA and server certificate in
    its temp dir when None. ``tls_auth_clients`` is Redis' ``tls-auth-clients``: ``"no"`` (any
    client), ``"optional"`` or ``"yes"`` (mutual TLS: a client certificate signed by the CA).

    `halt` / `resume` / `restart` keep the port, temp dir and certificates, so the server comes
    back at the same URL. With no persistence configured its dataset is gone, unless a dump
    was saved before (``SHUTDOWN SAVE``): `resume` loads it from the temp dir.
    """

    _what = "the Redis server"

    def __init__(
        self,
        *,
        startup_timeout: float = 30.0,
        password: str | None = None,
        acl_users: Sequence[str] = (),
        tls: bool = False,
        certificates: TlsCertificates | None = None,
        tls_auth_clients: Literal["no", "optional", "yes"] = "no",
    ) -> None:
        self.startup_timeout = startup_timeout
        self.password = password
        self.acl_users = list(acl_users)
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        #: The PKI the server presents (TLS only); generated at `start` when not given.
        self.certificates = certificates
        self._own_certificates = certificates is None
        self.port: int | None = None
        self.run_dir: Path | None = None
        #: Seconds from `start` until the server answered PING.
        self.startup_seconds: float | None = None
        self._process: ServerProcess | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (``rediss://`` with TLS; with the default user's
        password, if any); only valid after `start`."""
        if self.port is None:
            raise ServerStartError("the Redis server has not been started")
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{self._scheme}://{auth}127.0.0.1:{self.port}/0"

    def user_url(self, user: str, password: str) -> str:
        """URL logging in as ACL user ``user`` with ``password``; only valid after `start`."""
        if self.port is None:
            raise ServerStartError("the Redis server has not been started")
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"{self._scheme}://{credentials}@127.0.0.1:{self.port}/0"

    @property
    def _scheme(self) -> str:
        return "rediss" if self.tls else "redis"

    def client(self) -> redis.Redis:
        """A client of this server as the ``default`` user; with TLS it trusts the server's CA
        and presents the client certificate. Only valid after `start`."""
        tls: dict[str, Any] = {}
        if self.tls:
            assert self.certificates is not None
            tls = {
                "ssl_ca_certs": str(self.certificates.ca_cert),
                "ssl_certfile": str(self.certificates.client_cert),
                "ssl_keyfile": str(self.certificates.client_key),
            }
        return redis.Redis.from_url(self.url, **tls)

    def start(self) -> None:
        """Start the server and return once it answers PING.

        Raises `MissingToolError` when redis-server is not installed, `ServerStartError` with the
        tail of its log when it does not answer within ``startup_timeout`` seconds.
        """
        if self._process is not None:
            return
        began = time.monotonic()
        require_program("redis-server", _INSTALL_HINT)
        sweep_stale_run_dirs()
        self.run_dir = run_dir = make_run_dir("redis")
        try:
            self.port = free_loopback_port()
            if self.tls and self._own_certificates:
                self.certificates = make_certificates(run_dir / "tls")
            self._launch()
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _arguments(self, run_dir: Path) -> list[str]:
        assert self.port is not None
        # No RDB snapshots, no AOF: nothing to fork or write, a clean slate each run (and after
        # each restart: `restart` is Redis coming back with an empty dataset).
        args = [
            require_program("redis-server", _INSTALL_HINT),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
            "--dir",
            str(run_dir),
            "--daemonize",
            "no",
        ]
        if self.tls:
            assert self.certificates is not None
            args += [
                "--port",
                "0",  # TLS only: no plaintext listener at all
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.certificates.server_cert),
                "--tls-key-file",
                str(self.certificates.server_key),
                "--tls-ca-cert-file",
                str(self.certificates.ca_cert),
                "--tls-auth-clients",
                self.tls_auth_clients,
            ]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        for rule in self.acl_users:
            args += ["--user", *rule.split()]
        return args

    def _launch(self) -> None:
        assert self.run_dir is not None
        self._process = ServerProcess(
            "redis", self._arguments(self.run_dir), self.run_dir / "redis.log", cwd=self.run_dir
        )
        self._process.start()

    def _wait_ready(self, began: float) -> None:
        assert self._process is not None
        deadline = began + self.startup_timeout
        certificates = self.certificates if self.tls else None
        while not redis_is_ready(self.url, certificates=certificates):
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

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout`` seconds) and delete its temp dir."""
        if self._process is not None:
            self._process.stop(timeout=timeout)
            self._process = None
        if self.run_dir is not None:
            remove_run_dir(self.run_dir)
            self.run_dir = None
        if self._own_certificates:
            self.certificates = None
        self.port = None
