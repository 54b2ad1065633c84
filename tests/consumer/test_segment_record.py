"""The bulk record encoder writes exactly what the one-record encoder writes."""

from __future__ import annotations

import orjson

from consumer.segment_record import (
    COLD_START_FIELDS,
    SegmentRecord,
    change_fields,
    encode_changes,
    encode_record,
    encode_records,
    segment_fields,
)

USERS = ["u-1", 'quo"te', "{a}: %7B ü 😀", "tab\tnew\nline", "7"]
SPEND = ["shoes", None, 'b"ooks', "ü", None]
VIEWS = [None, "toys", "x", "\\", "garden"]
TIMES = ["2026-11-27T10:15:02.113Z"] * 4 + ["1999-01-01T00:00:00.000Z"]
DISTANCES = [0.84, 1e-06, 0.0, 12345.678901, 3.0]
SEGMENTS = [(3, "champions", 1), (0, 'big "spenders" at risk', 4), (17, "ü new", 2)]


def test_assigned_records_match_byte_for_byte() -> None:
    fields = [segment_fields(*SEGMENTS[i % 3], 7) for i in range(len(USERS))]
    bulk = encode_records(
        USERS,
        fields=fields,
        distances=DISTANCES,
        top_category_spend=SPEND,
        top_category_views=VIEWS,
        event_times=TIMES,
        computed_at="2026-11-27T10:15:02.345Z",
    )
    for i, user in enumerate(USERS):
        segment_id, name, tier = SEGMENTS[i % 3]
        one = encode_record(
            user,
            segment_id=segment_id,
            segment=name,
            tier=tier,
            model_version=7,
            distance=DISTANCES[i],
            top_category_spend=SPEND[i],
            top_category_views=VIEWS[i],
            event_time=TIMES[i],
            computed_at="2026-11-27T10:15:02.345Z",
        )
        assert bulk[i] == one
        assert SegmentRecord.model_validate_json(bulk[i]).user_id == user


def test_cold_start_records_match_byte_for_byte() -> None:
    bulk = encode_records(
        USERS,
        fields=[COLD_START_FIELDS] * len(USERS),
        distances=None,
        top_category_spend=SPEND,
        top_category_views=VIEWS,
        event_times=TIMES,
        computed_at="2026-11-27T10:15:02.345Z",
    )
    for i, user in enumerate(USERS):
        one = encode_record(
            user,
            segment_id=None,
            segment=None,
            tier=None,
            model_version=None,
            distance=None,
            top_category_spend=SPEND[i],
            top_category_views=VIEWS[i],
            event_time=TIMES[i],
            computed_at="2026-11-27T10:15:02.345Z",
        )
        assert bulk[i] == one
        assert orjson.loads(bulk[i])["status"] == "cold_start"


def test_no_users_no_records() -> None:
    empty = encode_records(
        [],
        fields=[],
        distances=[],
        top_category_spend=[],
        top_category_views=[],
        event_times=[],
        computed_at="2026-11-27T10:15:02.345Z",
    )
    assert empty == []


def test_change_events_are_the_documented_json() -> None:
    previous = [1, -1, 0, 17, 3]
    changes = encode_changes(
        USERS,
        fields=[change_fields(*SEGMENTS[i % 3], 7) for i in range(len(USERS))],
        previous_ids=previous,
        event_times=TIMES,
        computed_at="2026-11-27T10:15:02.345Z",
        namespace="r1",
        previous_namespace="streamseg",
    )
    assert [user for user, _ in changes] == USERS
    for i, (user, raw) in enumerate(changes):
        segment_id, name, tier = SEGMENTS[i % 3]
        assert raw == orjson.dumps(
            {
                "user_id": user,
                "segment_id": segment_id,
                "previous_segment_id": previous[i] if previous[i] >= 0 else None,
                "segment": name,
                "tier": tier,
                "model_version": 7,
                "namespace": "r1",
                "previous_namespace": "streamseg",
                "event_time": TIMES[i],
                "computed_at": "2026-11-27T10:15:02.345Z",
            }
        )


def test_a_change_event_looks_up_its_previous_segment_in_its_own_namespace_by_default() -> None:
    [(_, raw)] = encode_changes(
        ["u-1"],
        fields=[change_fields(2, "loyal", 2, 3)],
        previous_ids=[1],
        event_times=[TIMES[0]],
        computed_at="2026-11-27T10:15:02.345Z",
        namespace="streamseg",
    )
    event = orjson.loads(raw)
    assert (event["namespace"], event["previous_namespace"]) == ("streamseg", "streamseg")
