"""A read-only snapshot of the users' state in Redis: states, features and current segments.

Used by the report and by K tuning; never by the hot path. Keys are found with SCAN (no KEYS,
so a large namespace does not block Redis) and read with MGET in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient
from consumer.state_store import StateStore, read_values
from model.features import COL, STATE_WIDTH, FeatureConfig, derive_features, empty_state

_STATE_BYTES = STATE_WIDTH * 8
_MGET_CHUNK = 1000


@dataclass(frozen=True)
class Snapshot:
    """Users' states and features at one moment (all arrays row-aligned with ``user_ids``)."""

    user_ids: list[str]
    """Sampled users, in sorted order."""
    states: npt.NDArray[np.float64]
    """(n, STATE_WIDTH) state vectors (layout `model.features.STATE_FIELDS`)."""
    features: npt.NDArray[np.float64]
    """(n, len(FEATURE_NAMES)) features in business units at ``watermark_ms``."""
    segment_ids: npt.NDArray[np.int64]
    """Segment last assigned to each user; -1 = none (cold start)."""
    watermark_ms: float | None
    """Event time the features are derived at (epoch ms); None when there are no users."""
    total_users: int
    """Users with a state key in the namespace (before sampling)."""

    def __len__(self) -> int:
        return len(self.user_ids)


#: ``max_users`` of `read_snapshot` meaning "every user".
ALL_USERS = 1 << 40


def read_snapshot(
    client: RedisClient,
    keys: KeyLayout,
    max_users: int = 20000,
    config: FeatureConfig | None = None,
) -> Snapshot:
    """Read up to ``max_users`` users' state from the namespace of ``keys``.

    The sample is deterministic: the first ``max_users`` user ids in sorted order. Features are
    derived at the namespace's watermark (epoch ms, the latest event time the consumers applied),
    or at the largest ``last_ts_ms`` of the sample when no watermark is stored. State values of
    the wrong size (written by something else) are skipped.
    """
    if max_users < 1:
        raise ValueError(f"max_users must be >= 1, got {max_users}")
    found = [
        key.decode() if isinstance(key, bytes) else str(key)
        for key in client.scan_iter(match=keys.state_pattern, count=1000)
    ]
    by_user = sorted((keys.user_from_state_key(k), k) for k in found)
    total = len(by_user)
    chosen = by_user[:max_users]

    user_ids: list[str] = []
    blobs: list[bytes] = []
    for start in range(0, len(chosen), _MGET_CHUNK):
        part = chosen[start : start + _MGET_CHUNK]
        values = read_values(client, [k for _, k in part])
        for (user, _), value in zip(part, values, strict=True):
            # A key can expire between SCAN and MGET; a foreign value has the wrong size.
            if isinstance(value, bytes) and len(value) == _STATE_BYTES:
                user_ids.append(user)
                blobs.append(value)
    if blobs:
        states = np.frombuffer(b"".join(blobs), dtype=np.float64).reshape(-1, STATE_WIDTH).copy()
    else:
        states = empty_state(0)

    watermark = StateStore(client, keys).read_watermark()
    if watermark is None and len(states):
        last = states[:, COL["last_ts_ms"]]
        watermark = float(np.nanmax(last)) if np.isfinite(last).any() else None
    features = derive_features(
        states, watermark if watermark is not None else np.nan, config or FeatureConfig()
    )
    segment_ids = states[:, COL["segment_id"]].astype(np.int64)
    return Snapshot(
        user_ids=user_ids,
        states=states,
        features=features,
        segment_ids=segment_ids,
        watermark_ms=watermark,
        total_users=total,
    )
