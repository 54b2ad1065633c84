"""Helpers shared by the benchmark sections: machine description, statistics, data, model."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import numpy as np
import redis
from confluent_kafka import Producer

from consumer.kafka_clients import KEY_PARTITIONER
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from consumer.segment_record import encode_record, iso_ms
from consumer.settings import RedisClient
from consumer.state_store import BatchWrite
from consumer.synthetic import CATEGORIES, EventGenerator, GeneratorConfig
from consumer.training_rows import keyed_rows
from model.events import DEFAULT_ALIASES, DecodeLimits, decode_events, resolve_type_map
from model.features import (
    FEATURE_NAMES,
    LOG_FEATURES,
    STATE_WIDTH,
    EventColumns,
    FeatureConfig,
    apply_events,
    category_codes,
    derive_features,
    empty_state,
)
from model.labels import label_segments
from model.model_format import SegmentModel
from model.preprocessing import Preprocessor
from model.segmenter import StreamingSegmenter

TYPE_MAP = resolve_type_map(DEFAULT_ALIASES)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = int(line.split()[1]) / 1024 / 1024
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(ram_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    vals = [float(v) for v in values]
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {
            "p50": float("nan"),
            "p95": float("nan"),
            "p99": float("nan"),
            "max": float("nan"),
            "n": 0,
        }
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(a.max()),
        "n": int(a.size),
    }


def generate_records(
    n: int, users: int, seed: int
) -> tuple[list[tuple[bytes | None, bytes]], EventGenerator]:
    """About ``n`` Kafka records from the synthetic generator over ``users`` users.

    The span in days is chosen so that the expected record count is a bit above ``n``; the
    first ``n`` records (in emission order, malformed ones included) are returned.
    """
    probe = EventGenerator(GeneratorConfig(users=users, days=30.0, seed=seed))
    per_day = probe.expected_records() / 30.0
    days = max(0.05, 1.6 * n / max(per_day, 1e-9))
    gen = EventGenerator(GeneratorConfig(users=users, days=days, seed=seed))
    out: list[tuple[bytes | None, bytes]] = []
    for rec in gen.records():
        out.append(rec)
        if len(out) >= n:
            break
    return out, gen


def produce_all(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> float:
    """Send ``records`` to ``topic``; returns the send rate (records/s)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "partitioner": KEY_PARTITIONER,
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    began = time.perf_counter()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} records not delivered to {topic}")
    return len(records) / (time.perf_counter() - began)


def offline_features(
    records: Sequence[tuple[bytes | None, bytes]], config: FeatureConfig | None = None
) -> tuple[list[str], np.ndarray]:
    """User ids and feature rows at each user's latest event, computed without Kafka or Redis."""
    config = config or FeatureConfig()
    users: dict[str, int] = {}
    chunks = []
    offset = 0
    for start in range(0, len(records), 20_000):
        part = records[start : start + 20_000]
        batch, _ = decode_events(
            [v for _, v in part], [k for k, _ in part], type_map=TYPE_MAP, limits=DecodeLimits()
        )
        rows = np.fromiter(
            (users.setdefault(u, len(users)) for u in batch.user_id), np.int64, len(batch)
        )
        chunks.append((rows, batch, offset + batch.index))
        offset += len(part)
    state = empty_state(len(users))
    cache: dict[str, float] = {}
    for rows, batch, offsets in chunks:
        cols = EventColumns(
            user=rows,
            ts_ms=batch.ts_ms,
            type_code=batch.type_code,
            amount=batch.amount,
            category_code=category_codes(batch.category, cache),
            partition=np.zeros(len(batch), np.int64),
            offset=offsets.astype(np.int64),
        )
        apply_events(state, cols, config)
    from model.features import COL

    X = derive_features(state, state[:, COL["last_ts_ms"]], config)
    return list(users), X


def build_model(X: np.ndarray, n_clusters: int = 6, seed: int = 0) -> SegmentModel:
    """Bootstrap a model the way the trainer does (preprocessing, k-means++, labels)."""
    pre = Preprocessor(FEATURE_NAMES, log_columns=LOG_FEATURES).fit(X)
    Z = pre.transform(X)
    seg = StreamingSegmenter(n_clusters=n_clusters, n_init=5, random_state=seed).fit(Z)
    positions = seg.predict(Z)
    centers = pre.inverse_transform(seg.cluster_centers_)
    labels = label_segments(centers, X, positions, FEATURE_NAMES)
    model = SegmentModel.from_fitted(seg, pre, labels, n_rows=len(X))
    return model.model_copy(update={"model_version": 1})


def publish(client: RedisClient, namespace: str, model: SegmentModel) -> None:
    ModelStore(client, KeyLayout(namespace)).publish(model)


def prepared_writes(users: int, batch: int, prefix: str) -> list[BatchWrite]:
    """What the pipeline writes for ``users`` users (``<prefix><i>``), in batches of ``batch``:
    random states, one segment record each, a keyed training row each (`keyed_rows`), the
    counters and the watermark. Built before a measurement: building them is not measured."""
    rng = np.random.default_rng(0)
    now = iso_ms(time.time() * 1000)
    out = []
    for start in range(0, users, batch):
        ids = [f"{prefix}{i}" for i in range(start, min(users, start + batch))]
        records: list[bytes | None] = [
            encode_record(
                u,
                segment_id=3,
                segment="bargain hunters",
                tier=2,
                model_version=1,
                distance=0.8123,
                top_category_spend="fashion",
                top_category_views="home",
                event_time=now,
                computed_at=now,
            )
            for u in ids
        ]
        out.append(
            BatchWrite(
                user_ids=ids,
                states=rng.random((len(ids), STATE_WIDTH)),
                segment_records=records,
                training_rows=keyed_rows(rng.random((len(ids), len(FEATURE_NAMES))), ids),
                counters={"records": len(ids), "applied": len(ids)},
                watermark_ms=time.time() * 1000,
            )
        )
    return out


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{namespace}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


class _Sliceable(Protocol):
    """What `chunks` needs: a length and slicing that keeps the type (lists, numpy arrays)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> Self: ...


_S = TypeVar("_S", bound=_Sliceable)


def chunks(seq: _S, size: int) -> Iterator[_S]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


_TYPES = [
    "view",
    "view",
    "view",
    "view",
    "product_view",
    "cart",
    "add_to_cart",
    "purchase",
    "refund",
    "review",
    "like",
    "share",
]
_CATEGORIES = list(CATEGORIES)  # the generator's catalogue, one definition


def uniform_records(
    n: int,
    users: int,
    seed: int,
    start_ms: int = 1_767_225_600_000,
    days: float = 60.0,
    *,
    distinct: bool = False,
) -> list[tuple[bytes | None, bytes]]:
    """``n`` valid events, each for a user drawn uniformly from ``users`` ids (like
    tests/consumer/pipeline_support.make_events): controls the distinct-user count exactly.
    ``distinct`` gives every event its own user (``n <= users``, ids in random order).

    Types include aliases (``product_view``, ``add_to_cart``); timestamps are epoch ms spread
    over ``days`` in random order (out of order by up to ``days``); 70% have a category.
    """
    import orjson

    rng = np.random.default_rng(seed)
    if distinct and n > users:
        raise ValueError(f"distinct events need n <= users, got n={n}, users={users}")
    user = (rng.permutation(users)[:n] if distinct else rng.integers(0, users, size=n)).tolist()
    types = rng.integers(0, len(_TYPES), size=n).tolist()
    ts = (start_ms + rng.uniform(0, days * 86_400_000, size=n)).astype(np.int64).tolist()
    amounts = np.round(rng.lognormal(3.5, 0.8, size=n), 2).tolist()
    has_cat = (rng.random(n) < 0.7).tolist()
    cats = rng.integers(0, len(_CATEGORIES), size=n).tolist()
    out: list[tuple[bytes | None, bytes]] = []
    dumps = orjson.dumps
    for i in range(n):
        uid = f"u{user[i]}"
        etype = _TYPES[types[i]]
        event: dict[str, Any] = {
            "event_id": f"e{seed}-{i}",
            "user_id": uid,
            "type": etype,
            "ts": ts[i],
        }
        if etype in ("purchase", "refund"):
            event["amount"] = amounts[i]
        if has_cat[i]:
            event["category"] = _CATEGORIES[cats[i]]
        out.append((uid.encode(), dumps(event)))
    return out
