"""Per-user state and segment records in Redis: one MGET in, one transaction out, per batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from consumer.redis_keys import KeyLayout
from model.features import STATE_WIDTH, empty_state

_STATE_BYTES = STATE_WIDTH * 8
_EMPTY = empty_state(1).tobytes()


@dataclass
class BatchWrite:
    """Everything one batch writes, applied atomically (MULTI/EXEC) on one Redis server."""

    user_ids: Sequence[str]
    states: np.ndarray  # (n, STATE_WIDTH) float64
    user_keys: Sequence[tuple[str, str]] | None = None  # (state, segment) keys, if known
    segment_records: Sequence[bytes | None] = ()  # JSON per user, None = leave unchanged
    training_rows: np.ndarray | None = None  # float64 feature rows for the trainer
    counters: Mapping[str, int] = field(default_factory=dict)
    size_changes: Mapping[int, int] = field(default_factory=dict)  # segment id -> +/- users
    new_categories: Mapping[float, str] = field(default_factory=dict)
    watermark_ms: float | None = None


class StateStore:
    """Reads and writes users' feature state and segment records under one namespace."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeyLayout,
        *,
        user_ttl_seconds: int = 0,
        training_buffer_rows: int = 0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.user_ttl_seconds = user_ttl_seconds
        self.training_buffer_rows = training_buffer_rows

    def read_states(
        self, user_ids: Sequence[str], *, state_keys: Sequence[str] | None = None
    ) -> np.ndarray:
        """State vectors of ``user_ids`` in order; users never seen get `empty_state`.

        A stored value of the wrong size (written by something else) is treated as empty.
        """
        if not user_ids:
            return empty_state(0)
        if state_keys is None:
            state_keys = [self.keys.state(u) for u in user_ids]
        raw = self.client.mget(state_keys)
        blob = b"".join(v if v is not None and len(v) == _STATE_BYTES else _EMPTY for v in raw)
        return np.frombuffer(blob, dtype=np.float64).reshape(len(user_ids), STATE_WIDTH).copy()

    def write(self, batch: BatchWrite) -> None:
        """Write states, records, samples and counters in one MULTI/EXEC round trip."""
        keys = self.keys
        pipe = self.client.pipeline(transaction=True)
        states = np.ascontiguousarray(batch.states, dtype=np.float64)
        mapping: dict[str | bytes, bytes | float | int | str] = {}
        records = batch.segment_records
        pairs = batch.user_keys or keys.state_and_segment(batch.user_ids)
        for i, (state_key, segment_key) in enumerate(pairs):
            mapping[state_key] = states[i].tobytes()
            record = records[i] if i < len(records) else None
            if record is not None:
                mapping[segment_key] = record
        if mapping:
            if self.user_ttl_seconds:
                for key, value in mapping.items():
                    pipe.set(key, value, ex=self.user_ttl_seconds)
            else:
                pipe.mset(mapping)
        rows = batch.training_rows
        if self.training_buffer_rows and rows is not None and len(rows):
            pipe.lpush(keys.training_samples, np.ascontiguousarray(rows, np.float64).tobytes())
            keep_blobs = max(1, self.training_buffer_rows // max(1, len(rows)))
            pipe.ltrim(keys.training_samples, 0, keep_blobs - 1)
        for name, delta in batch.counters.items():
            if delta:
                pipe.hincrby(keys.counters, name, delta)
        for segment, delta in batch.size_changes.items():
            if delta:
                pipe.hincrby(keys.segment_sizes, str(segment), delta)
        if batch.new_categories:
            pipe.hset(
                keys.categories,
                mapping={repr(int(code)): name for code, name in batch.new_categories.items()},
            )
        if batch.watermark_ms is not None:
            # Lua-free max: the watermark only moves forward, whichever consumer writes.
            pipe.zadd(keys.watermark, {"max": batch.watermark_ms}, gt=True)
        pipe.execute()

    def read_counters(self) -> dict[str, int]:
        raw = self.client.hgetall(self.keys.counters)
        return {k.decode(): int(v) for k, v in raw.items()}

    def read_segment_sizes(self) -> dict[int, int]:
        raw = self.client.hgetall(self.keys.segment_sizes)
        return {int(k): int(v) for k, v in raw.items()}

    def read_category_names(self) -> dict[float, str]:
        raw = self.client.hgetall(self.keys.categories)
        return {float(int(k)): v.decode() for k, v in raw.items()}

    def read_watermark(self) -> float | None:
        score = self.client.zscore(self.keys.watermark, "max")
        return None if score is None else float(score)
