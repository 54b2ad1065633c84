"""The announcement after a namespace switch: the segments topic learns each user's segment
in the namespace a pipeline now writes.

Segment ids and model versions count within a namespace. When a promote or rollback moves a
pipeline that follows the live pointer, the topic's latest event of an idle user would name
the old namespace's segment; so before its next batch the pipeline sends one change event per
user of its partitions that has a segment in the new namespace (``previous_namespace`` and
``previous_segment_id`` say where it came from). See README, "Reading segments".
"""

from __future__ import annotations

import logging
import time
from datetime import UTC
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from consumer.redis_keys import KeyLayout
from consumer.segment_record import SegmentRecord, change_fields, encode_changes, iso_ms
from consumer.state_store import StateStore, read_values
from model.features import COL

if TYPE_CHECKING:
    from consumer.pipeline import SegmentPipeline

log = logging.getLogger(__name__)

#: State keys one SCAN chunk asks for.
_CHUNK_KEYS = 2000


def announce_segments(pipeline: SegmentPipeline, previous: KeyLayout, owned: frozenset[int]) -> int:
    """After a promote or rollback moved ``pipeline``: one change event per user of the
    ``owned`` partitions with a segment in the namespace now written, naming that record's
    segment (``previous_segment_id``: the user's segment in ``previous``, null if none).

    Segment ids and versions are per namespace, so without it the segments topic's latest
    event of an idle user would name the old namespace's segment. It runs before the next
    batch: the events of this process's partitions stay in order. Returns the count.
    """
    if not owned:
        return 0
    before = StateStore(pipeline.redis, previous)
    sent, cursor = 0, 0
    while True:
        cursor, found = pipeline.store.scan_state_keys(cursor, count=_CHUNK_KEYS)
        assigned = _assigned_records(pipeline, found, owned)
        if assigned:
            ids = [user for user, _, _ in assigned]
            was = before.read_states(ids)[:, COL["segment_id"]].astype(np.int64)
            changes = encode_changes(
                ids,
                fields=[fields for _, fields, _ in assigned],
                previous_ids=was.tolist(),
                event_times=[event_time for _, _, event_time in assigned],
                computed_at=iso_ms(time.time() * 1000.0),
                namespace=pipeline.keys.namespace,
                previous_namespace=previous.namespace,
            )
            pipeline.send_changes(changes)
            pipeline.redis.hincrby(pipeline.keys.counters, "segment_changes", len(changes))
            pipeline.count_changes(len(changes))
            sent += len(changes)
        if cursor == 0:
            return sent


def _assigned_records(
    pipeline: SegmentPipeline, state_keys: list[bytes], owned: frozenset[int]
) -> list[tuple[str, tuple[bytes, bytes], str]]:
    """The users of ``state_keys`` in ``owned`` partitions that have a segment, each with
    the change-event fields and event time of their stored record. A record that is not
    one (edited by hand, or another program's) is left out with a warning: the user's
    next event or re-score pass rewrites it."""
    users = [pipeline.keys.user_from_state_key(k.decode()) for k in state_keys]
    if not users:
        return []
    states = pipeline.store.read_states(users)
    mine = np.isin(states[:, COL["partition"]], list(owned)) & (states[:, COL["segment_id"]] >= 0)
    users = [u for u, m in zip(users, mine, strict=True) if m]
    keys = [pipeline.keys.segment(u) for u in users]
    found: list[tuple[str, tuple[bytes, bytes], str]] = []
    for user, key, raw in zip(users, keys, read_values(pipeline.redis, keys), strict=True):
        if raw is None:
            continue
        try:
            r = SegmentRecord.model_validate_json(raw)
        except ValidationError:
            log.warning("not announced: %s does not hold a segment record", key)
            continue
        if r.segment_id is None or r.segment is None or r.tier is None:
            continue  # cold start: nothing to announce
        fields = change_fields(r.segment_id, r.segment, r.tier, r.model_version or 0)
        event_time = r.event_time.astimezone(UTC).isoformat(timespec="milliseconds")
        found.append((user, fields, event_time.replace("+00:00", "Z")))
    return found
