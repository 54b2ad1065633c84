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
