"""``streamseg run``: the main job in one process, or in N consumer processes of one group."""

from __future__ import annotations

import gc
import logging
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

from consumer.health import metrics_port, start_metrics_server
from consumer.pipeline import SegmentPipeline
from consumer.processes import supervise
from consumer.settings import DEFAULT_METRICS_PORTS, Settings

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)


def freeze_start_up_heap() -> None:
    """Hide what start-up loaded from the garbage collector (`gc.freeze`).

    numpy, scikit-learn, pydantic, the Kafka and Redis clients and the model are ~125k
    objects that live as long as the process; each full collection, about ten per 300,000
    records, walked them all mid-batch. Measured in the benchmark's pipeline pass: 0.8-0.9 s
    of collection per 300,000 records before, 0.14-0.18 s after.
    """
    gc.collect()
    gc.freeze()


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg run``: the main job, until SIGTERM/SIGINT (or the given limits); with
    ``--processes N`` (``pipeline.processes``) in N consumer processes of one group."""
    processes = settings.pipeline.processes  # --processes is applied to the settings
    if processes > 1:
        return supervise(
            args, settings, _run_one, processes, default_port=DEFAULT_METRICS_PORTS["run"]
        )
    return _run_one(args, settings)


def _run_one(args: argparse.Namespace, settings: Settings) -> int:
    """One consumer process, until SIGTERM/SIGINT (or the given limits)."""
    pipeline = SegmentPipeline(settings)
    server = start_metrics_server(
        metrics_port(args, settings, default=DEFAULT_METRICS_PORTS["run"]),
        pipeline.metrics.registry,
        pipeline.readiness_checks(),
        pipeline.liveness,
    )

    def _graceful(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the batch in flight", signum)
        pipeline.stop()

    # Installed before start-up, so a stop during start-up is clean too (the fault tests
    # found a SIGTERM there killing the process).
    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    try:
        pipeline.start()
    except BaseException:
        # Whatever failed after the Kafka clients were made: close them, or librdkafka's
        # threads keep the process alive after the error is reported.
        pipeline.close()
        if server is not None:
            server.stop()
        raise
    freeze_start_up_heap()
    started = time.monotonic()
    try:
        totals = pipeline.run(max_records=args.max_events, idle_exit_seconds=args.idle_exit_seconds)
    finally:
        pipeline.close()
        if server is not None:
            server.stop()
    elapsed = time.monotonic() - started
    log.info(
        "stopped after %.1f s: records=%d applied=%d duplicates=%d ignored=%d dead_lettered=%d "
        "segment_changes=%d foreign_states=%d cross_partition_users=%d",
        elapsed,
        totals.records,
        totals.applied,
        totals.duplicates,
        totals.ignored,
        totals.dead_lettered,
        totals.segment_changes,
        totals.foreign_states,
        totals.cross_partition_users,
    )
    return 0
