"""The feature settings a namespace's consumers compute with, recorded in Redis.

Whoever recomputes features from a stored state (``streamseg explain``) must decay it with
the half-lives the consumers used: run with a default configuration against a namespace whose
consumers use other half-lives, ``explain`` described other features than the segments were
given, without a word. ``run`` records its settings at start in ``<ns>:feature-settings``, a
JSON string::

    {"features": {"purchases_half_life_days": 90.0, ...}, "allowed_lateness_seconds": 3600.0}

and warns when an earlier start recorded others (consumers of one namespace that disagree
compute features two ways).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
import pydantic

from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient, Settings
from model.features import FeatureConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSettings:
    """What the features of a state depend on besides the state: half-lives and cap, and the
    lateness that sets the re-score's clock."""

    features: FeatureConfig
    allowed_lateness_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> FeatureSettings:
        return cls(settings.features, settings.pipeline.allowed_lateness_seconds)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "features": self.features.model_dump(),
                "allowed_lateness_seconds": self.allowed_lateness_seconds,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> FeatureSettings | None:
        """The recorded settings; None for a value this service did not write."""
        try:
            data = orjson.loads(raw)
            # Fields a newer release added are left out: this one computes without them.
            known = {k: v for k, v in data["features"].items() if k in FeatureConfig.model_fields}
            return cls(FeatureConfig(**known), float(data["allowed_lateness_seconds"]))
        except (
            orjson.JSONDecodeError,
            pydantic.ValidationError,
            AttributeError,
            KeyError,
            TypeError,
            ValueError,
        ):
            return None

    def differences(self, other: FeatureSettings) -> list[str]:
        """``setting mine -> other`` for each setting that differs."""
        mine, theirs = self.features.model_dump(), other.features.model_dump()
        changed = [
            f"features.{k} {mine[k]:g} -> {theirs[k]:g}" for k in mine if mine[k] != theirs[k]
        ]
        if self.allowed_lateness_seconds != other.allowed_lateness_seconds:
            changed.append(
                "pipeline.allowed_lateness_seconds "
                f"{self.allowed_lateness_seconds:g} -> {other.allowed_lateness_seconds:g}"
            )
        return changed


def record_feature_settings(client: RedisClient, keys: KeyLayout, own: FeatureSettings) -> None:
    """Record ``own`` for the namespace; warn when the previous record differs."""
    raw = client.set(keys.feature_settings, own.to_json(), get=True)
    previous = FeatureSettings.from_json(raw) if isinstance(raw, bytes) else None
    changed: list[str] = previous.differences(own) if previous is not None else []
    if changed:
        log.warning(
            "namespace %s was written with other feature settings (%s): consumers of one "
            "namespace must share them, or users' features depend on which consumer applied "
            "their events; %s now records this process's",
            keys.namespace,
            ", ".join(changed),
            keys.feature_settings,
        )


def recorded_feature_settings(client: RedisClient, keys: KeyLayout) -> FeatureSettings | None:
    """The settings the namespace's consumers recorded; None when none did."""
    raw = client.get(keys.feature_settings)
    return FeatureSettings.from_json(raw) if isinstance(raw, bytes) else None
