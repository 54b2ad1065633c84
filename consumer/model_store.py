"""Published models in Redis: the current one, the history, rollback, export and import.

Keys (tag ``{<ns>:model}``, see `consumer.redis_keys`): ``current`` (JSON), ``version``
(integer, what consumers poll), ``v:<n>`` (JSON of every published version) and ``versions``
(sorted set). A publish is one MULTI/EXEC transaction, so a reader never sees a half-written
model: it reads the old JSON or the new one. The shared hash tag puts every model key (and
the trainer lease) in one slot, so the same transactions run on a Redis Cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, cast

import redis

from consumer.exceptions import ConfigError, LeaseLostError
from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient, Settings
from model.exceptions import ModelFormatError
from model.features import FEATURE_NAMES
from model.model_format import SegmentModel

log = logging.getLogger(__name__)


class ModelStore:
    """Publishes, loads and rolls back `SegmentModel`s under one namespace."""

    def __init__(self, client: RedisClient, keys: KeyLayout) -> None:
        self.client = client
        self.keys = keys

    def current_version(self) -> int | None:
        raw = self.client.get(self.keys.model_version)
        return None if raw is None else int(raw)

    def load_current(self) -> SegmentModel | None:
        """The model in use, validated; None before the first publish."""
        raw = self.client.get(self.keys.model_current)
        return None if raw is None else _compatible(SegmentModel.from_json(raw))

    def load(self, version: int) -> SegmentModel:
        raw = self.client.get(self.keys.model_history(version))
        if raw is None:
            raise ConfigError(f"no model version {version} in namespace {self.keys.namespace!r}")
        return SegmentModel.from_json(raw)

    def versions(self) -> list[int]:
        """Published versions, newest first."""
        return [int(v) for v in self.client.zrevrange(self.keys.model_versions, 0, -1)]

    def next_version(self) -> int:
        """One more than every version published in this namespace."""
        newest = self.client.zrevrange(self.keys.model_versions, 0, 0)
        return int(newest[0]) + 1 if newest else 1

    def publish(self, model: SegmentModel) -> None:
        """Store ``model`` in the history and make it current, atomically.

        The JSON is validated by loading it back first: a model that cannot be read is
        never published.
        """
        data = model.to_json()
        _compatible(SegmentModel.from_json(data))
        version = model.model_version
        pipe = self.client.pipeline(transaction=True)
        self._queue_publish(pipe, version, data)
        pipe.execute()
        log.info("published model version %d (%d segments)", version, len(model.ids))

    def _queue_publish(self, pipe: Any, version: int, data: bytes) -> None:
        """Queue what publishing version ``version`` (JSON ``data``) writes, in a MULTI."""
        pipe.set(self.keys.model_history(version), data)
        pipe.zadd(self.keys.model_versions, {str(version): version})
        pipe.set(self.keys.model_current, data)
        pipe.set(self.keys.model_version, version)

    def publish_next(
        self, model: SegmentModel, *, lease_key: str | None = None, token: str | None = None
    ) -> SegmentModel:
        """Publish ``model`` as the next version, atomically with the version choice.

        With ``lease_key``, only while that key still holds ``token`` (the caller's trainer
        lease): a trainer that lost its lease during a long fit cannot publish, and two
        trainers can never publish the same version number. Raises `LeaseLostError`.
        """
        watched = [self.keys.model_versions, *([lease_key] if lease_key else [])]
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    if lease_key is not None and pipe.get(lease_key) != (token or "").encode():
                        raise LeaseLostError(f"trainer lease {lease_key!r} is held by another")
                    # After WATCH the pipeline runs commands at once (the stubs don't know).
                    newest = cast(list[bytes], pipe.zrevrange(self.keys.model_versions, 0, 0))
                    version = int(newest[0]) + 1 if newest else 1
                    model = model.model_copy(update={"model_version": version})
                    data = model.to_json()
                    _compatible(SegmentModel.from_json(data))
                    pipe.multi()
                    self._queue_publish(pipe, version, data)
                    pipe.execute()
                    log.info("published model version %d (%d segments)", version, len(model.ids))
                    return model
                except redis.WatchError:
                    continue  # another publish or a lease change came first: decide again

    def rollback(self, version: int) -> SegmentModel:
        """Make an earlier published version current again (atomically)."""
        data = self.client.get(self.keys.model_history(version))
        if data is None:
            raise ConfigError(f"no model version {version} in namespace {self.keys.namespace!r}")
        model = SegmentModel.from_json(data)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.model_current, data)
        pipe.set(self.keys.model_version, version)
        pipe.execute()
        log.info("rolled back to model version %d", version)
        return model


def _compatible(model: SegmentModel) -> SegmentModel:
    """The model, if it reads the features this service computes, in the same order."""
    if model.feature_names != list(FEATURE_NAMES):
        raise ModelFormatError(
            f"model v{model.model_version} expects features {model.feature_names}, "
            f"but this service computes {list(FEATURE_NAMES)}"
        )
    return model


def model_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg model list|show|rollback|export|import``."""
    client = settings.redis.connect()
    store = ModelStore(client, KeyLayout(settings.redis.namespace))
    current = store.current_version()
    if args.action == "list":
        for version in store.versions():
            m = store.load(version)
            mark = "*" if version == current else " "
            print(
                f"{mark} v{version:<5} {m.created_at.isoformat()}  K={len(m.ids)}  "
                f"rows={m.metrics.n_rows}  inertia={m.metrics.inertia}"
            )
        return 0
    if args.action == "show":
        shown: int | None = args.version if args.version is not None else current
        if shown is None:
            print("no model published yet (cold start)")
            return 1
        m = store.load(shown)
        print(f"model v{m.model_version} created {m.created_at.isoformat()}")
        for pos, seg_id in enumerate(m.ids):
            p = m.profiles[pos]
            print(f"  segment {seg_id:>3}  tier {m.tiers[pos]}  {m.names[pos]:<24} {p}")
        return 0
    if args.action == "rollback":
        store.rollback(args.version)
        print(f"model v{args.version} is current")
        return 0
    if args.action == "export":
        exported: int | None = args.model_version if args.model_version is not None else current
        if exported is None:
            print("no model published yet", file=sys.stderr)
            return 1
        args.path.write_bytes(store.load(exported).to_json())
        print(f"wrote model v{exported} to {args.path}")
        return 0
    if args.action == "import":
        try:
            imported = _compatible(SegmentModel.from_json(args.path.read_bytes()))
        except (OSError, ModelFormatError) as exc:
            raise ConfigError(f"cannot import {args.path}: {exc}") from None
        model = imported.model_copy(update={"model_version": store.next_version()})
        store.publish(model)
        print(f"imported {args.path} as model v{model.model_version}")
        return 0
    raise ConfigError(f"unknown model action {args.action!r}")
