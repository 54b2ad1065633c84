"""Published models in Redis: the current one, the history, rollback, export and import.

Keys (tag ``{<ns>:model}``, see `consumer.redis_keys`): ``current`` (JSON), ``version``
(integer, what consumers poll), ``v:<n>`` (JSON of every published version) and ``versions``
(sorted set). A publish is one MULTI/EXEC transaction, so a reader never sees a half-written
model: it reads the old JSON or the new one. The shared hash tag puts every model key (and
the trainer lease) in one slot, so the same transactions run on a Redis Cluster.

With ``history_versions`` (the trainer's ``trainer.model_history_versions``), a publish keeps
the version it publishes (the new current one) and the newest ``history_versions - 1`` others:
it reads the history under WATCH and deletes the ``v:<n>`` keys and ``versions`` members of the
versions that fall out in the same MULTI/EXEC, so the history never holds a version without its
JSON or the reverse. There is no other pointer into the history (a rollback names its version).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import redis

from consumer.exceptions import ConfigError, LeaseLostError, ModelReplacedError
from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient
from consumer.state_store import read_values
from model.exceptions import ModelFormatError
from model.features import FEATURE_NAMES
from model.model_format import SegmentModel

log = logging.getLogger(__name__)

#: History keys deleted per DEL command when a publish prunes (a first publish after the limit
#: was set may drop a long backlog; smaller commands keep Redis responsive within the EXEC).
_PRUNE_CHUNK = 1000

#: Key in a model's ``metrics.extra`` that ``model import`` sets: when it was imported, epoch
#: milliseconds. ``created_at`` stays the model's own (when it was fitted, elsewhere), so an
#: import listed beside newer local versions would otherwise look older than them. A number in
#: the existing ``extra`` map: documents without it load as before, and older readers load it.
IMPORTED_AT_METRIC = "imported_at_ms"
#: Key in a model's ``metrics.extra`` that ``model rename`` sets: when, epoch milliseconds.
RENAMED_AT_METRIC = "renamed_at_ms"


class ModelStore:
    """Publishes, loads and rolls back `SegmentModel`s under one namespace."""

    def __init__(
        self, client: RedisClient, keys: KeyLayout, *, history_versions: int | None = None
    ) -> None:
        """``history_versions``: publishes keep only this many newest versions (None: all)."""
        if history_versions is not None and history_versions < 1:
            raise ConfigError(f"history_versions must be at least 1, got {history_versions}")
        self.client = client
        self.keys = keys
        self.history_versions = history_versions

    def current_version(self) -> int | None:
        raw = self.client.get(self.keys.model_version)
        return None if raw is None else parse_version(raw, self.keys.model_version)

    def load_current(self) -> SegmentModel | None:
        """The model in use, validated; None before the first publish."""
        raw = self.client.get(self.keys.model_current)
        return None if raw is None else compatible(SegmentModel.from_json(raw))

    def load(self, version: int) -> SegmentModel:
        raw = self.client.get(self.keys.model_history(version))
        if raw is None:
            raise self._missing(version)
        return SegmentModel.from_json(raw)

    def load_kept(self, versions: Sequence[int]) -> list[SegmentModel]:
        """Those of ``versions`` the history still holds, in the given order, in one round trip.

        A publish may prune the oldest version between reading the history and loading it:
        such a version is left out rather than failing a listing or a report.
        """
        raws = read_values(self.client, [self.keys.model_history(v) for v in versions])
        return [SegmentModel.from_json(raw) for raw in raws if raw is not None]

    def _missing(self, version: int) -> ConfigError:
        """The error for a version whose JSON is not in the history: pruned, or never there."""
        oldest = self.client.zrange(self.keys.model_versions, 0, 0)
        first = parse_version(oldest[0], self.keys.model_versions) if oldest else None
        if first is not None and 1 <= version < first:  # versions count from 1
            return ConfigError(
                f"model version {version} is no longer kept in namespace "
                f"{self.keys.namespace!r}: the oldest kept version is {first} "
                "(publishes keep the newest trainer.model_history_versions versions)"
            )
        return ConfigError(f"no model version {version} in namespace {self.keys.namespace!r}")

    def versions(self, newest: int = 0) -> list[int]:
        """Published versions kept, newest first; only the ``newest`` ones when above 0."""
        members = self.client.zrevrange(self.keys.model_versions, 0, newest - 1)
        return [parse_version(v, self.keys.model_versions) for v in members]

    def version_count(self) -> int:
        """How many published versions the history keeps."""
        return int(self.client.zcard(self.keys.model_versions))

    def next_version(self) -> int:
        """One more than every version published in this namespace."""
        newest = self.client.zrevrange(self.keys.model_versions, 0, 0)
        return parse_version(newest[0], self.keys.model_versions) + 1 if newest else 1

    def publish(self, model: SegmentModel) -> None:
        """Store ``model`` in the history and make it current, atomically.

        The JSON is validated by loading it back first: a model that cannot be read is
        never published.
        """
        data = model.to_json()
        compatible(SegmentModel.from_json(data))
        version = model.model_version
        if self.history_versions is None:
            pipe = self.client.pipeline(transaction=True)
            self._queue_publish(pipe, version, data, [])
            pipe.execute()
        else:
            with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(self.keys.model_versions)
                        pruned = self._to_prune(pipe, version)
                        pipe.multi()
                        self._queue_publish(pipe, version, data, pruned)
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue  # another publish came first: read the history again
        log.info("published model version %d (%d segments)", version, len(model.ids))

    def _to_prune(self, pipe: Any, version: int) -> list[int]:
        """Versions a publish of ``version`` drops: all but it and the newest others.

        ``pipe`` watches ``versions``, so the answer holds until its EXEC (or the EXEC fails).
        """
        if self.history_versions is None:
            return []
        # After WATCH the pipeline runs commands at once (the stubs don't know).
        newest_first = cast(list[bytes], pipe.zrevrange(self.keys.model_versions, 0, -1))
        others = [v for v in map(int, newest_first) if v != version]
        return others[self.history_versions - 1 :]

    def _queue_publish(self, pipe: Any, version: int, data: bytes, pruned: Sequence[int]) -> None:
        """Queue what publishing version ``version`` (JSON ``data``) writes, in a MULTI,
        with the deletion of the ``pruned`` versions (never ``version`` itself)."""
        pipe.set(self.keys.model_history(version), data)
        pipe.zadd(self.keys.model_versions, {str(version): version})
        pipe.set(self.keys.model_current, data)
        pipe.set(self.keys.model_version, version)
        for start in range(0, len(pruned), _PRUNE_CHUNK):
            chunk = pruned[start : start + _PRUNE_CHUNK]
            pipe.zrem(self.keys.model_versions, *(str(v) for v in chunk))
            pipe.delete(*(self.keys.model_history(v) for v in chunk))
        if pruned:
            log.debug("pruning %d model versions, the newest of them v%d", len(pruned), pruned[0])

    def publish_next(
        self,
        model: SegmentModel,
        *,
        lease_key: str | None = None,
        token: str | None = None,
        base_version: int | None = None,
        min_version: int = 1,
        chosen_names: Mapping[int, str | None] | None = None,
    ) -> SegmentModel:
        """Publish ``model`` as the next version, atomically with the version choice.

        With ``lease_key``, only while that key still holds ``token`` (the caller's trainer
        lease): a trainer that lost its lease during a long fit cannot publish, and two
        trainers can never publish the same version number. Raises `LeaseLostError`. With
        ``base_version`` (the version the model was built on, 0 = none), only while that
        version is current: a rollback, an import or a rename during the fit wins. Raises
        `ModelReplacedError`. The version is at least ``min_version``: a trainer that
        published v5 in a namespace whose history Redis has since lost publishes v6, not a
        second, different v1 that consumers still on v1 would never load. ``chosen_names``
        (segment id -> name, None to drop) changes ``{<ns>:model}:names`` in the same
        transaction (`consumer.segment_names`).
        """
        watched = [self.keys.model_versions, self.keys.model_version]
        watched += [lease_key] if lease_key else []
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    if lease_key is not None and pipe.get(lease_key) != (token or "").encode():
                        raise LeaseLostError(
                            f"trainer lease {lease_key!r} is no longer this trainer's "
                            "(it lapsed or another trainer took it)"
                        )
                    if base_version is not None:
                        raw = cast(bytes | None, pipe.get(self.keys.model_version))
                        current = parse_version(raw, self.keys.model_version) if raw else 0
                        if current != base_version:
                            raise ModelReplacedError(
                                f"model v{current} became current while v{base_version} was "
                                "being updated (a rollback, an import or a rename)"
                            )
                    # After WATCH the pipeline runs commands at once (the stubs don't know).
                    newest = cast(list[bytes], pipe.zrevrange(self.keys.model_versions, 0, 0))
                    version = (
                        parse_version(newest[0], self.keys.model_versions) + 1 if newest else 1
                    )
                    if version < min_version:
                        log.error(
                            "namespace %s holds models up to v%d only, though v%d was published:"
                            " did Redis lose its data? (README: Recovery); publishing v%d",
                            self.keys.namespace,
                            version - 1,
                            min_version - 1,
                            min_version,
                        )
                        version = min_version
                    model = model.model_copy(update={"model_version": version})
                    data = model.to_json()
                    compatible(SegmentModel.from_json(data))
                    pruned = self._to_prune(pipe, version)
                    pipe.multi()
                    self._queue_publish(pipe, version, data, pruned)
                    self._queue_chosen_names(pipe, chosen_names or {})
                    pipe.execute()
                    log.info("published model version %d (%d segments)", version, len(model.ids))
                    return model
                except redis.WatchError:
                    continue  # another publish or a lease change came first: decide again

    def _queue_chosen_names(self, pipe: Any, chosen: Mapping[int, str | None]) -> None:
        """Queue the changes of operator-chosen names (None: back to the rule's name)."""
        chosen_now = {str(i): name for i, name in chosen.items() if name is not None}
        dropped = [str(i) for i, name in chosen.items() if name is None]
        if chosen_now:
            pipe.hset(self.keys.model_names, mapping=chosen_now)
        if dropped:
            pipe.hdel(self.keys.model_names, *dropped)

    def rollback(self, version: int) -> SegmentModel:
        """Make an earlier published version current again (atomically).

        Raises `ConfigError` for a version not in the history; for one pruned by
        ``trainer.model_history_versions`` the message names the oldest kept version.
        """
        data = self.client.get(self.keys.model_history(version))
        if data is None:
            raise self._missing(version)
        model = SegmentModel.from_json(data)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.model_current, data)
        pipe.set(self.keys.model_version, version)
        pipe.execute()
        log.info("rolled back to model version %d", version)
        return model


def imported_at(model: SegmentModel) -> datetime | None:
    """When ``model import`` published ``model`` here (UTC); None for a model fitted here, or
    imported before imports were noted."""
    ms = model.metrics.extra.get(IMPORTED_AT_METRIC)
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def renamed_at(model: SegmentModel) -> datetime | None:
    """When ``model rename`` published ``model`` (UTC); None for any other version."""
    ms = model.metrics.extra.get(RENAMED_AT_METRIC)
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def parse_version(raw: bytes | str, key: str) -> int:
    """A model version read back from ``key`` (the current version, or a member of the
    history): an integer from 1, else `ModelFormatError` naming the key (a hand edit)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if not (text.isascii() and text.isdigit()) or len(text) > 16 or int(text) < 1:
        raise ModelFormatError(f"{key} holds {text[:40]!r}, not a model version (1, 2, ...)")
    return int(text)


def compatible(model: SegmentModel) -> SegmentModel:
    """The model, if it reads the features this service computes, in the same order."""
    theirs, ours = model.feature_names, list(FEATURE_NAMES)
    if theirs != ours:
        at = next(
            (i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b),
            min(len(theirs), len(ours)),
        )
        differs = (
            f"{len(theirs)} features, this service computes {len(ours)}"
            if at == min(len(theirs), len(ours))
            else f"feature {at + 1} is {theirs[at]!r}, this service computes {ours[at]!r} there"
        )
        raise ModelFormatError(
            f"model v{model.model_version} reads other features ({differs}): it expects "
            f"{theirs}, but this service computes {ours}"
        )
    return model
