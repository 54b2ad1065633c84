"""The main job: a batch loop from the events topic to Redis state and segment records.

Per batch (the records already fetched when the previous batch is done, at most
``pipeline.batch_size``; an idle consumer waits ``pipeline.batch_timeout_ms`` for one):

1. decode and validate (bad records -> dead-letter topic with the reason in headers);
2. group by user, MGET their states, apply the events (event-time decay, skipping any event
   at or below the stored (partition, offset): a redelivery; and any event whose event_id is
   among the user's last ``pipeline.dedupe_window_events`` applied: a duplicate);
3. derive features at each user's latest event time and assign segments with the current
   model (vectorised);
4. produce segment-change events (only for users whose segment changed) and dead letters,
   and wait for their delivery;
5. write states, records, trainer samples and counters in one Redis transaction;
6. only then store the offsets, which the consumer commits.

A crash anywhere before 5 redelivers the batch and nothing was applied; a crash between 5
and 6 redelivers it and every event is skipped by its offset: Redis sees each event's effect
exactly once. Segment-change events and dead letters are at least once.

Beside the loop, each in its own module: the Kafka writes (`consumer.outputs`), the re-score
pass of idle users between batches (`consumer.rescore`) and the announcement after a switch of
the live namespace (`consumer.announcement`).
"""

from __future__ import annotations

import gc
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.announcement import announce_segments
from consumer.exceptions import ServerUnavailableError
from consumer.fencing import PartitionFences
from consumer.health import metrics_port, start_metrics_server
from consumer.kafka_clients import create_consumer, ensure_topics
from consumer.metrics import LATENCY_SAMPLES_PER_BATCH, PipelineMetrics
from consumer.model_store import ModelStore
from consumer.namespaces import live_namespace
from consumer.outputs import OutputTopics
from consumer.processes import supervise
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.rescore import IdleRescore
from consumer.segment_record import (
    COLD_START_FIELDS,
    change_fields,
    encode_changes,
    encode_records,
    iso_ms,
    iso_ms_array,
    segment_fields,
)
from consumer.settings import DEFAULT_METRICS_PORTS, RedisClient, Settings
from consumer.state_store import BatchWrite, StateStore
from consumer.status import ConsumerHeartbeat
from consumer.training_rows import keyed_rows
from model.events import (
    CANONICAL_TYPES,
    DecodeLimits,
    EventBatch,
    decode_events,
    resolve_type_map,
)
from model.features import (
    CATEGORY_CODES,
    COL,
    EventColumns,
    already_applied,
    apply_events,
    category_codes,
    derive_features,
    event_id_hashes,
    top_categories,
)

if TYPE_CHECKING:
    import argparse

    from model.model_format import SegmentModel

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Raised inside the loop when a stop was asked for while waiting on Redis."""


# Errors that mean "Redis cannot take this now" (retry later), not "this command is wrong".
_UNAVAILABLE_PREFIXES = ("OOM", "READONLY", "MISCONF", "EXECABORT", "BUSY", "LOADING", "MASTERDOWN")


def _redis_is_unavailable(exc: redis.RedisError) -> bool:
    transient = (
        redis.ConnectionError,
        redis.TimeoutError,
        redis.BusyLoadingError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.OutOfMemoryError,  # type: ignore[attr-defined]  # stubs lag redis-py
        redis.exceptions.ExecAbortError,
        # Redis Cluster: a failover or a slot migration in progress.
        redis.exceptions.ClusterError,
        redis.exceptions.TryAgainError,
    )
    if isinstance(exc, transient):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES)


@dataclass
class BatchStats:
    """What one batch did, record by record accounted for."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0  # redeliveries skipped by offset, and duplicate event ids
    duplicate_event_ids: int = 0  # of which: same event_id within the user's dedupe window
    ignored: int = 0  # valid events of an unmapped type
    dead_lettered: int = 0
    users: int = 0
    segment_changes: int = 0
    foreign_states: int = 0  # users whose stored state had the wrong size: started afresh
    reasons: Counter[str] = field(default_factory=Counter)


class SegmentPipeline:
    """One consumer process: owns its Kafka clients and a Redis connection."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: RedisClient | None = None,
        pointer: PointerKeys | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client or settings.redis.connect()
        self.pointer = pointer or PointerKeys()
        self._bind_namespace(settings.redis.namespace)
        self.type_map = resolve_type_map(settings.pipeline.type_aliases)
        self.limits = DecodeLimits(
            max_payload_bytes=settings.pipeline.max_payload_bytes,
            max_ahead_of_record_ms=settings.pipeline.max_event_ahead_seconds * 1000.0,
        )
        self.model: SegmentModel | None = None
        self._model_checked = 0.0
        self._model_check_failed_at = -np.inf  # when a failed model check was last logged
        self._rejected: tuple[int | None, str] | None = None  # (version, error) last logged
        self._category_cache: dict[str, float] = {}
        self._known_categories: set[float] = set()
        self._fields_of: tuple[SegmentModel | None, list[bytes], list[tuple[bytes, bytes]]] = (
            None,
            [],
            [],
        )
        self._names_by_code: dict[float, str] = {}
        self._ignored_types: set[str] = set()  # type names logged as ignored
        self.watermark = -np.inf
        self._stopping = False
        self.rescore = IdleRescore(self)
        self.consumer: Consumer | None = None
        self.outputs: OutputTopics | None = None
        self.totals = BatchStats()
        self.metrics = PipelineMetrics()
        self.heartbeat = ConsumerHeartbeat(
            self.redis, self.keys, self.metrics, settings.observability.heartbeat_seconds
        )

    def _bind_namespace(self, name: str) -> None:
        """Point every Redis adapter of this process at namespace ``name``."""
        self.keys = KeyLayout(name)
        self.fences = PartitionFences(self)  # tokens count per namespace
        self.store = StateStore(
            self.redis,
            self.keys,
            user_ttl_seconds=self.settings.redis.user_ttl_seconds,
            training_buffer_rows=self.settings.pipeline.training_buffer_rows,
        )
        self.models = ModelStore(self.redis, self.keys)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, *, assignment: Sequence[TopicPartition] | None = None) -> None:
        """Create topics if needed, connect the clients and subscribe.

        With ``assignment`` (partitions with their start offsets) the consumer reads exactly
        those, with ``assign()`` instead of a group subscription: for a bounded replay.
        """
        kafka = self.settings.kafka
        ensure_topics(kafka, reading_events=assignment is None)
        # Redis before the producer and consumer: one that refuses or does not answer stops
        # start-up (one line, exit 2) before they exist; an unclosed librdkafka consumer
        # kept the process spinning after the error was printed.
        self.redis.ping()
        self.outputs = OutputTopics(kafka)
        self.consumer = create_consumer(
            kafka,
            stats_cb=self.metrics.observe_kafka_stats,
            stats_interval_seconds=self.settings.observability.heartbeat_seconds,
        )
        if assignment is not None:
            self.consumer.assign(list(assignment))
            self.metrics.set_assignment((p.topic, p.partition) for p in assignment)
        else:
            self.consumer.subscribe(
                [kafka.events_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        if self.settings.pipeline.follow_live_namespace:
            self._follow_live_namespace()
        self.refresh_model(force=True)
        self.watermark = self.store.read_watermark() or -np.inf
        log.info(
            "started: topic=%s group=%s namespace=%s model=%s",
            kafka.events_topic,
            kafka.group_id,
            self.keys.namespace,
            self.model.model_version if self.model else "none (cold start)",
        )

    def readiness_checks(self) -> dict[str, Callable[[], bool]]:
        """What ``/readyz`` asks: partitions assigned, Redis answers PING, and a model loaded
        or the cold start declared (the first model check ran)."""
        # Its own client, 1 s at most: probes time out in a second or two, and a PING stuck
        # in the pipeline's socket timeout would answer with a timeout, not the failed check.
        probe = self.settings.redis.connect(timeout_seconds=_PROBE_TIMEOUT_SECONDS)
        return {
            "assigned": lambda: bool(self.metrics.assignment),
            "redis": lambda: bool(probe.ping()),
            "model": lambda: self.model is not None or self._model_checked > 0,
        }

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and return."""
        self._stopping = True

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.commit(asynchronous=False)
            except Exception as exc:  # nothing stored yet is a normal case
                log.debug("final commit: %s", exc)
            self.consumer.close()
            self.consumer = None
            self.heartbeat.forget()
        if self.outputs is not None:
            self.outputs.close()
            self.outputs = None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.set_assignment(
            self.metrics.assignment | {(p.topic, p.partition) for p in partitions}
        )
        # Cooperative rebalancing hands over changes only: say what is owned now too.
        log.info("assigned %s (now owns %s)", [p.partition for p in partitions], self._owned())
        if not self.settings.pipeline.follow_live_namespace:
            return
        # Start where the namespace's state ends, not where the group committed: the two
        # differ after a promote (see `_follow_live_namespace`). Without an answer from Redis
        # there is no safe start: wait for it, and give up (exit, nothing stored) after a
        # minute rather than consume from a position the namespace may not have reached.
        applied = self._applied_offsets_waiting(partitions, seconds=60.0)
        for p in partitions:
            if (p.topic, p.partition) in applied:
                p.offset = applied[(p.topic, p.partition)]
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The batch in flight finished before poll ran this callback: its offsets are stored.
        self.metrics.set_assignment(
            self.metrics.assignment - {(p.topic, p.partition) for p in partitions}
        )
        log.info("revoked %s (now owns %s)", [p.partition for p in partitions], self._owned())
        self.fences.forget(partitions)
        try:
            consumer.commit(asynchronous=False)
        except Exception as exc:
            log.debug("commit on revoke: %s", exc)

    def _owned(self) -> list[int]:
        return sorted(p for _, p in self.metrics.assignment)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already; commit nothing.
        log.warning("lost partitions %s", [p.partition for p in partitions])
        self.fences.forget(partitions)
        self.metrics.set_assignment(
            self.metrics.assignment - {(p.topic, p.partition) for p in partitions}
        )

    def run(self, *, max_records: int = 0, idle_exit_seconds: float = 0.0) -> BatchStats:
        """Loop until stopped, ``max_records`` seen, or idle for ``idle_exit_seconds``."""
        assert self.consumer is not None
        batch_size = self.settings.pipeline.batch_size
        timeout = self.settings.pipeline.batch_timeout_ms / 1000.0
        last_record = time.monotonic()
        while not self._stopping:
            self.refresh_model()
            try:
                self.rescore.step()
            except StopRequested:
                break
            if self.heartbeat.due():
                self._beat()
            messages = self._next_batch(batch_size, timeout)
            if messages:
                last_record = time.monotonic()
                try:
                    self.process(messages)
                except StopRequested:
                    break  # nothing of this batch was stored: it is redelivered
            elif not self.consumer.assignment():
                last_record = time.monotonic()  # idle only counts while partitions are ours
            elif idle_exit_seconds and time.monotonic() - last_record > idle_exit_seconds:
                break
            if max_records and self.totals.records >= max_records:
                break
        return self.totals

    def _next_batch(self, batch_size: int, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` for one record, then take whatever else is already fetched,
        up to ``batch_size``. A batch never waits to fill: at low rates a record is processed
        as soon as it arrives, and under load batches grow by themselves while the previous
        one is processed (consume(n, t) would hold every record for the full ``t``)."""
        assert self.consumer is not None
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        if batch_size == 1:
            return [first]
        return [first, *self.consumer.consume(batch_size - 1, 0)]

    # -- model -----------------------------------------------------------------------------

    def refresh_model(self, *, force: bool = False) -> None:
        """Load a newly published model, at most every ``model_poll_seconds``; when following
        the live pointer, switch namespace first if a promote moved it."""
        now = time.monotonic()
        if not force and now - self._model_checked < self.settings.pipeline.model_poll_seconds:
            return
        self._model_checked = now
        if self.settings.pipeline.follow_live_namespace:
            try:
                self._follow_live_namespace()
            except redis.RedisError as exc:  # nothing changed: try again at the next poll
                log.warning("cannot check the live pointer: %s", exc)
                return
        version: int | None = None  # unknown until read: the key itself may be unreadable
        try:
            version = self.models.current_version()
            if version is None or (self.model is not None and version == self.model.model_version):
                return
            loaded = self.models.load_current()
        except redis.RedisError as exc:  # said once per outage log interval, not per poll
            if now - self._model_check_failed_at >= _OUTAGE_LOG_SECONDS:
                self._model_check_failed_at = now
                log.warning("cannot check for a new model: %s", exc)
            return
        except Exception as exc:  # a bad model must not stop the stream; keep the old one
            rejected = (version, str(exc))
            if rejected != self._rejected:  # once per version, not at every poll
                self._rejected = rejected
                log.error("rejected published model: %s", exc)
            return
        if loaded is not None:
            previous = self.model.model_version if self.model else None
            log.info("model switch: %s -> %s", previous, loaded.model_version)
            self.model = loaded
            self.metrics.model_version.set(loaded.model_version)
            self.rescore.check_retired_segments(loaded)

    # -- the live pointer ------------------------------------------------------------------

    def _follow_live_namespace(self) -> None:
        """Switch to the namespace the live pointer names, if it changed (between batches).

        The namespace's ``applied-offsets`` hash says up to where each partition is in its
        state: owned partitions are sought there, so a promoted replay shadow first catches up
        on the events that arrived after its replay (a rollback likewise catches the old
        namespace up). Events already in a user's state are skipped as redelivered, so the
        catch-up applies each event once. A partition without a field continues from where it
        is (logged). Everything about the target is read before anything changes: a Redis
        error leaves the pipeline on its old namespace, to try again at the next poll. A seek
        that fails stops the process (nothing is stored): its restart starts every partition
        at the namespace's applied offsets.
        """
        target = live_namespace(self.redis, self.settings.redis.namespace, self.pointer)
        if target == self.keys.namespace:
            return
        keys = KeyLayout(target)
        owned = self.consumer.assignment() if self.consumer is not None else []
        applied = self._applied_offsets(owned, keys)
        target_store = StateStore(self.redis, keys)
        watermark = target_store.read_watermark()
        owned_ids = frozenset(tp.partition for tp in owned)
        markers = self.rescore.markers(owned_ids, keys)

        previous = self.keys.namespace
        for tp in owned:
            offset = applied.get((tp.topic, tp.partition))
            if offset is None:
                log.warning(
                    "namespace %s has no applied offset for %s[%d]: continuing from here",
                    target,
                    tp.topic,
                    tp.partition,
                )
                continue
            assert self.consumer is not None
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                raise ServerUnavailableError(
                    f"cannot seek {tp.topic}[{tp.partition}] to {offset} for namespace "
                    f"{target}: {exc}; restart to resume from its applied offsets"
                ) from exc
        self.heartbeat.forget()
        self._bind_namespace(target)
        self.heartbeat.keys = self.keys
        self._known_categories = set()  # the categories hash is per namespace
        # The target's own time: its users were scored at its watermark (a replay re-scores
        # everyone there), and a catch-up must not re-score them at a later one first.
        self.watermark = watermark if watermark is not None else -np.inf
        lateness_ms = self.settings.pipeline.allowed_lateness_seconds * 1000.0
        scored_at = markers if markers is not None else self.watermark - lateness_ms
        self.rescore.moved_namespace(scored_at, owned_ids)
        self._model_checked = 0.0
        self.model = None
        log.info("live namespace moved: now writing %s (was %s)", target, previous)
        announced = announce_segments(self, KeyLayout(previous), owned_ids)
        log.info(
            "announced the segments of %d users of %s on the segments topic", announced, target
        )

    def _applied_offsets(
        self, partitions: Sequence[TopicPartition], keys: KeyLayout | None = None
    ) -> dict[tuple[str, int], int]:
        """Next offset to apply per partition, from a namespace's ``applied-offsets``."""
        if not partitions:
            return {}
        fields = [f"{p.topic}:{p.partition}" for p in partitions]
        values = self.redis.hmget((keys or self.keys).applied_offsets, fields)
        found: dict[tuple[str, int], int] = {}
        for p, v in zip(partitions, values, strict=True):
            if v is None:
                continue
            try:
                found[(p.topic, p.partition)] = int(v)
            except ValueError:
                log.warning("ignoring a malformed applied offset %r of %s", v, p.partition)
        return found

    def _applied_offsets_waiting(
        self, partitions: Sequence[TopicPartition], *, seconds: float
    ) -> dict[tuple[str, int], int]:
        """`_applied_offsets`, retrying while Redis is unavailable for up to ``seconds``."""
        deadline = time.monotonic() + seconds
        delay = 0.1
        while True:
            try:
                return self._applied_offsets(partitions)
            except redis.RedisError as exc:
                if not _redis_is_unavailable(exc) or time.monotonic() > deadline:
                    raise ServerUnavailableError(
                        f"cannot read where namespace {self.keys.namespace} stands "
                        f"(applied offsets) for newly assigned partitions: {exc}"
                    ) from exc
                log.warning("Redis unavailable (%s) while positioning partitions", exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- one batch -------------------------------------------------------------------------

    def process(self, messages: Sequence[Message]) -> BatchStats:
        """Process one batch of Kafka messages end to end (steps 1-6 of the module doc)."""
        assert self.consumer is not None and self.outputs is not None
        started = time.perf_counter()
        stats = BatchStats(records=len(messages))
        records = [m for m in messages if m.error() is None]
        for m in messages:
            err = m.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
        stats.records = len(records)
        kafka = _KafkaPositions.of(records)

        batch, rejections = decode_events(
            [m.value() for m in records],
            [m.key() for m in records],
            type_map=self.type_map,
            limits=self.limits,
            record_ts_ms=kafka.timestamp_ms,
            now_ms=time.time() * 1000.0,
        )
        stats.ignored = len(batch.ignored)
        if batch.ignored_types:
            self._name_ignored_types(batch.ignored_types)
        stats.reasons = self.outputs.send_dead_letters(records, rejections)
        stats.dead_lettered = len(rejections)

        # Retried from the read on a Redis failure. A write that went through with its reply
        # lost is found by its applied offsets and not redone, so counters count it once.
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and self._batch_landed(kafka):
                log.info("a batch's write landed though its reply was lost; not redone")
                return
            self._apply_and_write_fenced(kafka, batch, stats)

        self.until_redis_answers(attempt)
        written_at_ms = time.time() * 1000.0
        self._store_offsets(kafka.next_offsets)
        self._add_totals(stats)
        self._observe(stats, kafka, time.perf_counter() - started, written_at_ms)
        return stats

    def _observe(
        self,
        stats: BatchStats,
        kafka: _KafkaPositions,
        seconds: float,
        written_at_ms: float,
    ) -> None:
        """Batch metrics: a few counter increments and a sample of latencies, never per record."""
        step = max(1, len(kafka.offset) // LATENCY_SAMPLES_PER_BATCH)
        self.metrics.observe_batch(
            records=stats.records,
            applied=stats.applied,
            duplicates=stats.duplicates,
            ignored=stats.ignored,
            segment_changes=stats.segment_changes,
            foreign_states=stats.foreign_states,
            reasons=stats.reasons,
            seconds=seconds,
            timestamps_ms=kafka.timestamp_ms[::step].tolist(),
            written_at_ms=written_at_ms,
        )
        self.heartbeat.last_batch_at = written_at_ms / 1000.0

    def _beat(self) -> None:
        """The consumer heartbeat in Redis and the segment-size gauges (every few seconds)."""
        assert self.consumer is not None
        try:
            member = self.consumer.memberid() or ""
        except Exception:  # not (yet) a group member, e.g. with a manual assignment
            member = ""
        self.heartbeat.beat(
            member, self.metrics.assignment, self.model, self.totals.records, self.totals.reasons
        )

    def _batch_landed(self, kafka: _KafkaPositions) -> bool:
        """Whether this namespace's applied offsets already cover the whole batch."""
        topic = self.settings.kafka.events_topic
        partitions = [TopicPartition(topic, p) for p in kafka.next_offsets]
        applied = self._applied_offsets(partitions)
        return all(
            applied.get((topic, p), -1) >= next_offset
            for p, next_offset in kafka.next_offsets.items()
        )

    def _apply_and_write_fenced(
        self, kafka: _KafkaPositions, batch: EventBatch, stats: BatchStats
    ) -> None:
        """`_apply_and_write`, again from a fresh read while its write is discarded because a
        partition of ``<ns>:partition-owners`` got a new token since the read (one Redis
        server). Usually another partition's new owner in a rebalance: the retry goes
        through. If it is one of the batch's partitions, the fresh read says so and
        `PartitionFences.read` stops this consumer before it writes anything.
        """
        discarded, said_at = 0, -np.inf
        while True:
            try:
                self._apply_and_write(kafka, batch, stats)
                return
            except redis.WatchError:
                discarded += 1
                self.metrics.fenced_writes.inc()
                now = time.monotonic()
                if now - said_at >= _OUTAGE_LOG_SECONDS:
                    said_at = now
                    log.info("a partition got a new owner since this batch was read: reading again")
                if self._stopping:
                    raise StopRequested from None  # nothing of the batch was written
                time.sleep(random.uniform(0.0, min(0.01 * discarded, 0.5)))

    def _apply_and_write(
        self, kafka: _KafkaPositions, batch: EventBatch, stats: BatchStats
    ) -> None:
        write = BatchWrite(user_ids=[], states=np.empty((0, 0)))
        if len(batch):
            write = self._apply(kafka, batch, stats)
        write.counters = {
            "records": stats.records,
            "applied": stats.applied,
            "duplicates": stats.duplicates,
            "duplicate_event_ids": stats.duplicate_event_ids,
            "ignored": stats.ignored,
            "dead_lettered": stats.dead_lettered,
            "segment_changes": stats.segment_changes,
            "foreign_states": stats.foreign_states,
            "training_rows": len(write.training_rows) if write.training_rows is not None else 0,
            **{f"dead_letter.{r}": n for r, n in stats.reasons.items()},
        }
        topic = self.settings.kafka.events_topic
        write.applied_offsets = {f"{topic}:{p}": o for p, o in kafka.next_offsets.items()}
        assert self.outputs is not None
        self.outputs.deliver()
        self.store.write(write)
        # Only once written: a failed attempt registers its new category names on the retry.
        self._known_categories.update(write.new_categories)

    def _apply(self, kafka: _KafkaPositions, batch: EventBatch, stats: BatchStats) -> BatchWrite:
        users = list(dict.fromkeys(batch.user_id))  # distinct, in first-seen order
        row_of = {u: i for i, u in enumerate(users)}
        user_rows = np.fromiter(map(row_of.__getitem__, batch.user_id), np.int64, len(batch))
        user_keys = self.keys.state_and_segment(users)  # built once, read and write
        states, foreign = self.fences.read(users, [k for k, _ in user_keys], kafka.next_offsets)
        stats.foreign_states = int(foreign.sum())
        if stats.foreign_states:
            log.warning(
                "%d users' state keys hold a value that is not a streamseg state of this "
                "version (wrong size; first: %s): replaced by a fresh state, counted in "
                "foreign_states",
                stats.foreign_states,
                user_keys[int(np.flatnonzero(foreign)[0])][0],
            )
        if len(self._category_cache) > _CATEGORY_CACHE_LIMIT:
            self._category_cache.clear()  # a cache of hashes: rebuilt as names come back
        codes = category_codes(batch.category, self._category_cache)
        cols = EventColumns(
            user=user_rows,
            ts_ms=batch.ts_ms,
            type_code=batch.type_code,
            amount=batch.amount,
            category_code=codes,
            partition=kafka.partition[batch.index],
            offset=kafka.offset[batch.index],
            event_id_hash=event_id_hashes(batch.event_id),
        )
        redelivered = int(already_applied(states, cols).sum())
        last_before = states[:, COL["last_ts_ms"]].copy()
        applied = apply_events(
            states,
            cols,
            self.settings.features,
            dedupe_window=self.settings.pipeline.dedupe_window_events,
        )
        stats.applied = int(applied.sum())
        stats.duplicates = len(batch) - stats.applied
        stats.duplicate_event_ids = stats.duplicates - redelivered
        touched = np.unique(user_rows[applied])
        stats.users = len(touched)
        self.watermark = max(self.watermark, float(batch.ts_ms.max()))

        touched_users = [users[i] for i in touched]
        touched_states = states[touched]
        # All users read, not only those this batch changed: after a partial write on a
        # cluster, a retried batch changes no one, and its names must still be registered.
        new_categories = self._categories_to_register(batch.category, states)
        features = derive_features(
            touched_states, touched_states[:, COL["last_ts_ms"]], self.settings.features
        )
        records_json, size_changes, changes = self.assign_segments(
            touched_users, touched_states, features
        )
        stats.segment_changes = len(changes)
        assert self.outputs is not None
        self.outputs.send_changes(changes)
        # A user's first event of a period (or ever: NaN compares False) adds their row.
        first_in_period = ~(
            self.training_period(last_before[touched])
            >= self.training_period(touched_states[:, COL["last_ts_ms"]])
        )
        return BatchWrite(
            user_ids=touched_users,
            user_keys=[user_keys[i] for i in touched],
            states=touched_states,
            segment_records=records_json,
            training_rows=(
                keyed_rows(
                    features[first_in_period],
                    [touched_users[i] for i in np.flatnonzero(first_in_period)],
                )
                if self.wants_training_rows
                else None
            ),
            size_changes=size_changes,
            new_categories=new_categories,
            watermark_ms=self.watermark,
        )

    def assign_segments(
        self, users: list[str], states: np.ndarray, features: np.ndarray
    ) -> tuple[list[bytes], dict[int, int], list[tuple[str, bytes]]]:
        """Segment records, segment-size deltas and change events; updates ``states``."""
        computed_at = iso_ms(time.time() * 1000.0)
        event_times = iso_ms_array(states[:, COL["last_ts_ms"]])
        names = self._category_names(states)
        by_spend, by_views = top_categories(states)
        spend_names = [names.get(c) if c == c else None for c in by_spend.tolist()]
        view_names = [names.get(c) if c == c else None for c in by_views.tolist()]
        model = self.model
        if model is None:
            records = encode_records(
                users,
                fields=[COLD_START_FIELDS] * len(users),
                distances=None,
                top_category_spend=spend_names,
                top_category_views=view_names,
                event_times=event_times,
                computed_at=computed_at,
            )
            return records, {}, []
        previous = states[:, COL["segment_id"]].astype(np.int64)
        ids, positions, distances = model.assign(
            features, previous_ids=previous, margin=self.settings.pipeline.hysteresis_margin
        )
        states[:, COL["segment_id"]] = ids
        states[:, COL["model_version"]] = model.model_version
        per_segment, per_segment_change = self._segment_fields(model)
        records = encode_records(
            users,
            fields=[per_segment[p] for p in positions.tolist()],
            distances=np.round(distances, 6).tolist(),
            top_category_spend=spend_names,
            top_category_views=view_names,
            event_times=event_times,
            computed_at=computed_at,
        )
        changed = np.flatnonzero(ids != previous)
        size_changes: Counter[int] = Counter()
        joined, counts = np.unique(ids[changed], return_counts=True)
        size_changes.update(dict(zip(joined.tolist(), counts.tolist(), strict=True)))
        left = previous[changed]
        gone, counts = np.unique(left[left >= 0], return_counts=True)
        size_changes.subtract(dict(zip(gone.tolist(), counts.tolist(), strict=True)))
        changes = encode_changes(
            [users[i] for i in changed.tolist()],
            fields=[per_segment_change[p] for p in positions[changed].tolist()],
            previous_ids=left.tolist(),
            event_times=[event_times[i] for i in changed.tolist()],
            computed_at=computed_at,
            namespace=self.keys.namespace,
        )
        return records, {k: v for k, v in size_changes.items() if v}, changes

    def _segment_fields(self, model: SegmentModel) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        """`segment_fields` and `change_fields` of each centre position of ``model``
        (computed once per model)."""
        if self._fields_of[0] is not model:
            segments = list(
                zip(model.ids, model.names_array.tolist(), model.tiers_array.tolist(), strict=True)
            )
            version = model.model_version
            self._fields_of = (
                model,
                [segment_fields(int(i), name, int(tier), version) for i, name, tier in segments],
                [change_fields(int(i), name, int(tier), version) for i, name, tier in segments],
            )
        return self._fields_of[1], self._fields_of[2]

    def _categories_to_register(
        self, batch_categories: list[str | None], states: np.ndarray
    ) -> dict[float, str]:
        """Code -> name of this batch's categories that ``states`` hold and Redis may not know.

        Only names a user's category slots still hold are registered: a producer inventing a
        category per event adds at most `model.features` slot-count names per user and batch
        to ``<ns>:categories``, not one per event.
        """
        in_batch = {self._category_cache[n]: n for n in set(batch_categories) if n is not None}
        if len(self._names_by_code) > _CATEGORY_CACHE_LIMIT:
            self._names_by_code.clear()
        self._names_by_code.update(in_batch)
        held = states[:, CATEGORY_CODES]
        held_codes = set(np.unique(held[~np.isnan(held)]).tolist())
        if len(self._known_categories) > _CATEGORY_CACHE_LIMIT:
            self._known_categories.clear()  # re-registering a name is harmless
        known = self._known_categories
        return {c: n for c, n in in_batch.items() if c in held_codes and c not in known}

    def _category_names(self, states: np.ndarray) -> dict[float, str]:
        """Code -> name for every category code in ``states``, asking Redis for unknown ones."""
        names = self._names_by_code
        codes = np.unique(states[:, CATEGORY_CODES])
        unknown = [c for c in codes.tolist() if c == c and c not in names]
        if unknown:
            found = self.redis.hmget(self.keys.categories, [repr(int(c)) for c in unknown])
            names.update({c: v.decode() for c, v in zip(unknown, found, strict=True) if v})
        return names

    def _name_ignored_types(self, names: Sequence[str]) -> None:
        """Log each type name that is ignored, once per process (the first
        `_IGNORED_TYPES_LOGGED`): the `ignored` counter alone does not say that an export's
        ``addtocart`` needs an alias."""
        if len(self._ignored_types) >= _IGNORED_TYPES_LOGGED:
            return
        new = set(names) - self._ignored_types
        if not new:
            return
        for name in sorted(new)[: _IGNORED_TYPES_LOGGED - len(self._ignored_types)]:
            log.warning(
                "ignoring events of type %r: neither %s nor an alias in pipeline.type_aliases "
                "(counted as ignored)",
                name,
                ", ".join(CANONICAL_TYPES),
            )
            self._ignored_types.add(name)
        if len(self._ignored_types) >= _IGNORED_TYPES_LOGGED:
            log.warning("no more ignored type names will be logged")

    # -- the trainer's sample ----------------------------------------------------------------

    @property
    def wants_training_rows(self) -> bool:
        return bool(self.settings.pipeline.training_buffer_rows)

    def training_period(self, ts_ms: np.ndarray | float) -> np.ndarray:
        """Training period of event times (epoch ms): one row per user and period goes to
        the trainer, so the model fits the users, not the events (heavy users would
        otherwise fill the buffer), at their current state."""
        return np.floor(np.asarray(ts_ms) / (self.settings.pipeline.training_period_seconds * 1e3))

    def send_changes(self, changes: Sequence[tuple[str, bytes]]) -> None:
        """Produce change events made outside a batch (a re-score pass, an announcement, a
        replay's final scoring) and wait until the broker has them, before the Redis write."""
        assert self.outputs is not None
        self.outputs.send_changes(changes)
        self.outputs.deliver()

    def count_changes(self, count: int) -> None:
        """Count change events sent outside a batch, once their Redis write went through: the
        metric and the run's summary line (a batch's are counted with its statistics)."""
        self.metrics.segment_changes.inc(count)
        self.totals.segment_changes += count

    def until_redis_answers(self, work: Callable[[], None]) -> None:
        """Run ``work``; while Redis fails, pause consumption and retry it with back-off.

        Raises `StopRequested` when asked to stop meanwhile: nothing of the batch was stored,
        so it is simply redelivered.
        """
        assert self.consumer is not None
        delay = 0.1
        paused = False
        since = said_at = measured_at = 0.0
        while True:
            try:
                work()
                break
            except (redis.RedisError, redis.exceptions.SlotNotCoveredError) as exc:
                # SlotNotCoveredError (a cluster mid-failover) is not a RedisError.
                if isinstance(exc, redis.RedisError) and not _redis_is_unavailable(exc):
                    raise
                self.metrics.redis_errors.inc()
                now = time.monotonic()
                if not paused:
                    paused = True
                    since = said_at = now
                    self.metrics.set_paused(True)
                    log.warning("Redis unavailable (%s); consumption paused", exc)
                elif now - said_at >= _OUTAGE_LOG_SECONDS:
                    said_at = now
                    log.warning(
                        "Redis still unavailable after %.0f s (%s); consumption paused",
                        now - since,
                        exc,
                    )
                if now - measured_at >= self.settings.observability.heartbeat_seconds:
                    measured_at = now
                    self._measure_lag_paused()
                self._serve_callbacks_paused()
                if self._stopping:
                    raise StopRequested from exc
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if paused:
            self.consumer.resume(self.consumer.assignment())
            self.metrics.set_paused(False)
            log.info("Redis is back; consumption resumed")

    def _measure_lag_paused(self) -> None:
        """Set the lag gauge from the brokers' high watermarks and this consumer's positions:
        paused partitions fetch nothing, so librdkafka's statistics would freeze it just when
        the lag grows."""
        assert self.consumer is not None
        lags: dict[tuple[str, int], int] = {}
        try:
            for tp in self.consumer.position(self.consumer.assignment()):
                _, high = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                if tp.offset >= 0:
                    lags[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        except KafkaException as exc:  # the gauge keeps its last value
            log.debug("lag not measured while paused: %s", exc)
            return
        self.metrics.observe_lags(lags)

    def _serve_callbacks_paused(self) -> None:
        """Serve rebalance callbacks without consuming: partitions assigned meanwhile are
        paused too, and a message poll returns anyway is sought back, not dropped."""
        assert self.consumer is not None
        self.consumer.pause(self.consumer.assignment())
        message = self.consumer.poll(0)
        if message is not None and message.error() is None:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is not None and partition is not None and offset is not None:
                self.consumer.seek(TopicPartition(topic, partition, offset))
        self.consumer.pause(self.consumer.assignment())

    def _store_offsets(self, next_offsets: dict[int, int]) -> None:
        assert self.consumer is not None
        if next_offsets:
            topic = self.settings.kafka.events_topic
            offsets = [TopicPartition(topic, p, o) for p, o in next_offsets.items()]
            try:
                self.consumer.store_offsets(offsets=offsets)
            except Exception as exc:  # partition revoked meanwhile: the new owner redoes it
                log.info("offsets not stored (%s)", exc)

    def _add_totals(self, stats: BatchStats) -> None:
        t = self.totals
        t.records += stats.records
        t.applied += stats.applied
        t.duplicates += stats.duplicates
        t.duplicate_event_ids += stats.duplicate_event_ids
        t.ignored += stats.ignored
        t.dead_lettered += stats.dead_lettered
        t.users += stats.users
        t.segment_changes += stats.segment_changes
        t.foreign_states += stats.foreign_states
        t.reasons.update(stats.reasons)


#: Entries kept in each in-process category cache before it is emptied (bounded memory
#: under a producer that invents category names).
_CATEGORY_CACHE_LIMIT = 100_000
#: Longest wait of a /readyz Redis PING.
_PROBE_TIMEOUT_SECONDS = 1.0
#: A Redis outage is logged when it begins and again every this many seconds.
_OUTAGE_LOG_SECONDS = 30.0
#: Ignored type names logged per process: the names come from the input, so they are bounded.
_IGNORED_TYPES_LOGGED = 100


@dataclass(frozen=True, slots=True)
class _KafkaPositions:
    """Partition, offset and timestamp of each record of a batch (all from
    ``kafka.events_topic``), read once per batch, and the offset after the last record of
    each partition."""

    partition: np.ndarray  # int64
    offset: np.ndarray  # int64
    timestamp_ms: np.ndarray  # int64, Kafka record timestamp; <= 0 = not available
    next_offsets: dict[int, int]

    @classmethod
    def of(cls, records: Sequence[Message]) -> _KafkaPositions:
        n = len(records)
        partition = np.fromiter((m.partition() for m in records), np.int64, n)
        offset = np.fromiter((m.offset() for m in records), np.int64, n)
        timestamp = np.fromiter((m.timestamp()[1] for m in records), np.int64, n)
        # Records of a partition arrive in offset order: the last one per partition wins.
        next_offsets = dict(zip(partition.tolist(), (offset + 1).tolist(), strict=True))
        return cls(partition, offset, timestamp, next_offsets)


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
        "segment_changes=%d foreign_states=%d",
        elapsed,
        totals.records,
        totals.applied,
        totals.duplicates,
        totals.ignored,
        totals.dead_lettered,
        totals.segment_changes,
        totals.foreign_states,
    )
    return 0
