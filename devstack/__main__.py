"""Command line of the local dev stack: ``python -m devstack {fetch,up}``; see ``--help``."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from devstack.exceptions import DevStackError
from devstack.kafka import cache_root, fetch_kafka_jars, kafka_jars_cached, kafka_libs_dir
from devstack.redis_cluster import RedisClusterServer
from devstack.stack import REDIS_ENV, LocalStack
from devstack.versions import KAFKA_VERSION

_DESCRIPTION = """\
Local Kafka broker and Redis server for streamseg development, without Docker.

Kafka's own jars (Apache Kafka {kafka}, KRaft single node) come from Maven Central into a cache
outside the repository: {libs}
(move it with STREAMSEG_CACHE_DIR). Redis is Debian's redis-server (`make setup` installs it).
"""

_EPILOG = """\
examples:
  python -m devstack fetch                   # download the broker jars once (make setup does it)
  python -m devstack up                      # start both, print exports, Ctrl-C to stop
  python -m devstack up --env-file .devstack.env &
  python -m devstack up --redis-cluster      # a 3-master Redis Cluster instead of one Redis
  source .devstack.env && .venv/bin/python -m pytest   # tests reuse the running servers

The printed variables are the service's own settings (STREAMSEG_ prefix, `__` nesting), so
`streamseg run`, the tests and the demo all pick the same servers up from the environment.
"""


class _Stop(BaseException):
    """Raised from a signal handler to leave the wait loop and stop the servers.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals: a second Ctrl-C must not interrupt the orderly stop. If the stop
    # hangs anyway, SIGKILL on us still takes the servers down (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


def _command_fetch(args: argparse.Namespace) -> int:
    if kafka_jars_cached():
        print(
            f"Apache Kafka {KAFKA_VERSION} jars already cached in {kafka_libs_dir()}",
            file=sys.stderr,
        )
        return 0
    began = time.monotonic()
    print(
        f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {kafka_libs_dir()} ...",
        file=sys.stderr,
        flush=True,
    )
    libs = fetch_kafka_jars()
    jars = len(list(libs.glob("*.jar")))
    print(f"{jars} jars fetched in {time.monotonic() - began:.1f} s", file=sys.stderr)
    return 0


def _command_up(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGHUP, _on_stop_signal)
    env_file: Path | None = args.env_file
    stack = LocalStack(
        kafka=not args.no_kafka,
        redis=not args.no_redis and not args.redis_cluster,
        use_env=False,  # `up` is the thing that provides the servers, never a consumer of them
        kafka_num_partitions=args.partitions,
    )
    cluster = RedisClusterServer() if args.redis_cluster and not args.no_redis else None
    try:
        with stack:
            if cluster is not None:
                cluster.start()
            for service, seconds in stack.startup_seconds.items():
                print(f"{service} ready in {seconds:.1f} s", file=sys.stderr)
            variables = stack.env()
            if cluster is not None:
                print(f"redis cluster ready in {cluster.startup_seconds:.1f} s", file=sys.stderr)
                variables[REDIS_ENV] = cluster.url
                variables["STREAMSEG_REDIS__CLUSTER"] = "true"
            lines = [f"export {key}={shlex.quote(value)}" for key, value in variables.items()]
            if env_file is not None:
                tmp = env_file.with_name(env_file.name + ".tmp")
                tmp.write_text("".join(line + "\n" for line in lines))
                os.replace(tmp, env_file)  # readers never see a half-written file
            print("\n".join(lines), flush=True)
            print("servers running; Ctrl-C or SIGTERM stops them", file=sys.stderr, flush=True)
            while True:
                time.sleep(1.0)
                pids = list(stack.pids.items())
                pids += [("redis cluster node", pid) for pid in (cluster.pids if cluster else [])]
                for service, pid in pids:
                    if not _process_alive(pid):
                        print(f"{service} (pid {pid}) died; stopping", file=sys.stderr)
                        return 1
    except _Stop as stop:
        print(f"{stop}: stopping servers", file=sys.stderr)
    finally:
        if cluster is not None:
            cluster.stop()
        if env_file is not None:
            env_file.unlink(missing_ok=True)
    print("stopped", file=sys.stderr, flush=True)
    return 0


def _process_alive(pid: int) -> bool:
    # A dead child of ours is a zombie until reaped: os.kill would still succeed on it.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m devstack`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description=_DESCRIPTION.format(kafka=KAFKA_VERSION, libs=kafka_libs_dir()),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fetch = commands.add_parser(
        "fetch",
        help="download the Kafka broker jars into the cache (no-op when cached)",
        description=f"Download Apache Kafka {KAFKA_VERSION} with Maven into {cache_root()}.",
    )
    fetch.set_defaults(handler=_command_fetch)
    up = commands.add_parser(
        "up",
        help="start Kafka and Redis, print export lines, run until Ctrl-C/SIGTERM",
        description=(
            "Start a Kafka broker and a Redis server on free loopback ports, print "
            "`export STREAMSEG_...=...` lines on stdout (messages go to stderr), and keep them "
            "running until SIGINT or SIGTERM, then stop both and delete their temp dirs."
        ),
    )
    up.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="also write the export lines to PATH (deleted again on stop), for `source PATH`",
    )
    up.add_argument(
        "--partitions",
        type=int,
        default=1,
        metavar="N",
        help="default partition count of auto-created topics (default: 1)",
    )
    up.add_argument("--no-kafka", action="store_true", help="start Redis only")
    up.add_argument("--no-redis", action="store_true", help="start Kafka only")
    up.add_argument(
        "--redis-cluster",
        action="store_true",
        help="start a 3-master Redis Cluster instead of one Redis (sets STREAMSEG_REDIS__CLUSTER)",
    )
    up.set_defaults(handler=_command_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except DevStackError as exc:
        print(f"devstack: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
