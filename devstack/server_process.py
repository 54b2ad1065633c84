"""Server child processes that cannot outlive the Python process that started them.

Three layers make sure a broker or Redis never lingers after a test run:

1. a normal stop (SIGTERM to the child's process group, SIGKILL after a timeout);
2. an ``atexit`` hook that stops whatever is still running when the interpreter exits;
3. ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child, so the kernel kills it when its parent dies
   without running any Python code at all (SIGKILL, a crash).

Layer 3 fires when the *thread* that forked the child exits, so start servers from a thread that
lives as long as the servers should (the main thread in practice).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from devstack.exceptions import MissingToolError, ServerStartError

#: Prefix of every scratch directory the stack creates in the system temp dir.
RUN_DIR_PREFIX = "streamseg-devstack-"
_OWNER_FILE = "owner.pid"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

_live: set[ServerProcess] = set()
_run_dirs: set[Path] = set()
_live_lock = threading.Lock()


def require_program(name: str, hint: str) -> str:
    """Return the absolute path of ``name`` on PATH, or raise `MissingToolError` with ``hint``."""
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(f"`{name}` is not installed or not on PATH. {hint}")
    return path


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_run_dirs() -> None:
    """Remove scratch dirs left by a stack whose owner died before it could clean up (SIGKILL)."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        try:
            owner = int((path / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being created: leave it alone
        if not _pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)


def make_run_dir(kind: str) -> Path:
    """Create a fresh scratch directory for one server; it records our pid for the stale sweep."""
    path = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{kind}-"))
    (path / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    with _live_lock:
        _run_dirs.add(path)
    return path


def remove_run_dir(path: Path) -> None:
    """Delete a scratch directory made by `make_run_dir`; idempotent."""
    shutil.rmtree(path, ignore_errors=True)
    with _live_lock:
        _run_dirs.discard(path)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """Build the ``preexec_fn`` that ties the child's life to ours (runs in the forked child)."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: no dlopen in the child

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would ever kill us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class ServerProcess:
    """One long-running server child in its own process group, stopped by `stop` or at exit.

    ``args`` is the full command line; stdout and stderr go to ``log_path``.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running child, or None before `start`."""
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the child has ended, None while it runs."""
        return self._popen.poll() if self._popen is not None else None

    def start(self) -> None:
        """Spawn the child: new process group (Ctrl-C on our terminal does not reach it directly,
        so we stop it in order) and PR_SET_PDEATHSIG (it dies with us)."""
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                process_group=0,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        with _live_lock:
            _live.add(self)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``timeout`` seconds; idempotent."""
        popen = self._popen
        if popen is None:
            return
        try:
            if popen.poll() is None:
                self._signal_group(popen.pid, signal.SIGTERM)
                try:
                    popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(popen.pid, signal.SIGKILL)
                    popen.wait(timeout=10)
            # The group may hold grandchildren even after the leader exited.
            self._signal_group(popen.pid, signal.SIGKILL)
        finally:
            with _live_lock:
                _live.discard(self)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def log_tail(self, max_lines: int = 40) -> str:
        """The last ``max_lines`` lines of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-max_lines:])


def stop_all(timeout: float = 5.0) -> None:
    """Stop every server this process still has running and delete their scratch dirs (the atexit
    hook)."""
    with _live_lock:
        live = list(_live)
        run_dirs = list(_run_dirs)
    for proc in live:
        proc.stop(timeout=timeout)
    for path in run_dirs:
        remove_run_dir(path)


atexit.register(stop_all)


class ManagedServer:
    """A devstack server as a context manager: ``with`` calls `start`, then `stop`."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

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


class RestartableServer(ManagedServer):
    """A server of one process that can be stopped and started again in place.

    `halt` stops the process but keeps its ports, configuration and run dir; `resume` starts
    it again from them (what survives is the subclass's to say). Subclasses keep the process
    in ``_process`` and the run dir in ``run_dir``, and implement `_launch` (start the
    process) and `_wait_ready` (return once it answers, from monotonic time ``began``).
    """

    #: Name in error messages, e.g. "the Redis server".
    _what = "the server"
    #: Seconds `halt` waits after SIGTERM before SIGKILL.
    _halt_timeout = 5.0
    _process: ServerProcess | None
    run_dir: Path | None

    @property
    def pid(self) -> int | None:
        """Process id of the server, None when it is not running."""
        return self._process.pid if self._process is not None else None

    def _launch(self) -> None:
        raise NotImplementedError

    def _wait_ready(self, began: float) -> None:
        raise NotImplementedError

    def halt(self, timeout: float | None = None) -> None:
        """Stop the process (SIGTERM; SIGKILL after ``timeout`` seconds) and keep the rest."""
        if self._process is None or self.run_dir is None:
            raise ServerStartError(f"{self._what} is not running")
        self._process.stop(timeout=self._halt_timeout if timeout is None else timeout)
        self._process = None

    def resume(self) -> None:
        """Start a `halt`-ed server again in place; return once it answers
        (`ServerStartError` when it does not in time; the server is then stopped)."""
        if self._process is not None:
            return
        if self.run_dir is None:
            raise ServerStartError(f"{self._what} was never started (or was stopped): use start")
        began = time.monotonic()
        try:
            self._launch()
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise

    def restart(self, timeout: float | None = None) -> None:
        """`halt` then `resume`."""
        self.halt(timeout=timeout)
        self.resume()
