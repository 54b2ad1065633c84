"""The re-score pass: users who stop acting still move between segments.

Every ``pipeline.rescore_interval_seconds`` of event time (and at most once per
``pipeline.rescore_min_wall_seconds`` of wall-clock time), a pipeline scores the users of its
partitions again at the watermark (latest event time applied less
``pipeline.allowed_lateness_seconds``), so decay and recency can move them into "lapsed" or
"at risk" segments. A model that lacks a segment users hold, or names an operator changed
(`check_renamed_segments`), makes a pass due at once. A pass
is a SCAN over the namespace's state keys, one chunk per loop of the pipeline between batches,
paced so that it never holds the records behind it. Written: users whose segment changed or
whose record names an older model.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import redis

from consumer.model_store import RENAMED_AT_METRIC
from consumer.redis_keys import KeyLayout
from consumer.segment_names import read_chosen_names
from consumer.state_store import BatchWrite
from consumer.training_rows import keyed_rows
from model.features import COL, derive_features

if TYPE_CHECKING:
    from consumer.pipeline import SegmentPipeline
    from model.model_format import SegmentModel

log = logging.getLogger(__name__)

#: A chunk that took t seconds is followed by the next one no sooner than this * t later: a
#: pass takes at most a fifth of the loop's time.
_PACE = 5.0
#: State keys one SCAN chunk asks for.
_CHUNK_KEYS = 2000


class IdleRescore:
    """The re-score pass of one `SegmentPipeline` (its model, store, partitions and clock)."""

    def __init__(self, pipeline: SegmentPipeline) -> None:
        self.pipeline = pipeline
        self.cursor: int | None = None  # SCAN cursor of the pass in progress
        self.scoring_at = -np.inf  # watermark (epoch ms) the pass in progress scores at
        self.scored_at = -np.inf  # watermark of the last finished pass
        self.started_wall = -np.inf  # monotonic time the last pass started
        self.next_chunk_at = 0.0  # monotonic time the next chunk of a pass may run
        self.partitions: frozenset[int] = frozenset()  # whose markers were read
        self.with_samples = False  # the pass in progress pushes idle users' rows
        #: Users hold segments the model lacks, or a rename changed a name: a pass is due now.
        self.due_now = False
        self.retired_seen: set[int] = set()  # retired segment ids a pass was begun for

    def markers(self, partitions: frozenset[int], keys: KeyLayout) -> float | None:
        """Watermark up to which every user of ``partitions`` was last re-scored: the oldest
        of the partitions' markers (members ``rescored:<partition>`` of ``<ns>:watermark``,
        written when a pass ends, so a restart does not begin with a whole pass); None when
        a partition has none."""
        if not partitions:
            return None
        members = [f"rescored:{p}" for p in sorted(partitions)]
        scores = self.pipeline.redis.zmscore(keys.watermark, members)
        if any(score is None for score in scores):
            return None
        return float(min(score for score in scores if score is not None))

    def moved_namespace(self, scored_at: float, partitions: frozenset[int]) -> None:
        """Forget the pass of the namespace left: the one entered was scored at ``scored_at``
        for ``partitions``."""
        self.cursor = None
        self.scored_at, self.partitions = scored_at, partitions
        self.due_now, self.retired_seen = False, set()

    def check_retired_segments(self, model: SegmentModel) -> None:
        """Make a pass due now when users hold segments ``model`` does not have.

        A centre that matched no previous one got a new id, or a rollback or an import brought
        other segments: the idle users of a dropped segment would keep a record naming it until
        the periodic pass, up to ``rescore_interval_seconds`` of event time later. The segment
        sizes hash is namespace-wide, so each dropped id starts one pass per process, not one
        per model version while another consumer's users still hold it.
        """
        try:
            sizes = self.pipeline.store.read_segment_sizes()
        except redis.RedisError as exc:  # the periodic pass still comes
            log.warning("cannot read the segment sizes: %s", exc)
            return
        self.retired_seen -= set(model.ids)  # back (a rollback): a later drop counts again
        retired = {s for s, n in sizes.items() if n > 0 and s not in model.ids}
        if retired - self.retired_seen:
            log.info(
                "%d users hold segments %s that model v%d does not have: %s",
                sum(sizes[s] for s in retired),
                sorted(retired),
                model.model_version,
                self._when_rescored(),
            )
            self.due_now = True
            self.retired_seen |= retired

    def check_renamed_segments(self, before: SegmentModel | None, model: SegmentModel) -> None:
        """Make a pass due now when names an operator changed reach this consumer: idle
        users' records would name the old ones until the periodic pass, a day of event time
        later or, on a quiet stream, never. That is: a version of ``model rename`` (its
        mark), also as the first model of a consumer that was down during the rename; a
        rollback to other names; or a trainer's version that carries a chosen name this
        consumer had not seen (the rename's own version came and went within one poll).

        Not every relabelled version: the trainer's may move a tier or a name at any update,
        and a pass of every user per update would cost a large shop a fifth of its
        consumers' time; the periodic pass brings those.
        """
        renamed = RENAMED_AT_METRIC in model.metrics.extra
        if before is None:
            changed = sorted(model.ids) if renamed else []
        else:
            old = dict(zip(before.ids, before.names, strict=True))
            changed = sorted(
                i for i, n in zip(model.ids, model.names, strict=True) if i in old and old[i] != n
            )
            if changed and not renamed and model.model_version > before.model_version:
                try:
                    chosen = read_chosen_names(self.pipeline.redis, self.pipeline.keys)
                except redis.RedisError as exc:  # the periodic pass still comes
                    log.warning("cannot read the chosen segment names: %s", exc)
                    return
                changed = [i for i in changed if i in chosen]
        if changed:
            log.info(
                "segments %s have names chosen with model rename in model v%d: %s",
                changed,
                model.model_version,
                self._when_rescored(),
            )
            self.due_now = True

    def _when_rescored(self) -> str:
        """When a pass made due now will reach the users, in the words of the log."""
        settings = self.pipeline.settings.pipeline
        if not settings.rescore_interval_seconds:
            return (
                "they move at their next event (re-score passes are off: "
                "pipeline.rescore_interval_seconds = 0)"
            )
        if self.cursor is not None:
            return "re-scoring them in a pass after the one in progress"
        wait = settings.rescore_min_wall_seconds - (time.monotonic() - self.started_wall)
        if wait <= 0:
            return "re-scoring them now"
        return (
            f"re-scoring them in {wait:.0f} s (passes start at most once per "
            f"pipeline.rescore_min_wall_seconds = {settings.rescore_min_wall_seconds:g} s)"
        )

    def step(self) -> None:
        """One chunk of a pass, paced to at most a fifth of the loop's time: chunks run back
        to back held the records behind them, and the backlog of one had no time to drain
        before the next."""
        started = time.monotonic()
        if started < self.next_chunk_at:
            return
        try:
            self.pipeline.until_redis_answers(self._chunk)
        except redis.WatchError:  # a partition got a new owner meanwhile: the chunk is redone
            self.pipeline.metrics.fenced_writes.inc()
        took = time.monotonic() - started
        self.next_chunk_at = started + _PACE * took

    def _chunk(self) -> None:
        """Begin a pass when one is due, and advance the pass in progress by one SCAN chunk."""
        pipeline = self.pipeline
        settings = pipeline.settings.pipeline
        interval_ms = settings.rescore_interval_seconds * 1000.0
        if not interval_ms or pipeline.model is None or pipeline.consumer is None:
            return
        watermark = pipeline.watermark - settings.allowed_lateness_seconds * 1000.0
        if not np.isfinite(watermark):
            return
        owned = frozenset(p.partition for p in pipeline.consumer.assignment())
        if not owned:
            return  # nothing assigned yet (the first loop runs before the first poll)
        if self.cursor is not None and owned != self.partitions:
            # Partitions came or went mid-pass: the chunks scanned so far skipped the users
            # of those that came. Begin again, from the markers of what is owned now.
            self.cursor, self.started_wall = None, -np.inf
        if self.cursor is None:
            if owned != self.partitions:  # other partitions now: read their markers
                marker = self.markers(owned, pipeline.keys)
                self.scored_at = -np.inf if marker is None else marker
                self.partitions = owned
            if watermark - self.scored_at < interval_ms and not self.due_now:
                return
            # A replay moves event time by days per second: bound passes by the wall clock too.
            wall = time.monotonic()
            if wall - self.started_wall < settings.rescore_min_wall_seconds:
                return
            # The period's first pass also gives the trainer the rows of the users idle in it.
            period = pipeline.training_period
            self.with_samples = bool(period(watermark) > period(self.scored_at))
            self.cursor, self.scoring_at, self.started_wall = 0, watermark, wall
            self.due_now = False
        cursor, found = pipeline.store.scan_state_keys(self.cursor, count=_CHUNK_KEYS)
        self._score(found, owned)
        self.cursor = cursor  # only now: a failed chunk is scanned again
        if cursor == 0:
            self.cursor, self.scored_at = None, self.scoring_at
            pipeline.redis.zadd(
                pipeline.keys.watermark,
                {f"rescored:{p}": self.scoring_at for p in owned},
                gt=True,
            )

    def _score(self, found: list[bytes], owned: frozenset[int]) -> None:
        """Score the users of state keys ``found`` that belong to ``owned`` partitions at the
        pass's watermark; write those whose segment or model version changed."""
        pipeline = self.pipeline
        assert pipeline.model is not None
        users = [pipeline.keys.user_from_state_key(k.decode()) for k in found]
        if not users or not owned:
            return
        # Fenced as a batch is: a consumer stalled past a rebalance must not write a chunk
        # over what the partitions' new owners wrote meanwhile.
        states, _ = pipeline.fences.read(users, [pipeline.keys.state(u) for u in users], owned)
        mine = np.isin(states[:, COL["partition"]], list(owned)) & ~np.isnan(
            states[:, COL["last_ts_ms"]]
        )
        if not mine.any():
            pipeline.store.release_watch()
            return
        users = [u for u, m in zip(users, mine, strict=True) if m]
        states = states[mine]
        before = states[:, COL["segment_id"]].copy()
        # A record written by an older model may carry that model's segment name and tier:
        # rewrite it too, so every record names the model in use after one pass.
        outdated = states[:, COL["model_version"]] != pipeline.model.model_version
        features = derive_features(states, self.scoring_at, pipeline.settings.features)
        records, size_changes, changes = pipeline.assign_segments(users, states, features)
        moved = states[:, COL["segment_id"]] != before
        changed = np.flatnonzero(moved | outdated)
        # The model assigns idle users at the pass's time: the trainer must see them there too.
        rows = None
        if self.with_samples and pipeline.wants_training_rows:
            period = pipeline.training_period
            idle = period(states[:, COL["last_ts_ms"]]) < period(self.scoring_at)
            rows = keyed_rows(features[idle], [users[i] for i in np.flatnonzero(idle)])
        if not len(changed) and (rows is None or not len(rows)):
            pipeline.store.release_watch()
            return
        pipeline.send_changes(changes)
        pipeline.store.write(
            BatchWrite(
                user_ids=[users[i] for i in changed],
                states=states[changed],
                segment_records=[records[i] for i in changed],
                training_rows=rows,
                size_changes=size_changes,
                keep_ttl=True,  # the users did nothing: their expiry runs on
                counters={
                    "rescored_changes": int(moved.sum()),
                    "segment_changes": len(changes),
                    "training_rows": 0 if rows is None else len(rows),
                },
            )
        )
        pipeline.count_changes(len(changes))
