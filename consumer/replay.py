"""Replay the events topic into a shadow namespace and train a fresh model there.

``streamseg replay --from TIME|earliest [--to TIME|latest] --namespace-out NAME``:

1. Plan: for each partition of the events topic, the first offset whose Kafka record
   timestamp is at or after ``--from`` (``earliest`` = the low watermark) up to the first at
   or after ``--to`` (``latest`` = the high watermark when the replay starts), exclusive.
2. Rebuild: the normal `SegmentPipeline`, with ``redis.namespace = NAME`` and its own consumer
   group ``<kafka.group_id>-replay-<NAME>``, reads exactly those ranges (``assign()``). The
   features are computed by the live code, idempotent by (partition, offset): a replay that is
   interrupted resumes from its group's committed offsets and never counts an event twice.
   Its dead letters and segment changes go to ``<topic>.replay-<NAME>``, not the live topics.
3. Train: on a snapshot of every user's features at the namespace's watermark, fit the
   preprocessing and k-means++ (``n_init`` 5, ``--seed``), label, publish in NAME.
4. Re-score every user of NAME with that model, so its records and segment sizes agree.

The command runs at a raised niceness (``--nice``, default +10): a replay is background
work and should take only the CPU a live pipeline on the same cores leaves.

``streamseg compare NAME [--with live]`` then sets the shadow beside another namespace
(`consumer.compare`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

import numpy as np
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from consumer.exceptions import ConfigError
from consumer.kafka_clients import create_consumer, ensure_topics
from consumer.model_store import ModelStore
from consumer.namespaces import live_namespace, register_namespace
from consumer.outputs import OutputTopics
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.run import freeze_start_up_heap
from consumer.segment_record import iso_ms
from consumer.settings import RedisClient, RedisSettings, Settings, TrainerSettings
from consumer.snapshot import ALL_USERS, Snapshot, read_snapshot
from consumer.state_store import BatchWrite, StateStore
from consumer.times import parse_epoch_ms
from model.features import FEATURE_NAMES, LOG_FEATURES
from model.labels import label_segments
from model.model_format import SegmentModel
from model.preprocessing import Preprocessor
from model.segmenter import StreamingSegmenter

log = logging.getLogger(__name__)

_RESCORE_CHUNK = 5000


@dataclass(frozen=True)
class PartitionRange:
    """Offsets of one partition to replay: ``start`` inclusive, ``stop`` exclusive."""

    partition: int
    start: int
    stop: int

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


@dataclass
class ReplayResult:
    """What one `replay` call did."""

    ranges: list[PartitionRange]
    """The whole planned range (``start`` = the ``--from`` offset, not the resume point)."""
    records: int = 0
    """Records processed by this call (a resumed replay counts only its own)."""
    complete: bool = False
    """True when every range was read to its end (then a model was trained)."""
    model: SegmentModel | None = None
    rescored_users: int = 0
    skipped: dict[int, int] = field(default_factory=dict)
    """Offsets already done before this call (committed by an earlier run), per partition."""
    read_seconds: float = 0.0
    """Wall-clock time spent reading and applying the ranges (training excluded), kept
    current while they are read."""

    @property
    def records_per_second(self) -> float | None:
        """``records`` over ``read_seconds``: what the progress bar shows and the summary
        prints; None before any reading."""
        return self.records / self.read_seconds if self.read_seconds > 0 else None


def replay_group(settings: Settings, name: str) -> str:
    """Consumer group of a replay into ``name``: ``<kafka.group_id>-replay-<name>``."""
    return f"{settings.kafka.group_id}-replay-{name}"


def shadow_settings(settings: Settings, name: str) -> Settings:
    """``settings`` for the pipeline of a replay into namespace ``name``."""
    kafka = settings.kafka
    try:
        redis_settings = RedisSettings.model_validate(
            {**settings.redis.model_dump(), "namespace": name}
        )
    except ValidationError as exc:
        why = "; ".join(
            err["msg"].removeprefix("Value error, ")
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"--namespace-out {name!r}: {why}") from None
    return settings.model_copy(
        update={
            "redis": redis_settings,
            # A replay writes its own namespace, whatever the live pointer says. It trains on
            # a snapshot of every user, so it fills no training buffer (which would also hand
            # a trainer of the promoted namespace months-old rows as "fresh").
            "pipeline": settings.pipeline.model_copy(
                update={"follow_live_namespace": False, "training_buffer_rows": 0}
            ),
            "kafka": kafka.model_copy(
                update={
                    "group_id": replay_group(settings, name),
                    "group_instance_id": None,
                    "segments_topic": f"{kafka.segments_topic}.replay-{name}",
                    "dead_letter_topic": f"{kafka.dead_letter_topic}.replay-{name}",
                }
            ),
        }
    )


def check_namespace_out(
    settings: Settings,
    name: str,
    client: RedisClient | None = None,
    pointer: PointerKeys | None = None,
) -> tuple[Settings, RedisClient]:
    """The settings of a replay into ``name`` (`shadow_settings`) and the Redis client, once
    ``name`` is known to be a valid namespace other than the configured and the live one;
    else `ConfigError`. Without ``client`` it connects, after the checks that need no server."""
    shadow = shadow_settings(settings, name)
    if name == settings.redis.namespace:
        raise ConfigError(
            f"--namespace-out {name!r} is the configured namespace (redis.namespace) that "
            "consumers write; replay into another"
        )
    client = client or settings.redis.connect()
    if name == live_namespace(client, settings.redis.namespace, pointer):
        raise ConfigError(
            f"--namespace-out {name!r} is the live namespace (the live pointer names it); "
            "replay into another"
        )
    return shadow, client


def plan_ranges(
    consumer: Consumer,
    topic: str,
    from_ms: int | None,
    to_ms: int | None,
    *,
    timeout: float = 30.0,
) -> list[PartitionRange]:
    """Offsets to replay per partition, from Kafka record timestamps (epoch ms).

    ``from_ms`` None = the low watermark; ``to_ms`` None = the high watermark now.
    """
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise ConfigError(f"kafka.events_topic {topic!r}: no such topic to replay")
    ranges = []
    starts_at_low = []
    for partition in sorted(metadata.partitions):
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout
        )

        def at(ms: int | None, default: int, partition: int = partition, high: int = high) -> int:
            if ms is None:
                return default
            found = consumer.offsets_for_times([TopicPartition(topic, partition, ms)], timeout)
            offset = found[0].offset
            return high if offset < 0 else offset  # no record at or after: the end

        start = at(from_ms, low)
        stop = at(to_ms, high)
        ranges.append(PartitionRange(partition, start, max(start, stop)))
        starts_at_low.append(start == low)
    if from_ms is not None and all(starts_at_low):
        log.warning(
            "--from %s is before every record of %s: the replay starts at the topic's beginning "
            "(--from and --to select by Kafka record time, when records were produced unless "
            "the producer set them, not by the events' ts: a backfill produced today is all "
            "from today)",
            iso_ms(from_ms),
            topic,
        )
    return ranges


def _committed(
    consumer: Consumer, partitions: list[TopicPartition], timeout: float = 30.0
) -> list[TopicPartition]:
    """Committed offsets of the consumer's group, waiting while the coordinator is not ready.

    A fresh broker (or group) answers NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS for a
    while; those are retried until ``timeout`` (seconds).
    """
    waiting = {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
    deadline = time.monotonic() + timeout
    while True:
        try:
            found: list[TopicPartition] = consumer.committed(partitions, timeout)
            return found
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code not in waiting or time.monotonic() > deadline:
                raise
            log.info("waiting for the group coordinator: %s", error)
            time.sleep(0.5)


class _RateColumn(ProgressColumn):
    """Records read and applied per second of reading so far, by this run: the rate the
    summary prints at the end. Not rich's ``task.speed``, the average of the last 30 s (at
    most 1,000 batches): when the pace changed (a replay at niceness 10 gets the CPU a live
    pipeline leaves) the bar and the summary differed by any factor."""

    def __init__(self, result: ReplayResult) -> None:
        super().__init__()
        self.result = result

    def render(self, task: Task) -> Text:
        rate = self.result.records_per_second
        return Text("-- records/s" if rate is None else f"{rate:,.0f} records/s", style="cyan")


def _progress(enabled: bool, result: ReplayResult) -> Progress | None:
    """The bar: records done of the planned range, this run's rate, and the time left at
    the recent pace (rich's estimate)."""
    if not enabled:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(result),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        refresh_per_second=8,
    )


def replay(
    settings: Settings,
    name: str,
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    n_clusters: int | None = None,
    seed: int | None = None,
    max_records: int = 0,
    max_rate: float = 0.0,
    idle_timeout_seconds: float = 60.0,
    progress: bool = False,
    client: RedisClient | None = None,
    pointer: PointerKeys | None = None,
    stop: threading.Event | None = None,
) -> ReplayResult:
    """Rebuild namespace ``name`` from the events topic, then train and re-score it.

    ``stop``, once set, ends the reading after the batch in hand, like ``max_records``.

    ``from_ms`` / ``to_ms``: Kafka record timestamps (epoch ms), None = earliest / latest.
    ``max_records`` > 0 stops after that many records (an interrupted replay: call again to
    resume; no model is trained until the ranges are done). ``max_rate`` > 0 caps the reading
    at that many records per second, leaving CPU to the live pipeline on a shared machine.
    Raises `ConfigError` when ``name``
    is the configured or the live namespace, or when no record arrives for
    ``idle_timeout_seconds`` while offsets remain.
    """
    shadow, client = check_namespace_out(settings, name, client, pointer)
    topic = shadow.kafka.events_topic

    planner = create_consumer(shadow.kafka)
    try:
        ranges = plan_ranges(planner, topic, from_ms, to_ms)
        committed = _committed(planner, [TopicPartition(topic, r.partition) for r in ranges])
    finally:
        planner.close()
    if not any(len(r) for r in ranges):
        raise ConfigError(
            f"{topic} holds no record in the range asked: nothing to replay (--from and --to "
            "are Kafka record times, when records were produced unless the producer set them, "
            "not the events' ts; --from earliest takes the whole topic)"
        )
    # Only now: a replay refused above leaves no empty namespace in `streamseg namespaces`.
    register_namespace(client, name, pointer)
    resume = {tp.partition: tp.offset for tp in committed if tp.offset not in (OFFSET_INVALID, -1)}
    if resume and StateStore(client, KeyLayout(name)).read_watermark() is None:
        # Offsets committed for a namespace that holds nothing (dropped since): start over.
        log.info("namespace %s is empty: ignoring the offsets its replay group committed", name)
        resume = {}
    todo = [
        PartitionRange(
            r.partition, min(r.stop, max(r.start, resume.get(r.partition, r.start))), r.stop
        )
        for r in ranges
    ]
    result = ReplayResult(
        ranges=ranges,
        skipped={r.partition: t.start - r.start for r, t in zip(ranges, todo, strict=True)},
    )
    total = sum(len(r) for r in ranges)
    already = total - sum(len(t) for t in todo)
    log.info(
        "replay into %s: %d records in %s (%d done before)",
        name,
        total,
        _count(len(ranges), "partition"),
        already,
    )

    pipeline = SegmentPipeline(shadow, client=client)
    remaining = {t.partition: t for t in todo if len(t)}
    bar = _progress(progress, result)
    task = bar.add_task(f"replay -> {name}", total=total, completed=already) if bar else None
    if bar:
        bar.start()
    try:
        if remaining:
            pipeline.start(
                assignment=[TopicPartition(topic, t.partition, t.start) for t in remaining.values()]
            )
            _read_ranges(
                pipeline,
                topic,
                remaining,
                result,
                max_records,
                max_rate,
                idle_timeout_seconds,
                bar,
                task,
                stop or threading.Event(),
            )
    finally:
        pipeline.close()
        if bar:
            bar.stop()
    if remaining:
        log.info(
            "replay into %s stopped with %s unfinished", name, _count(len(remaining), "partition")
        )
        return result
    if stop is not None and stop.is_set():  # read to the end, but asked to stop: train later
        log.info("replay into %s read everything; stopped before training", name)
        return result
    result.complete = True
    trainer_config = shadow.trainer.model_copy(
        update={
            **({"n_clusters": n_clusters} if n_clusters is not None else {}),
            **({"seed": seed} if seed is not None else {}),
        }
    )
    snapshot = read_snapshot(client, pipeline.keys, max_users=ALL_USERS, config=shadow.features)
    result.model = train_on_snapshot(ModelStore(client, pipeline.keys), snapshot, trainer_config)
    result.rescored_users = rescore(pipeline, snapshot, result.model)
    _mark_replayed(client, pipeline.keys, topic, ranges, snapshot.watermark_ms)
    return result


def _mark_replayed(
    client: RedisClient,
    keys: KeyLayout,
    topic: str,
    ranges: list[PartitionRange],
    scored_at_ms: float | None,
) -> None:
    """Record a finished replay in its namespace, for a pipeline that follows the pointer.

    Every planned partition is complete up to its range's stop, also one that had no record
    to read: ``applied-offsets`` says so (never lowered). Every user was just scored at
    ``scored_at_ms``: the partitions' re-score markers say so, so a pipeline switching here
    does not re-score them at once.
    """
    fields = [f"{topic}:{r.partition}" for r in ranges]
    current = client.hmget(keys.applied_offsets, fields)
    behind: dict[str | bytes, bytes | float | int | str] = {
        field: r.stop
        for field, r, value in zip(fields, ranges, current, strict=True)
        if value is None or int(value) < r.stop
    }
    if behind:
        client.hset(keys.applied_offsets, mapping=behind)
    if scored_at_ms is not None and ranges:
        client.zadd(
            keys.watermark, {f"rescored:{r.partition}": scored_at_ms for r in ranges}, gt=True
        )


def _count(n: int, noun: str) -> str:
    """``1 partition``, ``3 partitions``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _read_ranges(
    pipeline: SegmentPipeline,
    topic: str,
    remaining: dict[int, PartitionRange],
    result: ReplayResult,
    max_records: int,
    max_rate: float,
    idle_timeout_seconds: float,
    bar: Progress | None,
    task: TaskID | None,
    stop: threading.Event,
) -> None:
    """Process the assigned ranges to their stop offsets (``remaining`` empties as they end)
    or until ``stop`` is set, keeping ``result.records`` and ``result.read_seconds`` current
    (the progress bar's rate reads them)."""
    consumer = pipeline.consumer
    assert consumer is not None
    batch_size = pipeline.settings.pipeline.batch_size
    timeout = pipeline.settings.pipeline.batch_timeout_ms / 1000.0
    last_progress = started = time.monotonic()
    try:
        while remaining and not stop.is_set():
            result.read_seconds = time.monotonic() - started
            count = batch_size
            if max_rate > 0:  # ahead of the allowed pace: wait until the pace catches up
                ahead = result.records / max_rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                    last_progress = time.monotonic()  # waiting on purpose is not idleness
                count = max(1, min(batch_size, int(max_rate / 10)))  # ~0.1 s of records
            messages = consumer.consume(count, timeout)
            keep = []
            for m in messages:
                if m.error() is not None:
                    log.warning("consumer error: %s", m.error())
                    continue
                bounds = remaining.get(m.partition() or 0)
                offset = m.offset()
                if bounds is not None and offset is not None and offset < bounds.stop:
                    keep.append(m)
            if max_records:
                keep = keep[: max(0, max_records - result.records)]
            if keep:
                pipeline.process(keep)
                last_progress = time.monotonic()
                result.records += len(keep)
                result.read_seconds = last_progress - started
                if bar is not None and task is not None:
                    bar.advance(task, len(keep))
            if max_records and result.records >= max_records:
                return
            # Done by position, not by the last offset seen: transaction markers leave gaps.
            assigned = [TopicPartition(topic, p) for p in remaining]
            for tp in consumer.position(assigned):
                if tp.offset >= remaining[tp.partition].stop:
                    consumer.pause([TopicPartition(topic, tp.partition)])
                    del remaining[tp.partition]
            if remaining and time.monotonic() - last_progress > idle_timeout_seconds:
                left = ", ".join(map(str, sorted(remaining)))
                raise ConfigError(
                    f"replay: no record for {idle_timeout_seconds:.0f} s with offsets left in "
                    f"{'partition' if len(remaining) == 1 else 'partitions'} {left} (deleted "
                    "by retention?); run it again to resume"
                )
    finally:
        result.read_seconds = time.monotonic() - started


def train_on_snapshot(
    store: ModelStore, snapshot: Snapshot, config: TrainerSettings
) -> SegmentModel:
    """Fit preprocessing and k-means++ on every user's features, label, publish the next version.

    Deterministic for one snapshot and ``config.seed``.
    """
    X = snapshot.features[np.isfinite(snapshot.features).all(axis=1)]
    segmenter = StreamingSegmenter(
        n_clusters=config.n_clusters,
        half_life_batches=config.half_life_batches,
        n_init=5,
        new_id_distance=config.new_id_distance,
        random_state=config.seed,
    )
    needed = segmenter.fit_rows_needed()
    if len(X) < needed:
        # Checked here, not by fit: its message speaks of rows and samples, not of users
        # and the option that changes the need.
        raise ConfigError(
            f"namespace {store.keys.namespace!r} has {len(X)} users with features: "
            f"{config.n_clusters} segments need at least {needed} (max(10 x segments, "
            f"{segmenter.min_fit_rows})); what was read stays: run the same replay again "
            "with fewer --n-clusters to train on it"
        )
    preprocessor = Preprocessor(FEATURE_NAMES, log_columns=LOG_FEATURES).fit(X)
    Z = preprocessor.transform(X)
    segmenter.fit(Z)
    positions = segmenter.predict(Z)
    centers = preprocessor.inverse_transform(segmenter.cluster_centers_)
    labels = label_segments(centers, X, positions, FEATURE_NAMES)
    version = store.next_version()
    segmenter.version_ = version
    model = SegmentModel.from_fitted(segmenter, preprocessor, labels, n_rows=len(X))
    model = model.model_copy(update={"model_version": version})
    store.publish(model)
    return model


def rescore(pipeline: SegmentPipeline, snapshot: Snapshot, model: SegmentModel) -> int:
    """Assign every user of ``snapshot`` with ``model`` and write records, states and sizes.

    Uses the pipeline's own assignment code, so records look exactly like live ones, and sends
    its change events (every user's first assignment, or a change from the previous replay's
    model when one is resumed) to the replay's segments topic, counted in ``segment_changes``.
    Returns the number of users written.
    """
    pipeline.model = model
    ensure_topics(pipeline.settings.kafka)  # a resumed replay may not have started the pipeline
    pipeline.outputs = OutputTopics(pipeline.settings.kafka)
    rows = np.flatnonzero(np.isfinite(snapshot.features).all(axis=1))
    try:
        for start in range(0, len(rows), _RESCORE_CHUNK):
            chosen = rows[start : start + _RESCORE_CHUNK]
            users = [snapshot.user_ids[i] for i in chosen]
            states = snapshot.states[chosen].copy()
            records, size_changes, changes = pipeline.assign_segments(
                users, states, snapshot.features[chosen]
            )
            pipeline.send_changes(changes)  # before the records: an event is never missing
            pipeline.store.write(
                BatchWrite(
                    user_ids=users,
                    states=states,
                    segment_records=records,
                    size_changes=size_changes,
                    counters={"segment_changes": len(changes)},
                )
            )
            pipeline.count_changes(len(changes))
    finally:
        pipeline.outputs.close()
        pipeline.outputs = None
    return len(rows)


# -- commands --------------------------------------------------------------------------------


def lower_own_priority(increment: int) -> int:
    """Raise this process's niceness by ``increment`` (capped at 19), every thread of it.

    A replay is background work: at a higher niceness it takes only the CPU that the live
    pipeline, Kafka and Redis leave, and on otherwise idle cores it runs as fast as before.
    On Linux niceness belongs to each thread, so threads started before (BLAS pools) are
    reniced too; threads started later (librdkafka's) inherit it. Returns the niceness now.
    """
    if not hasattr(os, "setpriority"):  # not a Unix: leave the priority alone
        return 0
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if increment <= 0:
        return current
    target = min(19, current + increment)
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no procfs (not Linux): what PRIO_PROCESS 0 covers there
        threads = [0]
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.setpriority(os.PRIO_PROCESS, tid, target)
    return target


def replay_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg replay``: rebuild a shadow namespace from the topic, train, re-score."""
    # Every argument is checked before any work: a refused command leaves no trace.
    from_ms = (
        None
        if args.from_ == "earliest"
        else parse_epoch_ms(args.from_, option="--from", words=("earliest",))
    )
    to_ms = (
        None if args.to == "latest" else parse_epoch_ms(args.to, option="--to", words=("latest",))
    )
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        raise ConfigError(f"--to {args.to} is not after --from {args.from_}: nothing to replay")
    _, client = check_namespace_out(settings, args.namespace_out)
    niceness = lower_own_priority(args.nice)
    log.info("replay runs at niceness %d", niceness)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    stop = threading.Event()
    signalled: list[int] = []

    def _stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # asked twice: stop now, as an interrupt
            raise KeyboardInterrupt
        signalled.append(signum)
        stop.set()
        log.info("stopping after the batch in hand (again to stop at once)")

    handlers = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    freeze_start_up_heap()
    try:
        result = replay(
            settings,
            args.namespace_out,
            from_ms=from_ms,
            to_ms=to_ms,
            n_clusters=args.n_clusters,
            seed=args.seed,
            max_records=args.max_events,
            max_rate=args.max_rate,
            progress=show,
            client=client,
            stop=stop,
        )
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if not result.complete:
        print(
            f"replay into {args.namespace_out} stopped after {result.records} records; "
            "run the same command again to resume"
        )
        # As asked (--max-events): 0; by a signal: 128 + its number, as a shell would say.
        return 128 + signalled[0] if signalled else 0
    model = result.model
    assert model is not None
    rate = result.records_per_second or 0.0
    print(
        f"replayed {result.records:,} records into {args.namespace_out} (read and applied in "
        f"{result.read_seconds:.1f} s: {rate:,.0f} records/s); model v{model.model_version} "
        f"({len(model.ids)} segments) scored {result.rescored_users:,} users"
    )
    print(f"next: streamseg compare {args.namespace_out}; streamseg promote {args.namespace_out}")
    return 0
