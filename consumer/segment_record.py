"""The segment record: what a personalization service reads for one user.

Stored as compact JSON under ``<ns>:{<user>}:seg`` (see `consumer.redis_keys`), e.g.::

    {"user_id":"u-42","status":"assigned","segment_id":3,"segment":"champions","tier":1,
     "model_version":7,"distance":0.84,"top_category_spend":"shoes",
     "top_category_views":"books","event_time":"2026-11-27T10:15:02.113Z",
     "computed_at":"2026-11-27T10:15:02.345Z"}

``status`` is ``assigned`` or ``cold_start`` (no model published yet: segment fields are
null). ``distance`` is the Euclidean distance to the segment's centre in the model's scaled
space (smaller = more typical). ``event_time`` is the user's latest event time; ``computed_at``
the wall-clock time the record was written. Times are ISO-8601 UTC with milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import orjson
from pydantic import BaseModel


class SegmentRecord(BaseModel):
    """One user's segment, as stored in Redis and returned by the lookup client."""

    user_id: str
    status: Literal["assigned", "cold_start"]
    segment_id: int | None
    segment: str | None
    tier: int | None
    model_version: int | None
    distance: float | None
    top_category_spend: str | None = None
    top_category_views: str | None = None
    event_time: datetime
    computed_at: datetime


def iso_ms(epoch_ms: float) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds and a Z."""
    moment = datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_ms_array(epoch_ms: np.ndarray) -> list[str]:
    """`iso_ms` of a whole column at once (vectorised: no datetime object per row)."""
    as_datetime = np.asarray(epoch_ms, dtype=np.float64).astype("datetime64[ms]")
    strings: list[str] = np.datetime_as_string(as_datetime, unit="ms", timezone="UTC").tolist()
    return strings


def encode_record(
    user_id: str,
    *,
    segment_id: int | None,
    segment: str | None,
    tier: int | None,
    model_version: int | None,
    distance: float | None,
    top_category_spend: str | None,
    top_category_views: str | None,
    event_time: str,
    computed_at: str,
) -> bytes:
    """Compact JSON of one record (the hot path: no pydantic object per user)."""
    return orjson.dumps(
        {
            "user_id": user_id,
            "status": "cold_start" if segment_id is None else "assigned",
            "segment_id": segment_id,
            "segment": segment,
            "tier": tier,
            "model_version": model_version,
            "distance": distance,
            "top_category_spend": top_category_spend,
            "top_category_views": top_category_views,
            "event_time": event_time,
            "computed_at": computed_at,
        }
    )


#: The segment fields of a record before any model exists (``status`` ``cold_start``).
COLD_START_FIELDS = (
    b'"status":"cold_start","segment_id":null,"segment":null,"tier":null,"model_version":null'
)


def segment_fields(segment_id: int, segment: str, tier: int, model_version: int) -> bytes:
    """The JSON fields of a record that depend only on its segment (shared by its users)."""
    return b'"status":"assigned","segment_id":%b,"segment":%b,"tier":%b,"model_version":%b' % (
        orjson.dumps(segment_id),
        orjson.dumps(segment),
        orjson.dumps(tier),
        orjson.dumps(model_version),
    )


def encode_records(
    user_ids: Sequence[str],
    *,
    fields: Sequence[bytes],
    distances: Sequence[float] | None,
    top_category_spend: Sequence[str | None],
    top_category_views: Sequence[str | None],
    event_times: Sequence[str],
    computed_at: str,
) -> list[bytes]:
    """`encode_record` of many users at once, byte for byte the same output.

    ``fields`` holds each user's `segment_fields` (or `COLD_START_FIELDS`), ``distances``
    None means null for everyone. The hot path: one template fill per user, no dict.
    """
    dumps = orjson.dumps
    n = len(user_ids)
    if distances is None:
        distance_json = [b"null"] * n
    elif n:
        # One call for the whole column: plain floats hold no comma.
        distance_json = dumps(list(distances))[1:-1].split(b",")
    else:
        distance_json = []
    computed = computed_at.encode()
    return [
        b'{"user_id":%b,%b,"distance":%b,"top_category_spend":%b,"top_category_views":%b,'
        b'"event_time":"%b","computed_at":"%b"}'
        % (dumps(u), f, d, dumps(s), dumps(v), t.encode(), computed)
        for u, f, d, s, v, t in zip(
            user_ids,
            fields,
            distance_json,
            top_category_spend,
            top_category_views,
            event_times,
            strict=True,
        )
    ]


def change_fields(
    segment_id: int, segment: str, tier: int, model_version: int
) -> tuple[bytes, bytes]:
    """The JSON of a segment-change event's new segment: (``segment_id`` value, the
    ``segment``, ``tier`` and ``model_version`` fields), shared by its users."""
    return orjson.dumps(segment_id), b'"segment":%b,"tier":%b,"model_version":%b' % (
        orjson.dumps(segment),
        orjson.dumps(tier),
        orjson.dumps(model_version),
    )


def encode_changes(
    user_ids: Sequence[str],
    *,
    fields: Sequence[tuple[bytes, bytes]],
    previous_ids: Sequence[int],
    event_times: Sequence[str],
    computed_at: str,
    namespace: str,
    previous_namespace: str | None = None,
) -> list[tuple[str, bytes]]:
    """(user id, JSON) of segment-change events, for the ``segments`` topic::

        {"user_id":"u-42","segment_id":3,"previous_segment_id":1,"segment":"champions",
         "tier":1,"model_version":7,"namespace":"streamseg","previous_namespace":"streamseg",
         "event_time":"2026-11-27T10:15:02.113Z","computed_at":"2026-11-27T10:15:02.345Z"}

    ``previous_segment_id`` is null for a user's first segment (``previous_ids`` < 0);
    ``fields`` holds each user's `change_fields`. Segment ids and model versions count per
    namespace: ``namespace`` is where the new segment lives, ``previous_namespace`` (default:
    the same) where ``previous_segment_id`` was looked up; they differ only in the
    announcement after a promote or rollback.
    """
    dumps = orjson.dumps
    computed = computed_at.encode()
    where = b'"namespace":%b,"previous_namespace":%b' % (
        dumps(namespace),
        dumps(namespace if previous_namespace is None else previous_namespace),
    )
    return [
        (
            u,
            b'{"user_id":%b,"segment_id":%b,"previous_segment_id":%b,%b,%b,'
            b'"event_time":"%b","computed_at":"%b"}'
            % (
                dumps(u),
                f[0],
                b"%d" % p if p >= 0 else b"null",
                f[1],
                where,
                t.encode(),
                computed,
            ),
        )
        for u, f, p, t in zip(user_ids, fields, previous_ids, event_times, strict=True)
    ]
