"""Scored users -> segment records, segment-size deltas and segment-change events.

Shared by a batch, the re-score pass, the announcement after a namespace switch and a
replay's final scoring: each hands over users, their states and their derived features, and
writes what comes back.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from consumer.segment_record import (
    COLD_START_FIELDS,
    change_fields,
    encode_changes,
    encode_records,
    iso_ms,
    iso_ms_array,
    segment_fields,
)
from model.features import COL, top_categories

if TYPE_CHECKING:
    from model.model_format import SegmentModel

#: Segment records, segment id -> change in size, and (user id, change event) pairs.
Assignment = tuple[list[bytes], dict[int, int], list[tuple[str, bytes]]]


class SegmentFields:
    """`segment_fields` and `change_fields` of each centre position of a model, computed once
    per model (the last one asked for)."""

    def __init__(self) -> None:
        self._model: SegmentModel | None = None
        self._records: list[bytes] = []
        self._changes: list[tuple[bytes, bytes]] = []

    def of(self, model: SegmentModel) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        """Record fields and change-event fields of each of ``model``'s centre positions."""
        if self._model is not model:
            segments = list(
                zip(model.ids, model.names_array.tolist(), model.tiers_array.tolist(), strict=True)
            )
            version = model.model_version
            self._records = [
                segment_fields(int(i), name, int(tier), version) for i, name, tier in segments
            ]
            self._changes = [
                change_fields(int(i), name, int(tier), version) for i, name, tier in segments
            ]
            self._model = model
        return self._records, self._changes


def assign_segments(
    model: SegmentModel | None,
    users: list[str],
    states: np.ndarray,
    features: np.ndarray,
    *,
    category_names: dict[float, str],
    margin: float,
    namespace: str,
    fields: SegmentFields,
) -> Assignment:
    """Assign ``users`` (rows of ``states`` and ``features``) with ``model`` and encode what
    to write; sets the states' segment id and model version.

    Without a model every user gets a cold-start record, no size delta and no change event.
    ``margin`` is the hysteresis margin of `SegmentModel.assign`; ``category_names`` maps the
    codes in ``states`` to names for the records' top categories.
    """
    computed_at = iso_ms(time.time() * 1000.0)
    event_times = iso_ms_array(states[:, COL["last_ts_ms"]])
    by_spend, by_views = top_categories(states)
    spend_names = [category_names.get(c) if c == c else None for c in by_spend.tolist()]
    view_names = [category_names.get(c) if c == c else None for c in by_views.tolist()]
    if model is None:
        records = encode_records(
            users,
            fields=[COLD_START_FIELDS] * len(users),
            distances=None,
            top_category_spend=spend_names,
            top_category_views=view_names,
            event_times=event_times,
            computed_at=computed_at,
        )
        return records, {}, []
    previous = states[:, COL["segment_id"]].astype(np.int64)
    ids, positions, distances = model.assign(features, previous_ids=previous, margin=margin)
    states[:, COL["segment_id"]] = ids
    states[:, COL["model_version"]] = model.model_version
    per_segment, per_segment_change = fields.of(model)
    records = encode_records(
        users,
        fields=[per_segment[p] for p in positions.tolist()],
        distances=np.round(distances, 6).tolist(),
        top_category_spend=spend_names,
        top_category_views=view_names,
        event_times=event_times,
        computed_at=computed_at,
    )
    changed = np.flatnonzero(ids != previous)
    changes = encode_changes(
        [users[i] for i in changed.tolist()],
        fields=[per_segment_change[p] for p in positions[changed].tolist()],
        previous_ids=previous[changed].tolist(),
        event_times=[event_times[i] for i in changed.tolist()],
        computed_at=computed_at,
        namespace=namespace,
    )
    return records, segment_size_changes(ids[changed], previous[changed]), changes


def segment_size_changes(joined: np.ndarray, left: np.ndarray) -> dict[int, int]:
    """Segment id -> users gained less users lost, for users moving from ``left`` (-1 = no
    segment before) to ``joined``; ids whose size did not change are left out."""
    sizes: Counter[int] = Counter()
    ids, counts = np.unique(joined, return_counts=True)
    sizes.update(dict(zip(ids.tolist(), counts.tolist(), strict=True)))
    ids, counts = np.unique(left[left >= 0], return_counts=True)
    sizes.subtract(dict(zip(ids.tolist(), counts.tolist(), strict=True)))
    return {k: v for k, v in sizes.items() if v}
