"""The ``streamseg`` command line: one parser, handlers imported only when their command runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumer import __version__
from consumer.exceptions import StreamsegError
from consumer.settings import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]

_EPILOG = """\
Settings come from --config FILE (TOML or JSON, sections kafka, redis, features, pipeline,
trainer) and STREAMSEG_<SECTION>__<FIELD> environment variables, for example
STREAMSEG_KAFKA__BOOTSTRAP_SERVERS=localhost:9092 or STREAMSEG_REDIS__NAMESPACE=shop1.
Run `streamseg COMMAND --help` for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; also used by tests to check commands named in deployments."""
    parser = argparse.ArgumentParser(
        prog="streamseg",
        description="Real-time user value segmentation: Kafka events -> rolling per-user "
        "features in Redis -> MiniBatchKMeans segments, read by any service from Redis.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamseg {__version__}")
    parser.add_argument("--config", type=Path, help="settings file (TOML or JSON)")
    parser.add_argument(
        "--namespace", help="Redis key namespace to use (overrides redis.namespace)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = _command(
        commands,
        "run",
        "consumer.pipeline:run_command",
        "consume events, keep features in Redis and assign segments (the main job)",
    )
    run.add_argument(
        "--max-events", type=int, default=0, help="stop after this many records (0 = forever)"
    )
    run.add_argument(
        "--idle-exit-seconds",
        type=float,
        default=0.0,
        help="stop when no record arrived for this long (0 = never); for batch jobs and demos",
    )

    train = _command(
        commands,
        "train",
        "consumer.trainer:train_command",
        "keep the model fresh: bootstrap, then partial_fit on recent feature vectors",
    )
    train.add_argument(
        "--once", action="store_true", help="bootstrap or update once, publish, then exit"
    )
    train.add_argument("--max-seconds", type=float, default=0.0, help="exit after this long")

    lookup = _command(
        commands,
        "lookup",
        "consumer.lookup:lookup_command",
        "print the segment records of users, as a personalization service reads them",
    )
    lookup.add_argument("user_ids", nargs="+", metavar="USER_ID")

    model = _command(
        commands, "model", "consumer.model_store:model_command", "list, show, roll back, export or import models"
    )
    model_actions = model.add_subparsers(dest="action", metavar="ACTION", required=True)
    model_actions.add_parser("list", help="published versions, newest first")
    show = model_actions.add_parser("show", help="one version's segments and profiles")
    show.add_argument("version", nargs="?", type=int, help="default: the current one")
    rollback = model_actions.add_parser("rollback", help="make an earlier version current")
    rollback.add_argument("version", type=int)
    export = model_actions.add_parser("export", help="write a version's JSON to a file")
    export.add_argument("path", type=Path)
    export.add_argument("--version", dest="model_version", type=int)
    imp = model_actions.add_parser("import", help="publish a model JSON file as a new version")
    imp.add_argument("path", type=Path)
    return parser


def _command(
    commands: Any, name: str, handler: str, help_text: str
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
    )
    sub.set_defaults(handler=handler)
    return sub


def _resolve(handler: str) -> Handler:
    module_name, _, function = handler.partition(":")
    found: Handler = getattr(importlib.import_module(module_name), function)
    return found


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamseg`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from consumer.logs import configure_logging

    configure_logging(args.log_level)
    try:
        overrides = {"redis.namespace": args.namespace} if args.namespace else {}
        settings = load_settings(args.config, **overrides)
        return _resolve(args.handler)(args, settings)
    except StreamsegError as exc:
        print(f"streamseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
