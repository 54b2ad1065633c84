"""`streamseg status` text: what an operator reads off it (pure: no servers)."""

from __future__ import annotations

from typing import Any

from consumer.status import RETIRED, STALE, render_status


def status_of(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "namespace": "shop",
        "model_version": 2,
        "model_created_at": "2026-11-29T10:00:00+00:00",
        "trainer_active": True,
        "segments": [],
        "counters": {},
        "lag": [],
        "consumers": {},
        "heartbeat_seconds": 5.0,
    }
    return {**status, **changes}


def test_a_segment_the_model_dropped_is_named_as_such() -> None:
    segments = [
        {"segment_id": 1, "segment": "champions", "tier": 1, "users": 40},
        {"segment_id": 5, "segment": None, "tier": None, "users": 58},  # retired in v2
    ]
    lines = render_status(status_of(segments=segments)).splitlines()
    retired = next(line for line in lines if line.strip().startswith("5 "))
    assert RETIRED in retired and retired.split()[-1] == "58"


def test_a_consumer_silent_for_three_heartbeats_is_marked_stale() -> None:
    now = 1_000_000.0
    beat = {"host": "vm", "partitions": ["events[0]"], "last_batch_at": None}
    consumers = {
        "alive": {**beat, "pid": 1, "seen_at": now - 4},
        "killed": {**beat, "pid": 2, "seen_at": now - 104},
    }
    lines = render_status(status_of(consumers=consumers), now=now).splitlines()
    assert not next(line for line in lines if "alive" in line).endswith(STALE)
    assert next(line for line in lines if "killed" in line).endswith(STALE)


def test_a_namespace_the_live_pointer_moved_from_points_at_the_live_one() -> None:
    text = render_status(status_of(live_namespace="retrain1"))
    assert text.splitlines()[0] == "namespace      shop (the live pointer names retrain1)"
    assert "streamseg --namespace retrain1 status" in text
    assert "no consumer running" not in text
