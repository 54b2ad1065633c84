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

Beside the loop, each in its own module: the Kafka writes (`consumer.outputs`), scoring
users into records and change events (`consumer.segment_assignment`), the fencing tokens
(`consumer.fencing`), waiting out a Redis outage (`consumer.redis_outage`), the model and
live-pointer checks (`consumer.model_watch`), the re-score pass of idle users between batches
(`consumer.rescore`) and the announcement after a switch of the live namespace
(`consumer.announcement`). ``streamseg run`` itself is `consumer.run`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
import redis
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from consumer.category_names import CategoryNames
from consumer.feature_settings import FeatureSettings, record_feature_settings
from consumer.fencing import PartitionFences
from consumer.kafka_clients import consumer_config, create_consumer, ensure_topics
from consumer.kafka_positions import KafkaPositions
from consumer.metrics import LATENCY_SAMPLES_PER_BATCH, PipelineMetrics
from consumer.model_store import ModelStore
from consumer.model_watch import ModelWatch
from consumer.namespaces import register_namespace
from consumer.outputs import OutputTopics
from consumer.redis_keys import KeyLayout, PointerKeys
from consumer.redis_outage import (
    OUTAGE_LOG_SECONDS,
    StopRequested,
    retry_while_unavailable,
    until_redis_answers,
)
from consumer.rescore import IdleRescore
from consumer.segment_assignment import Assignment, SegmentFields, assign_segments
from consumer.settings import RedisClient, Settings
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
    COL,
    EventColumns,
    already_applied,
    apply_events,
    derive_features,
    event_id_hashes,
    users_on_several_partitions,
)

if TYPE_CHECKING:
    from model.model_format import SegmentModel

log = logging.getLogger(__name__)


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
    cross_partition_users: int = 0  # users whose events came from more than one partition
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, other: BatchStats) -> None:
        """Add ``other``'s counts to these (a run's totals), every field of the class."""
        for counted in fields(self):
            if counted.name != "reasons":
                setattr(
                    self, counted.name, getattr(self, counted.name) + getattr(other, counted.name)
                )
        self.reasons.update(other.reasons)


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
        self.model_watch = ModelWatch(self)
        self.categories = CategoryNames()
        self._segment_fields = SegmentFields()
        self._ignored_types: set[str] = set()  # type names logged as ignored
        self._cross_partition_said_at = -np.inf
        self.watermark = -np.inf
        self._stopping = False
        self.rescore = IdleRescore(self)
        self.consumer: Consumer | None = None
        self.outputs: OutputTopics | None = None
        self.totals = BatchStats()
        self.metrics = PipelineMetrics()
        self._name_in_metrics()
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

    def _name_in_metrics(self) -> None:
        kafka = self.settings.kafka
        self.metrics.serves(self.keys.namespace, kafka.group_id, kafka.events_topic)

    def switch_namespace(self, name: str) -> None:
        """Move this process to namespace ``name`` (between batches): its heartbeat and every
        Redis adapter. What the target's state says (offsets, watermark, model) is for the
        caller, `ModelWatch.follow_live_namespace`."""
        self.heartbeat.forget()
        self._bind_namespace(name)
        self._name_in_metrics()
        self.heartbeat.keys = self.keys
        self.categories.forget_registered()  # the categories hash is per namespace
        self._record_feature_settings()

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
        self._register_namespace()
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
            self.model_watch.follow_live_namespace()
        self._record_feature_settings()  # where it writes, after following the pointer
        self.refresh_model(force=True)
        self.watermark = self.store.read_watermark() or -np.inf
        if self.watermark > 0:
            self.metrics.watermark.set(self.watermark / 1000.0)
        log.info(
            "started: topic=%s group=%s namespace=%s model=%s",
            kafka.events_topic,
            kafka.group_id,
            self.keys.namespace,
            self.model.model_version if self.model else "none (cold start)",
        )

    def _register_namespace(self) -> None:
        """Name this namespace in the registry that `streamseg namespaces` and the
        misspelt-namespace hint read (before, only replays did: a namespace that only a
        pipeline wrote was missing from both). A Redis user without the registry key (the
        least-privilege ACL of the README) skips it."""
        try:
            register_namespace(self.redis, self.keys.namespace)
        except redis.exceptions.NoPermissionError:
            log.debug("not registering namespace %s: no permission", self.keys.namespace)

    def _record_feature_settings(self) -> None:
        """Record the feature settings in the namespace this process writes, for `explain`
        (`consumer.feature_settings`): at start and at every switch of namespace."""
        try:
            record_feature_settings(self.redis, self.keys, FeatureSettings.of(self.settings))
        except redis.exceptions.NoPermissionError as exc:
            log.warning(
                "could not record the feature settings in %s (%s): explain will compute with "
                "its own",
                self.keys.feature_settings,
                exc,
            )

    def liveness(self) -> tuple[bool, dict[str, object]]:
        """``/healthz``: alive unless the batch loop has not asked Kafka for records for longer
        than ``max.poll.interval.ms`` (Kafka has then given its partitions away, and a loop
        stuck that long is no pause: restart it). The loop polls while it waits for Redis."""
        last = self.metrics.last_poll_at
        if not last:
            return True, {}  # not started yet
        silent = time.time() - last
        limit = float(consumer_config(self.settings.kafka).get("max.poll.interval.ms", 300_000))
        return silent * 1000.0 < limit, {"seconds_since_poll": round(silent, 3)}

    def readiness_checks(self) -> dict[str, Callable[[], bool]]:
        """What ``/readyz`` asks: partitions assigned, Redis answers PING, and a model loaded
        or the cold start declared (the first model check ran)."""
        # Its own client, 1 s at most: probes time out in a second or two, and a PING stuck
        # in the pipeline's socket timeout would answer with a timeout, not the failed check.
        probe = self.settings.redis.connect(timeout_seconds=_PROBE_TIMEOUT_SECONDS)
        return {
            "assigned": lambda: bool(self.metrics.assignment),
            "redis": lambda: bool(probe.ping()),
            "model": lambda: self.model is not None or self.model_watch.checked_at > 0,
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
        # differ after a promote (see `ModelWatch.follow_live_namespace`). Without an answer
        # from Redis there is no safe start: wait for it, and give up (exit, nothing stored)
        # after a minute rather than consume from a position the namespace may not have reached.
        applied = retry_while_unavailable(
            lambda: self.store.read_applied_offsets([(p.topic, p.partition) for p in partitions]),
            seconds=60.0,
            what=f"where namespace {self.keys.namespace} stands (applied offsets) for newly "
            "assigned partitions",
        )
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
        self.metrics.polled()
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        if batch_size == 1:
            return [first]
        return [first, *self.consumer.consume(batch_size - 1, 0)]

    # -- model -----------------------------------------------------------------------------

    def refresh_model(self, *, force: bool = False) -> None:
        """`ModelWatch.refresh`: a newly published model, or a moved live pointer, is taken
        up between batches."""
        self.model_watch.refresh(force=force)

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
        kafka = KafkaPositions.of(records)

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
        self.totals.add(stats)
        self._observe(stats, kafka, time.perf_counter() - started, written_at_ms)
        return stats

    def _observe(
        self,
        stats: BatchStats,
        kafka: KafkaPositions,
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
            cross_partition_users=stats.cross_partition_users,
            reasons=stats.reasons,
            seconds=seconds,
            timestamps_ms=kafka.timestamp_ms[::step].tolist(),
            written_at_ms=written_at_ms,
        )
        self.heartbeat.last_batch_at = written_at_ms / 1000.0
        self.metrics.last_batch.set(written_at_ms / 1000.0)
        if self.watermark > 0:
            self.metrics.watermark.set(self.watermark / 1000.0)

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

    def _batch_landed(self, kafka: KafkaPositions) -> bool:
        """Whether this namespace's applied offsets already cover the whole batch."""
        topic = self.settings.kafka.events_topic
        applied = self.store.read_applied_offsets([(topic, p) for p in kafka.next_offsets])
        return all(
            applied.get((topic, p), -1) >= next_offset
            for p, next_offset in kafka.next_offsets.items()
        )

    def _apply_and_write_fenced(
        self, kafka: KafkaPositions, batch: EventBatch, stats: BatchStats
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
                if now - said_at >= OUTAGE_LOG_SECONDS:
                    said_at = now
                    log.info("a partition got a new owner since this batch was read: reading again")
                if self._stopping:
                    raise StopRequested from None  # nothing of the batch was written
                time.sleep(random.uniform(0.0, min(0.01 * discarded, 0.5)))

    def _apply_and_write(self, kafka: KafkaPositions, batch: EventBatch, stats: BatchStats) -> None:
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
            "cross_partition_users": stats.cross_partition_users,
            "training_rows": len(write.training_rows) if write.training_rows is not None else 0,
            **{f"dead_letter.{r}": n for r, n in stats.reasons.items()},
        }
        topic = self.settings.kafka.events_topic
        write.applied_offsets = {f"{topic}:{p}": o for p, o in kafka.next_offsets.items()}
        assert self.outputs is not None
        self.outputs.deliver()
        self.store.write(write)
        # Only once written: a failed attempt registers its new category names on the retry.
        self.categories.mark_registered(write.new_categories)

    def _apply(self, kafka: KafkaPositions, batch: EventBatch, stats: BatchStats) -> BatchWrite:
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
        codes = self.categories.codes(batch.category)
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
        redelivery = already_applied(states, cols)
        redelivered = int(redelivery.sum())
        last_before = states[:, COL["last_ts_ms"]].copy()
        partition_before = states[:, COL["partition"]].copy()
        applied = apply_events(
            states,
            cols,
            self.settings.features,
            dedupe_window=self.settings.pipeline.dedupe_window_events,
        )
        stats.applied = int(applied.sum())
        stats.duplicates = len(batch) - stats.applied
        stats.duplicate_event_ids = stats.duplicates - redelivered
        mixed = users_on_several_partitions(partition_before, cols, applied)
        stats.cross_partition_users = len(mixed)
        if len(mixed):
            self._say_cross_partition(mixed, users, partition_before, cols, applied)
        touched = np.unique(user_rows[applied])
        stats.users = len(touched)
        # The latest time of an applied event: a copy skipped for its repeated event_id (its
        # time may differ from the first copy's) must not move every idle user's clock. On a
        # redelivery the applied events are those the user's stored T already holds (the
        # offset test cannot tell the skipped copies among them apart); counting them keeps
        # a batch retried after a partial write on a cluster moving the watermark.
        latest = np.concatenate((batch.ts_ms[applied], last_before[user_rows[redelivery]]))
        if len(latest):
            self.watermark = max(self.watermark, float(latest.max()))

        touched_users = [users[i] for i in touched]
        touched_states = states[touched]
        # All users read, not only those this batch changed: after a partial write on a
        # cluster, a retried batch changes no one, and its names must still be registered.
        new_categories = self.categories.to_register(batch.category, states)
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
    ) -> Assignment:
        """`consumer.segment_assignment.assign_segments` with this process's model, margin,
        namespace and category names; updates ``states``."""
        return assign_segments(
            self.model,
            users,
            states,
            features,
            category_names=self.categories.names(states, self.redis, self.keys.categories),
            margin=self.settings.pipeline.hysteresis_margin,
            namespace=self.keys.namespace,
            fields=self._segment_fields,
        )

    def _say_cross_partition(
        self,
        mixed: np.ndarray,
        users: list[str],
        partition_before: np.ndarray,
        cols: EventColumns,
        applied: np.ndarray,
    ) -> None:
        """Warn, at most every `_CROSS_PARTITION_LOG_SECONDS`, that users get events from
        several partitions, naming the first one: the guarantees assume one partition per
        user, and nothing else shows records without a key, or keys moved by partitions
        added to the topic."""
        now = time.monotonic()
        if now - self._cross_partition_said_at < _CROSS_PARTITION_LOG_SECONDS:
            return
        self._cross_partition_said_at = now
        row = int(mixed[0])
        seen = set(cols.partition[applied & (cols.user == row)].tolist())
        if partition_before[row] >= 0:
            seen.add(int(partition_before[row]))
        log.warning(
            "%d users of this batch got events from more than one partition (first: %r, "
            "partitions %s): records without a key, or partitions added to the topic (keys "
            "moved)? Such a user's redeliveries are caught only by the event-id window, and "
            "two consumers can write the same user; key records by user id (counted in "
            "cross_partition_users)",
            len(mixed),
            users[row],
            ", ".join(str(p) for p in sorted(seen)),
        )

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
        """Run ``work``; while Redis fails, pause consumption and retry it with back-off
        (`consumer.redis_outage.until_redis_answers`).

        Raises `StopRequested` when asked to stop meanwhile: nothing of the batch was stored,
        so it is simply redelivered.
        """
        assert self.consumer is not None
        until_redis_answers(
            work,
            consumer=self.consumer,
            metrics=self.metrics,
            stopping=lambda: self._stopping,
            lag_every_seconds=self.settings.observability.heartbeat_seconds,
        )

    def _store_offsets(self, next_offsets: dict[int, int]) -> None:
        assert self.consumer is not None
        if next_offsets:
            topic = self.settings.kafka.events_topic
            offsets = [TopicPartition(topic, p, o) for p, o in next_offsets.items()]
            try:
                self.consumer.store_offsets(offsets=offsets)
            except Exception as exc:  # partition revoked meanwhile: the new owner redoes it
                log.info("offsets not stored (%s)", exc)


#: Longest wait of a /readyz Redis PING.
_PROBE_TIMEOUT_SECONDS = 1.0
#: Users on several partitions are logged at most this often.
_CROSS_PARTITION_LOG_SECONDS = 300.0
#: Ignored type names logged per process: the names come from the input, so they are bounded.
_IGNORED_TYPES_LOGGED = 100
