"""Prometheus metrics of the consumer and the trainer, on a per-process registry.

Every metric is named ``streamseg_*``. The pipeline updates its metrics a few times per
batch (never per record); consumer lag comes from librdkafka's statistics callback; segment
sizes are read from Redis with the consumer heartbeat (every few seconds). The HTTP server
that exposes them (with ``/healthz`` and ``/readyz``) lives in `consumer.health`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, get_args

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from model.events import RejectReason

if TYPE_CHECKING:
    from model.model_format import SegmentModel

log = logging.getLogger(__name__)

#: Batch sizes in records.
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000)
#: Batch durations in seconds.
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Produce-to-segment latency in seconds (a replay of old data lands in the last buckets).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
#: Records per batch whose latency is observed, evenly spaced: enough for quantiles,
#: cheap at any batch size.
LATENCY_SAMPLES_PER_BATCH = 32


class PipelineMetrics:
    """The consumer's metrics (``streamseg run``), each on this object's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.records = Counter(
            "streamseg_records_consumed",
            "Kafka records consumed from the events topic.",
            registry=r,
        )
        self.applied = Counter(
            "streamseg_records_applied", "Events applied to users' state.", registry=r
        )
        self.duplicates = Counter(
            "streamseg_records_duplicate",
            "Events skipped as redeliveries (stored partition, offset) or duplicate event ids.",
            registry=r,
        )
        self.ignored = Counter(
            "streamseg_records_ignored", "Valid events of an unmapped type.", registry=r
        )
        self.dead_lettered = Counter(
            "streamseg_records_dead_lettered",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        # Every reason's series from the start, at 0: rate() and increase() see a first burst
        # after a restart only if the series existed before it.
        for reason in get_args(RejectReason):
            self.dead_lettered.labels(reason=reason)
        self.segment_changes = Counter(
            "streamseg_segment_changes", "Segment-change events produced.", registry=r
        )
        self.foreign_states = Counter(
            "streamseg_foreign_states",
            "Users whose state key held a value of the wrong size, replaced by a fresh state.",
            registry=r,
        )
        self.cross_partition_users = Counter(
            "streamseg_cross_partition_users",
            "Users, counted once per batch, whose events came from more than one partition "
            "(records without a key, or partitions added to the topic).",
            registry=r,
        )
        self.fenced_writes = Counter(
            "streamseg_fenced_writes",
            "Batch writes discarded because a partition got a new owner (a rebalance) since the "
            "batch was read; each batch is read and applied again.",
            registry=r,
        )
        self.batches = Counter("streamseg_batches", "Batches processed.", registry=r)
        self.batch_size = Histogram(
            "streamseg_batch_size_records",
            "Records per batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "streamseg_batch_duration_seconds",
            "Wall time to process one batch, decode to offsets stored (seconds).",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "streamseg_produce_to_segment_seconds",
            "From the Kafka record timestamp to the Redis write of its effect (seconds; "
            f"up to {LATENCY_SAMPLES_PER_BATCH} records per batch, evenly spaced).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamseg_consumer_lag_records",
            "Records behind the high watermark, per assigned partition (librdkafka statistics).",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "streamseg_assigned_partitions", "Partitions assigned to this consumer.", registry=r
        )
        self.redis_errors = Counter(
            "streamseg_redis_errors",
            "Redis calls that failed (connection, timeout, loading); each is retried.",
            registry=r,
        )
        self.paused = Gauge(
            "streamseg_consumption_paused",
            "1 while consumption is paused because Redis does not answer.",
            registry=r,
        )
        self.model_version = Gauge(
            "streamseg_model_version", "Version of the model in use (0 = cold start).", registry=r
        )
        self.info = Gauge(
            "streamseg_info",
            "1, with labels naming what this consumer serves: join on instance to tell two "
            "deployments (or a replay) apart on one Prometheus.",
            ["namespace", "group_id", "events_topic"],
            registry=r,
        )
        self.last_poll = Gauge(
            "streamseg_last_poll_timestamp_seconds",
            "Unix time the batch loop last asked Kafka for records (it does while it waits for "
            "Redis too): a stuck loop stops it, while /healthz, answered by another thread, "
            "stays 200.",
            registry=r,
        )
        self.last_batch = Gauge(
            "streamseg_last_batch_timestamp_seconds",
            "Unix time the last batch was written to Redis (0 = none yet).",
            registry=r,
        )
        self.watermark = Gauge(
            "streamseg_watermark_timestamp_seconds",
            "The stream's event clock: the latest event time applied (Unix time; 0 = none "
            "yet). Wall time minus it is the event-time lag of a live stream.",
            registry=r,
        )
        self.segment_size = Gauge(
            "streamseg_segment_users",
            "Users whose record names the segment (from Redis, every few seconds).",
            ["segment_id", "segment"],
            registry=r,
        )
        self.last_poll_at = 0.0  # Unix time of `polled` (0 = not yet): read by /healthz
        #: (topic, partition) of the current assignment: read by the readiness check.
        self.assignment: set[tuple[str, int]] = set()
        self._lag_labels: set[tuple[str, str]] = set()
        self._lags: dict[tuple[str, int], int] = {}
        self.is_paused = False
        self._size_labels: set[tuple[str, str]] = set()

    def serves(self, namespace: str, group_id: str, events_topic: str) -> None:
        """`info` names these (and only these: a namespace switch replaces the series)."""
        self.info.clear()
        self.info.labels(namespace=namespace, group_id=group_id, events_topic=events_topic).set(1)

    def polled(self) -> None:
        """The batch loop asked Kafka for records (or served it while waiting for Redis)."""
        self.last_poll_at = time.time()
        self.last_poll.set(self.last_poll_at)

    def observe_batch(
        self,
        *,
        records: int,
        applied: int,
        duplicates: int,
        ignored: int,
        segment_changes: int,
        reasons: Mapping[str, int],
        foreign_states: int,
        cross_partition_users: int,
        seconds: float,
        timestamps_ms: Iterable[int],
        written_at_ms: float,
    ) -> None:
        """Count one batch; ``timestamps_ms`` are Kafka timestamps of sampled records."""
        self.batches.inc()
        self.records.inc(records)
        self.applied.inc(applied)
        self.duplicates.inc(duplicates)
        self.ignored.inc(ignored)
        self.segment_changes.inc(segment_changes)
        self.foreign_states.inc(foreign_states)
        self.cross_partition_users.inc(cross_partition_users)
        for reason, n in reasons.items():
            self.dead_lettered.labels(reason).inc(n)
        self.batch_size.observe(records)
        self.batch_duration.observe(seconds)
        for ts in timestamps_ms:
            if ts > 0:  # librdkafka reports -1 when the record has no timestamp
                self.latency.observe(max(0.0, (written_at_ms - ts) / 1000.0))

    def set_assignment(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Record the current assignment (called from the rebalance callbacks)."""
        self.assignment = set(partitions)
        self.assigned_partitions.set(len(self.assignment))
        self._set_lags(self._lags)  # drop the lag of partitions no longer ours, now

    def observe_kafka_stats(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``: update consumer lag per assigned partition (not while
        consumption is paused: its figures stand still then, `observe_lags` has them)."""
        if self.is_paused:
            return
        try:
            lags = consumer_lag_from_stats(stats_json)
        except (ValueError, TypeError, AttributeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)
            return
        self._lags = lags
        self._set_lags(lags)

    def set_paused(self, paused: bool) -> None:
        """Consumption paused (a Redis outage) or resumed."""
        self.is_paused = paused
        self.paused.set(1 if paused else 0)

    def observe_lags(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Consumer lag per partition measured directly (while consumption is paused,
        librdkafka's statistics stop moving: paused partitions fetch nothing)."""
        self._lags = dict(lags)
        self._set_lags(self._lags)

    def _set_lags(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Lag gauges of the assigned partitions only: librdkafka's statistics go on listing
        a revoked partition with its last lag, which the new owner reports as well."""
        owned = {(t, p): lag for (t, p), lag in lags.items() if (t, p) in self.assignment}
        current = {(t, str(p)) for (t, p) in owned}
        for stale in self._lag_labels - current:
            self.consumer_lag.remove(*stale)
        for (topic, partition), lag in owned.items():
            self.consumer_lag.labels(topic, str(partition)).set(lag)
        self._lag_labels = current

    def set_segment_sizes(self, sizes: Mapping[int, int], names: Mapping[int, str]) -> None:
        """Replace the segment-size gauges (segment id -> users)."""
        current = {(str(i), names.get(i, "")) for i in sizes}
        for stale in self._size_labels - current:
            self.segment_size.remove(*stale)
        for segment_id, users in sizes.items():
            self.segment_size.labels(str(segment_id), names.get(segment_id, "")).set(users)
        self._size_labels = current


def consumer_lag_from_stats(stats_json: str | bytes) -> dict[tuple[str, int], int]:
    """(topic, partition) -> consumer lag in records, from a librdkafka statistics document.

    The lag behind the *stored* offset (``consumer_lag_stored``): the pipeline stores a
    batch's offsets once its Redis write landed, so this counts records not yet in Redis.
    ``consumer_lag`` counts from the last *commit*, every ``auto.commit.interval.ms`` (5 s):
    at 4,000 events/s it showed ~10,000 records of lag that was not there. A document
    without ``consumer_lag_stored`` (older librdkafka) gives ``consumer_lag``. Only
    partitions with a known lag (≥ 0) are returned; librdkafka reports -1 for partitions
    this member does not consume and uses partition -1 internally.
    """
    stats = orjson.loads(stats_json)
    lags: dict[tuple[str, int], int] = {}
    for topic, tstats in (stats.get("topics") or {}).items():
        for key, pstats in (tstats.get("partitions") or {}).items():
            partition = int(key)
            lag = int(pstats.get("consumer_lag_stored", pstats.get("consumer_lag", -1)))
            if partition >= 0 and lag >= 0:
                lags[(topic, partition)] = lag
    return lags


class TrainerMetrics:
    """The trainer's metrics (``streamseg train``), each on this object's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.updates = Counter(
            "streamseg_trainer_models_published",
            "Model versions published by this trainer.",
            registry=r,
        )
        self.model_version = Gauge(
            "streamseg_trainer_model_version",
            "Latest version this trainer published or resumed.",
            registry=r,
        )
        self.inertia = Gauge(
            "streamseg_trainer_inertia",
            "Inertia (sum of squared scaled distances) of the last fit or update.",
            registry=r,
        )
        self.centre_movement = Gauge(
            "streamseg_trainer_centre_movement",
            "Mean distance between same-id centres of the last two versions (scaled units).",
            registry=r,
        )
        self.users_changed = Gauge(
            "streamseg_trainer_users_changed_ratio",
            "Share of the trainer's rows whose segment differs between the last two versions.",
            registry=r,
        )
        self.refit_check_gain = Gauge(
            "streamseg_trainer_refit_check_gain",
            "Last refit check: share by which a refit's centres (k-means++ restarts or Lloyd "
            "from the current ones) beat the current ones on the newest rows (a refit above "
            "trainer.refit_min_gain).",
            registry=r,
        )
        self.refits = Counter(
            "streamseg_trainer_refits",
            "Refits of scaling and centres on the newest rows, by reason: 'scaling' (the "
            "scaling fitted on fresh rows moved past trainer.rescale_tolerance), 'check' "
            "(the refit check's gain exceeded trainer.refit_min_gain) or 'request' "
            "(model refit, train --once --refit); counted once published.",
            ["reason"],
            registry=r,
        )
        for reason in ("scaling", "check", "request"):
            self.refits.labels(reason=reason)
        self.leader = Gauge(
            "streamseg_trainer_lease_held", "1 while this trainer holds the lease.", registry=r
        )
        self.info = Gauge(
            "streamseg_trainer_info",
            "1, with the namespace this trainer keeps a model for.",
            ["namespace"],
            registry=r,
        )
        self.last_publish = Gauge(
            "streamseg_trainer_last_publish_timestamp_seconds",
            "Unix time this trainer last published a model (0 = not yet).",
            registry=r,
        )
        self.rows_pending = Gauge(
            "streamseg_trainer_rows_pending",
            "Training rows pushed since the model's rows were read: an update waits for "
            "trainer.update_rows of them (a small shop publishes rarely; this says why).",
            registry=r,
        )
        self.step_failures = Counter(
            "streamseg_trainer_step_failures",
            "Training steps that failed (a Redis error, rows that cannot be used); the model in "
            "use stays and the next step tries again.",
            registry=r,
        )
        self.lease_lost = Counter(
            "streamseg_trainer_lease_lost",
            "Times this trainer lost its lease (another took it, or Redis lost it).",
            registry=r,
        )

    def observe_publish(
        self, previous: SegmentModel | None, model: SegmentModel, X: np.ndarray
    ) -> None:
        """Record a published version; ``X`` are the raw feature rows it was trained on."""
        self.updates.inc()
        self.last_publish.set_to_current_time()
        self.model_version.set(model.model_version)
        if model.metrics.inertia is not None:
            self.inertia.set(model.metrics.inertia)
        if previous is not None:
            movement, changed = model_change(previous, model, X)
            self.centre_movement.set(movement)
            self.users_changed.set(changed)


def model_change(
    previous: SegmentModel, current: SegmentModel, X: np.ndarray
) -> tuple[float, float]:
    """(mean centre movement, share of rows changing segment) from ``previous`` to ``current``.

    Centres are matched by segment id and compared in ``current``'s scaled space (previous
    centres are taken back to business units first, so a refit of the scaling compares like
    with like); NaN when no id is shared. The share compares each row's nearest centre under
    both models, without hysteresis.
    """
    prev_raw = previous.to_preprocessor().inverse_transform(np.asarray(previous.centers))
    prev_scaled = current.transform(prev_raw)
    where = {segment_id: i for i, segment_id in enumerate(current.ids)}
    pairs = [(i, where[s]) for i, s in enumerate(previous.ids) if s in where]
    movement = float("nan")
    if pairs:
        old, new = map(list, zip(*pairs, strict=True))
        centres = np.asarray(current.centers)
        movement = float(np.linalg.norm(prev_scaled[old] - centres[new], axis=1).mean())
    changed = float("nan")
    if len(X):
        before, _, _ = previous.assign(X)
        after, _, _ = current.assign(X)
        changed = float(np.mean(before != after))
    return movement, changed
