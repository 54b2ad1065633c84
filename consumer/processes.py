"""``streamseg run --processes N``: N consumer processes of one group under one command.

One process applies one batch at a time (one Python thread does the work), and part of each
batch it only waits for Redis and Kafka. More processes in the consumer group fill those waits
and the other cores: on the 2-core development machine 2-3 processes carried 1.3-1.8x the
events of one (README, "Performance"). Each child is a complete ``streamseg run`` with its own
Kafka consumer, Redis connections, heartbeat and metrics port; the group spreads the topic's
partitions over them, so the exactly-once effect is the same as with separate commands.

The supervisor only starts, signals and waits:

- SIGTERM/SIGINT are passed to every child, which finishes its batch in flight and commits;
- a child that fails stops the others (SIGTERM) and the command exits with its status, so the
  service manager that restarts one ``streamseg run`` restarts the whole unit;
- a child that ends cleanly (``--idle-exit-seconds``, ``--max-events``: both per process)
  leaves the others running.
"""

from __future__ import annotations

import argparse
import copy
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from confluent_kafka.admin import AdminClient

from consumer.failures import REPORTED_ERRORS, describe_failure, report_failure
from consumer.health import metrics_port
from consumer.kafka_clients import partition_count
from consumer.logs import librdkafka_log, name_this_process_in_logs
from consumer.settings import Settings

log = logging.getLogger(__name__)

RunOne = Callable[[argparse.Namespace, Settings], int]

#: How long the supervisor looks for the events topic, to compare its partitions.
_PARTITION_CHECK_SECONDS = 60.0
#: How long one look at the topic's metadata may wait for Kafka.
_PARTITION_LOOK_SECONDS = 2.0


def child_setup(
    args: argparse.Namespace, settings: Settings, index: int, *, default_port: int
) -> tuple[argparse.Namespace, Settings]:
    """Arguments and settings of child ``index``: one process, its own metrics port (the
    configured port + index; 0 stays off) and its own static group member id."""
    child_args = copy.copy(args)
    base_port = metrics_port(args, settings, default=default_port)
    child_args.metrics_port = base_port + index if base_port else 0
    kafka = settings.kafka
    if kafka.group_instance_id:
        # Two members with one static id would fence each other out of the group.
        kafka = kafka.model_copy(update={"group_instance_id": f"{kafka.group_instance_id}-{index}"})
    pipeline = settings.pipeline.model_copy(update={"processes": 1})
    return child_args, settings.model_copy(update={"kafka": kafka, "pipeline": pipeline})


def supervise(
    args: argparse.Namespace,
    settings: Settings,
    run_one: RunOne,
    processes: int,
    *,
    default_port: int,
) -> int:
    """Run ``run_one`` in ``processes`` forked children and wait for all of them; returns 0, or
    the exit status of the first child that failed (128 + signal number when killed)."""
    context = multiprocessing.get_context("fork")  # children inherit the loaded modules
    children: list[BaseProcess] = []
    stopping = False

    def stop_all(signum: int, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.exitcode is None and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    # Installed before the forks, and reset in each child (`_child_main`).
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    for index in range(processes):
        child_args, child_settings = child_setup(args, settings, index, default_port=default_port)
        child = context.Process(
            target=_child_main,
            args=(run_one, child_args, child_settings),
            name=f"streamseg-run-{index}",
        )
        child.start()
        children.append(child)
    log.info(
        "started %d consumer processes (pids %s) in group %s",
        processes,
        ", ".join(str(c.pid) for c in children),
        settings.kafka.group_id,
    )
    # Kafka is asked only now (a Kafka client's threads must not exist when a process forks),
    # once a second until the topic exists: on a fresh deployment the children create it.
    check_until = time.monotonic() + _PARTITION_CHECK_SECONDS
    admin: AdminClient | None = AdminClient(settings.kafka.client_config(), logger=librdkafka_log)
    status = 0
    running = list(children)
    while running:
        ready = wait([c.sentinel for c in running], timeout=1.0 if admin is not None else None)
        if admin is not None and (
            stopping
            or time.monotonic() > check_until
            or _checked_partitions(admin, settings, processes)
        ):
            admin = None  # done: its threads and broker connections are not needed any more
        for sentinel in ready:
            ended = next(c for c in running if c.sentinel == sentinel)
            ended.join()
            running.remove(ended)
            code = _exit_status(ended.exitcode)
            if code == 0:
                log.info("%s (pid %d) finished", ended.name, ended.pid)
                continue
            status = status or code
            if not stopping:
                log.error(
                    "%s (pid %d) exited with status %d: stopping the other processes",
                    ended.name,
                    ended.pid,
                    code,
                )
                stop_all(signal.SIGTERM)
    return status


def _checked_partitions(admin: AdminClient, settings: Settings, processes: int) -> bool:
    """Warn when the events topic has fewer partitions than ``processes``; False while the
    topic cannot be seen yet."""
    topic = settings.kafka.events_topic
    # A short wait: a child's exit must not go unnoticed for long while Kafka is silent.
    partitions = partition_count(admin, topic, timeout=_PARTITION_LOOK_SECONDS)
    if partitions is None:
        return False
    if partitions < processes:
        log.warning(
            "topic %s has %d partitions for %d processes (pipeline.processes): %d will sit "
            "idle; a group gives each partition to one member",
            topic,
            partitions,
            processes,
            processes - partitions,
        )
    return True


def _child_main(run_one: RunOne, args: argparse.Namespace, settings: Settings) -> None:
    # The supervisor's handlers would signal the siblings from here: back to the defaults
    # until `run_one` installs its graceful ones.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    name_this_process_in_logs()
    try:
        code = run_one(args, settings)
    except REPORTED_ERRORS as exc:  # as `streamseg run` alone reports it (consumer.cli.main)
        code = report_failure(args, describe_failure(exc))
    sys.exit(code)


def _exit_status(exitcode: int | None) -> int:
    """A child's exit code as a shell would report it (killed by signal N -> 128 + N)."""
    if exitcode is None:
        return 1
    return 128 - exitcode if exitcode < 0 else exitcode
