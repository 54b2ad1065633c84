"""What a pipeline scores with: the namespace's published model, checked between batches
every ``pipeline.model_poll_seconds``, and (when following it) the namespace the live pointer
names, which a promote or a rollback moves.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import redis
from confluent_kafka import KafkaException, TopicPartition

from consumer.announcement import announce_segments
from consumer.exceptions import ServerUnavailableError
from consumer.namespaces import live_namespace
from consumer.redis_keys import KeyLayout
from consumer.redis_outage import OUTAGE_LOG_SECONDS
from consumer.state_store import StateStore

if TYPE_CHECKING:
    from consumer.pipeline import SegmentPipeline

log = logging.getLogger(__name__)


class ModelWatch:
    """The model checks of one `SegmentPipeline`, and its move to the namespace the live
    pointer names (seek, switch, watermark, re-score pass, announcement)."""

    def __init__(self, pipeline: SegmentPipeline) -> None:
        self.pipeline = pipeline
        self.checked_at = 0.0  # monotonic time of the last check; 0 = not checked yet
        self._failed_said_at = -np.inf  # when a failed check was last logged
        self._rejected: tuple[int | None, str] | None = None  # (version, error) last logged

    def refresh(self, *, force: bool = False) -> None:
        """Load a newly published model, at most every ``model_poll_seconds``; when following
        the live pointer, switch namespace first if a promote moved it.

        A Redis error keeps the model in use (logged once per `OUTAGE_LOG_SECONDS`); so does
        a published model that does not load (logged once per version and error).
        """
        pipeline = self.pipeline
        now = time.monotonic()
        if not force and now - self.checked_at < pipeline.settings.pipeline.model_poll_seconds:
            return
        self.checked_at = now
        if pipeline.settings.pipeline.follow_live_namespace:
            try:
                self.follow_live_namespace()
            except redis.RedisError as exc:  # nothing changed: try again at the next poll
                log.warning("cannot check the live pointer: %s", exc)
                return
        current = pipeline.model
        version: int | None = None  # unknown until read: the key itself may be unreadable
        try:
            version = pipeline.models.current_version()
            if version is None or (current is not None and version == current.model_version):
                return
            loaded = pipeline.models.load_current()
        except redis.RedisError as exc:
            if now - self._failed_said_at >= OUTAGE_LOG_SECONDS:
                self._failed_said_at = now
                log.warning("cannot check for a new model: %s", exc)
            return
        except Exception as exc:  # a bad model must not stop the stream; keep the old one
            rejected = (version, str(exc))
            if rejected != self._rejected:
                self._rejected = rejected
                log.error("rejected published model: %s", exc)
            return
        if loaded is not None:
            log.info(
                "model switch: %s -> %s",
                current.model_version if current else None,
                loaded.model_version,
            )
            pipeline.model = loaded
            pipeline.metrics.model_version.set(loaded.model_version)
            pipeline.rescore.check_retired_segments(loaded)
            pipeline.rescore.check_renamed_segments(current, loaded)

    def follow_live_namespace(self) -> None:
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
        pipeline = self.pipeline
        target = live_namespace(pipeline.redis, pipeline.settings.redis.namespace, pipeline.pointer)
        if target == pipeline.keys.namespace:
            return
        keys = KeyLayout(target)
        owned = pipeline.consumer.assignment() if pipeline.consumer is not None else []
        target_store = StateStore(pipeline.redis, keys)
        applied = target_store.read_applied_offsets([(tp.topic, tp.partition) for tp in owned])
        watermark = target_store.read_watermark()
        owned_ids = frozenset(tp.partition for tp in owned)
        markers = pipeline.rescore.markers(owned_ids, keys)

        previous = pipeline.keys.namespace
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
            assert pipeline.consumer is not None
            try:
                pipeline.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                raise ServerUnavailableError(
                    f"cannot seek {tp.topic}[{tp.partition}] to {offset} for namespace "
                    f"{target}: {exc}; restart to resume from its applied offsets"
                ) from exc
        pipeline.switch_namespace(target)
        # The target's own time: its users were scored at its watermark (a replay re-scores
        # everyone there), and a catch-up must not re-score them at a later one first.
        pipeline.watermark = watermark if watermark is not None else -np.inf
        lateness_ms = pipeline.settings.pipeline.allowed_lateness_seconds * 1000.0
        scored_at = markers if markers is not None else pipeline.watermark - lateness_ms
        pipeline.rescore.moved_namespace(scored_at, owned_ids)
        self.checked_at = 0.0
        pipeline.model = None
        log.info("live namespace moved: now writing %s (was %s)", target, previous)
        announced = announce_segments(pipeline, KeyLayout(previous), owned_ids)
        log.info(
            "announced the segments of %d users of %s on the segments topic", announced, target
        )
