"""The trainer process: bootstraps the model, keeps it fresh with partial_fit, publishes it.

Input: the feature vectors the pipeline pushes to ``<ns>:training-samples``: about one row per
user per training period (``pipeline.training_period_seconds``, a day of event time): at the
user's first event of a period, or at the re-score time (watermark less the allowed lateness)
from the period's first re-score pass for
users idle in it. The trainer never reads users' state, so it does not slow the pipeline. Rows
name their user (`consumer.training_rows`): whatever it reads, the trainer fits each user once,
at their newest row, so a consumer catching up on a backlog (idle users' rows come less often
than once a period) does not over-weight the active users.

1. Bootstrap: once ``trainer.bootstrap_rows`` rows are buffered, fit the preprocessing and
   k-means++ (10 restarts, as the offline reference) on each user's newest row (of at least
   max(10 x n_clusters, 100) users); label the segments (names operators chose with
   ``model rename`` win, `consumer.segment_names`); publish version 1 (or the next).
2. Update: every ``trainer.update_interval_seconds``, if at least ``trainer.update_rows`` new
   rows arrived, ``partial_fit`` on them (with forgetting: old weight halves every
   ``trainer.half_life_batches`` updates, or every ``trainer.half_life_periods`` training
   periods when that is set), match ids, relabel, publish.
3. Refit: when the scaling fitted on the fresh rows would differ from the model's (a centre
   moved by more than ``trainer.rescale_tolerance`` scale units or a scale changed by more
   than the factor 1 + that; features grow as history accumulates), refit scaling and
   centres on the newest rows of ``trainer.refit_periods`` periods (rows = users x periods,
   the users counted in the segment sizes); ids are kept
   by matching. Older rows show users as they were, and fitting them pulled centres away
   from the population the model assigns (6x the offline inertia in the demo).
4. Refit check: every ``trainer.refit_check_updates`` updates, fit the newest refit rows (at
   most 20,000) as a refit would: k-means++ with 10 restarts, and Lloyd from the current
   centres. Mini-batch steps never relocate a centre and remember a half-life of updates or
   periods, so when the users change faster than that (a stream's first weeks hold only new
   users; a replay compresses months) the centres can trail them or stay in a basin that is no
   longer the best. When the better fit's inertia is lower than the current centres' by more
   than ``trainer.refit_min_gain`` (a share), refit as in 3. With behaviour unchanged the two
   agree and nothing happens, so ids stay stable.

Exactly one trainer is active per namespace: it holds a lease in Redis that it renews; a
second trainer waits and takes over when the lease expires. A trainer that starts (or takes
over) counts the rows pushed since the current model's rows were read as fresh: the model
carries the ``training_rows`` counter of that moment.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import time
from types import FrameType
from typing import Literal

import numpy as np
import redis

from consumer import refit_request
from consumer.exceptions import ConfigError, ModelReplacedError
from consumer.health import metrics_port, start_metrics_server
from consumer.metrics import TrainerMetrics
from consumer.model_store import RENAMED_AT_METRIC, ModelStore
from consumer.namespaces import live_namespace
from consumer.redis_keys import KeyLayout
from consumer.segment_names import read_chosen_names
from consumer.settings import (
    DEFAULT_METRICS_PORTS,
    REDIS_ERRORS,
    RedisClient,
    Settings,
    TrainerSettings,
)
from consumer.state_store import StateStore
from consumer.trainer_lease import TrainerLease
from consumer.training_rows import newest_row_per_user
from model.exceptions import StreamsegError
from model.features import FEATURE_NAMES, LOG_FEATURES
from model.labels import label_segments, with_chosen_names
from model.model_format import SegmentModel
from model.preprocessing import Preprocessor, remap_centers
from model.quality import inertia, offline_inertia, polished_inertia
from model.segmenter import StreamingSegmenter

log = logging.getLogger(__name__)

#: What a training step may raise without ending the trainer (Redis, or unusable rows).
_STEP_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, StreamsegError)

#: The refit check fits at most this many newest rows.
_REFIT_CHECK_ROWS = 20_000
#: k-means++ restarts of the bootstrap, of refits and of the refit check: as many as the
#: offline reference. With 3 in the check, 5 of 38 live runs kept a model 5-14% worse than
#: offline k-means because the few restarts found the same poor basin.
_KMEANS_INITS = 10
#: Key in a published model's ``metrics.extra``: the namespace's ``training_rows`` counter
#: when the model's rows were read, where a resuming trainer counts fresh rows from.
ROWS_COUNTER_METRIC = "training_rows_counter"


class Trainer:
    """Turns buffered feature vectors into published model versions."""

    def __init__(
        self,
        client: RedisClient,
        keys: KeyLayout,
        config: TrainerSettings,
        metrics: TrainerMetrics | None = None,
        lease: TrainerLease | None = None,
        published_up_to: int = 0,
    ) -> None:
        self.client = client
        #: The highest model version this process has published or continued from: no later
        #: publish takes a lower or equal number, even after Redis lost the history.
        self.published_up_to = published_up_to
        #: When given, every publish checks that this lease is still ours.
        self.lease = lease
        self.keys = keys
        self.config = config
        self.metrics = metrics or TrainerMetrics()
        self.models = ModelStore(client, keys, history_versions=config.model_history_versions)
        self.published: SegmentModel | None = None  # the last version published or resumed
        self.preprocessor: Preprocessor | None = None
        self.segmenter: StreamingSegmenter | None = None
        self._rows_seen = 0
        #: While waiting to bootstrap: rows pushed at the last look at the buffer, and how many
        #: more must be pushed before it can hold what was missing then.
        self._last_look: tuple[int, int] | None = None
        #: Why the last `refit_now` published nothing (None: it did, or none ran).
        self._refit_not_done: str | None = None

    def resume(self) -> None:
        """Continue from the published model, if any (after a restart or a takeover).

        Rows pushed since that model's rows were read are fresh: the model carries the
        ``training_rows`` counter as it was then (`ROWS_COUNTER_METRIC`), so a restarted
        trainer, or ``train --once``, updates on them instead of waiting for as many more.
        """
        model = self.models.load_current()
        pushed = self.rows_pushed()
        self._rows_seen = pushed
        if model is not None:
            self._continue_from(model)
            then = model.metrics.extra.get(ROWS_COUNTER_METRIC)
            # A counter below it was reset (or the model was imported from elsewhere).
            if then is not None and 0 <= then <= pushed:
                self._rows_seen = int(then)

    def _continue_from(self, model: SegmentModel) -> None:
        self.preprocessor = model.to_preprocessor()
        # This trainer's restarts and seed, not those of whoever published the model.
        self.segmenter = model.to_segmenter(n_init=_KMEANS_INITS, random_state=self.config.seed)
        # After a rollback the model's next_id is behind ids newer versions gave: a segment
        # made now must not take one of them (nor a name an operator chose for it).
        newest = self.models.load_kept(self.models.versions(newest=1))
        self.segmenter.next_id_ = max([self.segmenter.next_id_, *(m.next_id for m in newest)])
        self.published = model
        self.published_up_to = max(self.published_up_to, model.model_version)
        self.metrics.model_version.set(model.model_version)
        log.info("continuing from model version %d", model.model_version)

    def _follow_the_current_model(self) -> None:
        """Continue from the current model when it is not the one this trainer published:
        ``streamseg model rollback``, ``model import`` or ``model rename`` made it current,
        and an update of this trainer's own would undo that at its next publish."""
        current = self.models.current_version()
        mine = self.published.model_version if self.published is not None else None
        if current is None or current == mine:
            return
        model = self.models.load_current()
        if model is None:
            return
        renamed = RENAMED_AT_METRIC in model.metrics.extra
        if renamed and self.published is not None and model.centers == self.published.centers:
            # This trainer's own version with an operator's names: routine, not a warning.
            log.info(
                "model v%d is current: v%s with names chosen by model rename",
                model.model_version,
                mine,
            )
        else:
            log.warning(
                "model v%d is current, not v%s of this trainer (a rollback, an import or a rename "
                "of another version)",
                model.model_version,
                mine,
            )
        self._continue_from(model)

    def rows_pushed(self) -> int:
        """Training rows the pipeline has pushed so far (the namespace's counter)."""
        return StateStore(self.client, self.keys).read_counters().get("training_rows", 0)

    def missing(self) -> str:
        """What the next bootstrap, update or refit still waits for, in words (for ``--once``)."""
        if self._refit_not_done is not None:
            return self._refit_not_done
        if self.segmenter is None:
            return (
                f"a bootstrap needs trainer.bootstrap_rows={self.config.bootstrap_rows:,} rows "
                f"of at least {self._new_segmenter().fit_rows_needed():,} users; "
                f"{self.rows_pushed():,} rows pushed so far"
            )
        fresh = self.rows_pushed() - self._rows_seen
        return (
            f"an update needs trainer.update_rows={self.config.update_rows:,} new rows; "
            f"{fresh:,} since v{self.segmenter.version_}"
        )

    def buffered_rows(self, max_rows: int | None = None) -> np.ndarray:
        """Each user's newest row among the newest ``max_rows`` buffered rows (all when
        None), newest first: the users as they are now (`consumer.training_rows`)."""
        return newest_row_per_user(self._raw_rows(max_rows), len(FEATURE_NAMES))

    def _raw_rows(self, max_rows: int | None = None) -> list[bytes]:
        """The newest ``max_rows`` elements of the buffer (all when None), newest first."""
        if max_rows is not None and max_rows <= 0:
            return []
        end = -1 if max_rows is None else max_rows - 1
        return list(self.client.lrange(self.keys.training_samples, 0, end))

    def step(self) -> SegmentModel | None:
        """Bootstrap or update once if there is enough data; returns the published model."""
        self._follow_the_current_model()
        if self.segmenter is None or self.preprocessor is None:
            return self._bootstrap()
        if refit_request.is_pending(self.client, self.keys):
            log.info("a refit was requested (streamseg model refit): refitting now")
            return self.refit_now()
        pushed = self.rows_pushed()
        fresh = pushed - self._rows_seen
        self.metrics.rows_pending.set(max(fresh, 0))
        if fresh < self.config.update_rows:
            return None
        self.metrics.rows_pending.set(0)
        X = self.buffered_rows(max_rows=fresh)
        self._rows_seen = pushed
        if len(X) == 0:
            return None
        if self.preprocessor.stale_for(X, self.config.rescale_tolerance):
            return self._refit("scaling")
        Z = self.preprocessor.transform(X)
        self._set_forgetting(rows_fitted=len(X), rows_pushed=fresh)
        self.segmenter.partial_fit(Z)
        every = self.config.refit_check_updates
        if every and self.segmenter.n_updates_ % every == 0:
            checked, whole_window = self.refit_check_rows()
            if self._refit_pays_off(checked):
                # Read once when the check's rows are the whole refit window.
                return self._refit("check", checked if whole_window else None)
        return self._publish(X, Z)

    def refit_now(self) -> SegmentModel | None:
        """Refit the scaling and the centres on the newest rows now, as a scaling refit does,
        keeping ids (a bootstrap while nothing is published): ``train --once --refit``, and
        a step that finds a request of ``model refit``, which it answers. None when the
        buffer holds rows of too few users, or another version became current meanwhile
        (`missing` says which)."""
        self._follow_the_current_model()
        if self.segmenter is None or self.preprocessor is None:
            return self._bootstrap()
        self._refit_not_done = None
        # The requests made so far: this refit answers them (later ones wait for the next).
        covers = refit_request.newest_request(self.client, self.keys)
        pushed = self.rows_pushed()
        X = self.buffered_rows(max_rows=self._refit_rows())
        if len(X) < self.segmenter.fit_rows_needed():  # a small shop: each user's newest
            X = self.buffered_rows()
        if len(X) < self.segmenter.fit_rows_needed():
            self._refit_not_done = (
                f"a refit needs rows of at least {self.segmenter.fit_rows_needed():,} users; "
                f"the training buffer holds rows of {len(X):,}"
            )
            log.warning("refit not done: %s", self._refit_not_done)
            if covers:  # it would fail the same way at the next step
                refit_request.answer(self.client, self.keys, covers, error=self._refit_not_done)
            return None
        self._rows_seen = pushed
        model = self._refit("request", X)
        if model is None:
            # The request stays: the next step refits from the version now current.
            self._refit_not_done = "another version became current during the refit"
        elif covers:
            refit_request.answer(self.client, self.keys, covers, version=model.model_version)
        return model

    def refit_check_rows(self) -> tuple[np.ndarray, bool]:
        """The rows the refit check fits: each user's newest among the newest rows of the
        refit window (`_refit_rows`), at most 20,000 read; and whether that was all of it."""
        window = self._refit_rows()
        rows = self.buffered_rows(max_rows=min(window, _REFIT_CHECK_ROWS))
        return rows, window <= _REFIT_CHECK_ROWS

    def _refit_pays_off(self, X: np.ndarray) -> bool:
        """Would fresh k-means++ centres fit the rows ``X`` (the newest of the refit window)
        better than the current ones by more than ``refit_min_gain``?"""
        assert self.segmenter is not None and self.preprocessor is not None
        Z = self.preprocessor.transform(X)
        K = self.segmenter.n_clusters
        if len(Z) < 10 * K:
            return False
        centers = self.segmenter.cluster_centers_
        current = inertia(Z, centers)
        # What a refit would reach: the better of fresh restarts and Lloyd from the current
        # centres (a refit tries both, `StreamingSegmenter.fit`).
        fresh = min(
            offline_inertia(Z, K, n_init=_KMEANS_INITS, random_state=self.config.seed),
            polished_inertia(Z, centers),
        )
        gain = 1.0 - fresh / current if current > 0 else 0.0
        self.metrics.refit_check_gain.set(gain)
        if gain <= self.config.refit_min_gain:
            return False
        log.info(
            "fresh centres fit the newest %d rows %.0f%% better (inertia %.4g, now %.4g): refit",
            len(Z),
            100 * gain,
            fresh,
            current,
        )
        return True

    def _refit(
        self, reason: Literal["scaling", "check", "request"], X: np.ndarray | None = None
    ) -> SegmentModel | None:
        """Refit the scaling and the centres on the newest rows (`_refit_rows`; read here
        unless the caller has them in ``X``), keeping ids; ``reason`` labels the metric.

        The old centres are first re-expressed in the new scaled space, so the Hungarian
        matching of the refit compares like with like.
        """
        assert self.segmenter is not None and self.preprocessor is not None
        if X is None:
            X = self.buffered_rows(max_rows=self._refit_rows())
        if len(X) < self.segmenter.fit_rows_needed():  # a small shop: each user's newest
            X = self.buffered_rows()
        fresh = Preprocessor(FEATURE_NAMES, log_columns=LOG_FEATURES).fit(X)
        moved = remap_centers(self.segmenter.cluster_centers_, self.preprocessor, fresh)
        self.segmenter.replace_centers(moved)
        self.preprocessor = fresh
        Z = fresh.transform(X)
        self.segmenter.fit(Z)
        log.info("refitted scaling and centres on %d rows (%s)", len(X), reason)
        model = self._publish(X, Z)
        if model is not None:  # a refit whose publish was refused changed nothing
            self.metrics.refits.labels(reason=reason).inc()
        return model

    def _refit_rows(self) -> int:
        """Rows of ``refit_periods`` periods: about one per user and period."""
        return max(self.config.bootstrap_rows, round(self.config.refit_periods * self._users()))

    def _users(self) -> int:
        """Users counted in the segment sizes (a transient negative count is ignored)."""
        sizes = StateStore(self.client, self.keys).read_segment_sizes()
        return sum(max(0, n) for n in sizes.values())

    def _set_forgetting(self, *, rows_fitted: int, rows_pushed: int) -> None:
        """Apply the configured half-life to the next update of ``rows_fitted`` rows (each
        user's newest of the ``rows_pushed`` fresh ones); the settings win over what a
        resumed model carries.

        With ``half_life_periods`` the pipeline pushes about one row per user and period, so
        old weight halves every ``users x half_life_periods`` rows *pushed* (Spark's points
        unit): an update of three periods' rows decays by three periods, although it fits
        each user once. The segmenter decays by the rows it fits, so its half-life in points
        is scaled by ``rows_fitted / rows_pushed``. Before the pipeline has counted any user,
        the users fitted stand for them.
        """
        assert self.segmenter is not None
        periods = self.config.half_life_periods
        if periods is None:
            self.segmenter.set_params(
                half_life_batches=self.config.half_life_batches, half_life_points=None
            )
        else:
            users = self._users() or rows_fitted
            per_row_fitted = rows_fitted / max(rows_pushed, rows_fitted)
            self.segmenter.set_params(
                half_life_batches=None, half_life_points=periods * users * per_row_fitted
            )

    def _new_segmenter(self) -> StreamingSegmenter:
        return StreamingSegmenter(
            n_clusters=self.config.n_clusters,
            half_life_batches=(
                self.config.half_life_batches if self.config.half_life_periods is None else None
            ),
            n_init=_KMEANS_INITS,
            new_id_distance=self.config.new_id_distance,
            random_state=self.config.seed,
        )

    def _bootstrap(self) -> SegmentModel | None:
        # Rows, not users: a shop with fewer users than bootstrap_rows must still bootstrap,
        # on a few periods of rows of each (about one per user and period).
        pushed = self.rows_pushed()
        if self._last_look is not None:
            then, missing = self._last_look
            if then <= pushed < then + missing:  # (a counter below `then` was reset: look)
                return None
        raw = self._raw_rows()  # LRANGE, not LLEN: the documented ACL has no LLEN
        if len(raw) < self.config.bootstrap_rows:
            self._last_look = (pushed, self.config.bootstrap_rows - len(raw))
            log.info(
                "waiting for data: %d of %d rows buffered", len(raw), self.config.bootstrap_rows
            )
            return None
        segmenter = self._new_segmenter()
        X = newest_row_per_user(raw, len(FEATURE_NAMES))
        if len(X) < segmenter.fit_rows_needed():
            # Each missing user pushes at least a row; a growing buffer of a few users' repeats
            # is read again after a tenth more rows, not every step.
            self._last_look = (pushed, max(segmenter.fit_rows_needed() - len(X), len(raw) // 10))
            log.info(
                "waiting for data: rows of %d users buffered, %d needed",
                len(X),
                segmenter.fit_rows_needed(),
            )
            return None
        self._rows_seen = pushed  # read before the buffer: rows pushed since count as fresh
        self.preprocessor = Preprocessor(FEATURE_NAMES, log_columns=LOG_FEATURES).fit(X)
        Z = self.preprocessor.transform(X)
        self.segmenter = segmenter.fit(Z)
        return self._publish(X, Z)

    def _publish(self, X: np.ndarray, Z: np.ndarray) -> SegmentModel | None:
        """Label and publish the fitted model; None when a rollback, an import or a rename made
        another version current meanwhile (the next step continues from that one)."""
        assert self.segmenter is not None and self.preprocessor is not None
        positions = self.segmenter.predict(Z)
        centers = self.preprocessor.inverse_transform(self.segmenter.cluster_centers_)
        before = (
            dict(zip(self.published.ids, self.published.names, strict=True))
            if self.published
            else {}
        )
        labels = label_segments(
            centers,
            X,
            positions,
            FEATURE_NAMES,
            previous_names=[before.get(i) for i in self.segmenter.ids_.tolist()],
        )
        chosen = read_chosen_names(self.client, self.keys)  # `streamseg model rename`
        if chosen:
            names = with_chosen_names(labels.names, self.segmenter.ids_.tolist(), chosen)
            labels = dataclasses.replace(labels, names=names)
        model = SegmentModel.from_fitted(
            self.segmenter,
            self.preprocessor,
            labels,
            n_rows=len(X),
            extra_metrics={ROWS_COUNTER_METRIC: float(self._rows_seen)},
        )
        lease = self.lease
        try:
            model = self.models.publish_next(
                model,
                lease_key=lease.key if lease else None,
                token=lease.token if lease else None,
                base_version=self.published.model_version if self.published else 0,
                min_version=self.published_up_to + 1,
            )
        except ModelReplacedError as exc:
            log.warning("not published: %s", exc)
            return None
        self.segmenter.version_ = model.model_version
        self.metrics.observe_publish(self.published, model, X)
        self.published = model
        self.published_up_to = max(self.published_up_to, model.model_version)
        if len(self.segmenter.dying_clusters_):
            log.warning("dying segments (tiny decayed count): %s", self.segmenter.dying_clusters_)
        return model


#: How often a trainer looks at the live pointer (`LivePointerWatch`).
POINTER_CHECK_SECONDS = 30.0


class LivePointerWatch:
    """Says in the log when the live pointer names another namespace than the trainer's.

    The trainer does not follow the pointer: after a promote it keeps training a namespace
    that lookups no longer read, and nothing said so. One warning per namespace the pointer
    names (and a line when it names the trainer's again); a Redis user that may not read the
    pointer (the least-privilege rule) is not told.
    """

    def __init__(
        self, client: RedisClient, namespace: str, every_seconds: float = POINTER_CHECK_SECONDS
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.every_seconds = every_seconds
        self.said = namespace  # the namespace last reported live
        self._due_at = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if now < self._due_at:
            return
        self._due_at = now + self.every_seconds
        try:
            live = live_namespace(self.client, self.namespace)
        except redis.exceptions.NoPermissionError:
            return
        if live == self.said:
            return
        self.said = live
        if live == self.namespace:
            log.info("the live pointer names this trainer's namespace %s again", live)
        else:
            log.warning(
                "the live pointer names namespace %s (a promote): lookups read its segments "
                "while this trainer trains %s; start a trainer with --namespace %s (or "
                "redis.namespace) and stop this one",
                live,
                self.namespace,
                live,
            )


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg train``: hold the lease, bootstrap, update and publish until stopped."""
    if args.refit and not args.once:
        raise ConfigError("--refit goes with --once (a running trainer refits by itself)")
    client = settings.redis.connect()
    client.ping()  # no answer at start-up: one line and exit status 2 (cli), as for run
    keys = KeyLayout(settings.redis.namespace)
    config = settings.trainer
    lease = TrainerLease(client, keys.trainer_lease, config.lease_seconds)
    stopping = False
    metrics = TrainerMetrics()
    metrics.info.labels(namespace=keys.namespace).set(1)
    probe = settings.redis.connect(timeout_seconds=1.0)  # a probe answers within its timeout
    checks = {"redis": lambda: bool(probe.ping())}
    server = start_metrics_server(
        metrics_port(args, settings, default=DEFAULT_METRICS_PORTS["train"]),
        metrics.registry,
        checks,
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        log.info("signal %d: stopping after the step in progress", signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    published: list[int] = []  # versions this run published
    pointer = LivePointerWatch(client, keys.namespace)
    trainer: Trainer | None = None
    up_to = 0  # the highest version the trainers of this run published or continued from
    next_step = 0.0
    status = 0
    redis_down_since: float | None = None  # monotonic time of the first failure of an outage
    said_at = 0.0  # when the outage was last logged
    waiting_for: str | None = None  # the lease holder last named in the log
    try:
        while not stopping:
            if args.max_seconds and time.monotonic() - started > args.max_seconds:
                if args.once:  # it never got to its one step (or the step kept failing)
                    log.error("--once: nothing published within --max-seconds %g", args.max_seconds)
                    status = 1
                break
            try:
                if trainer is None:
                    if not lease.acquire():
                        holder = lease.holder()
                        if holder is None:
                            continue  # it lapsed just now: try to take it again
                        if args.once:
                            log.error(
                                "--once: trainer %s holds the lease of namespace %s (a "
                                "stopped trainer's lapses within trainer.lease_seconds=%g)%s",
                                holder,
                                keys.namespace,
                                config.lease_seconds,
                                "; `streamseg model refit` asks it for a refit"
                                if args.refit
                                else "",
                            )
                            status = 1
                            break
                        if holder != waiting_for:
                            waiting_for = holder
                            log.info(
                                "trainer %s holds the lease of namespace %s: waiting to take "
                                "over when it stops (within trainer.lease_seconds=%g)",
                                holder,
                                keys.namespace,
                                config.lease_seconds,
                            )
                        time.sleep(min(1.0, config.lease_seconds / 3))
                        continue
                    waiting_for = None
                    log.info("trainer lease acquired for namespace %s", keys.namespace)
                    metrics.leader.set(1)
                    trainer = Trainer(client, keys, config, metrics, lease, up_to)
                    trainer.resume()
                elif not lease.renew():
                    log.warning("trainer lease lost; waiting to take over again")
                    metrics.leader.set(0)
                    metrics.lease_lost.inc()
                    up_to = max(up_to, trainer.published_up_to)
                    trainer = None
                    continue
            except REDIS_ERRORS as exc:
                # Whether the lease is still ours is unknown: follow, and take it again (from
                # the published model) once Redis answers and the lease is free.
                now = time.monotonic()
                if redis_down_since is None:
                    redis_down_since = said_at = now
                    log.error("Redis did not answer the lease (%s); retrying", exc)
                elif now - said_at >= 30:
                    said_at = now
                    log.error(
                        "Redis still does not answer (%.0f s): %s", now - redis_down_since, exc
                    )
                metrics.leader.set(0)
                if trainer is not None:
                    up_to = max(up_to, trainer.published_up_to)
                trainer = None
                time.sleep(min(1.0, config.lease_seconds / 3))
                continue
            if redis_down_since is not None:
                log.info("Redis answers again after %.0f s", time.monotonic() - redis_down_since)
                redis_down_since = None
            try:
                pointer.check()
            except REDIS_ERRORS as exc:  # the lease's next renewal reports an outage
                log.debug("live pointer not read: %s", exc)
            if time.monotonic() >= next_step:
                try:
                    with lease.kept(config.max_step_seconds):
                        model = trainer.refit_now() if args.refit else trainer.step()
                except _STEP_ERRORS as exc:
                    # A Redis blip or an unusable batch of rows must not end the trainer:
                    # the published model stays in use and the next step tries again.
                    log.error("training step failed: %s", exc)
                    metrics.step_failures.inc()
                    next_step = time.monotonic() + config.update_interval_seconds
                    continue
                if model is not None:
                    published.append(model.model_version)
                    log.info(
                        "published model v%d: %s",
                        model.model_version,
                        ", ".join(f"{i}:{n}" for i, n in zip(model.ids, model.names, strict=True)),
                    )
                if args.once:
                    if model is None:
                        status = 1
                        log.error("--once: nothing to publish yet (%s)", trainer.missing())
                    break
                next_step = time.monotonic() + (
                    config.update_interval_seconds if trainer.segmenter else 1.0
                )
            time.sleep(min(0.5, config.lease_seconds / 4))
    finally:
        try:
            lease.release()
        except REDIS_ERRORS as exc:
            log.warning("could not release the lease (%s): it expires by itself", exc)
        if server is not None:
            server.stop()
        log.info(
            "trainer stopped after %.1f s: published %d model version%s%s",
            time.monotonic() - started,
            len(published),
            "" if len(published) == 1 else "s",
            f" (v{published[0]}-v{published[-1]})" if published else "",
        )
    return status
