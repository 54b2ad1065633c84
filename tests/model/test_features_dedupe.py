"""Duplicate events by event id (a retrying producer without idempotence): applied once
within the user's dedupe window, whatever the batch boundaries and whichever copy comes first."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from model.events import CANONICAL_TYPES
from model.features import (
    COL,
    DEDUPE_SLOTS,
    MS_PER_DAY,
    STATE_FIELDS,
    EventColumns,
    FeatureConfig,
    apply_events,
    category_codes,
    empty_state,
    event_id_hashes,
    state_as_dict,
)
from tests.reference_features import drop_duplicate_event_ids, recompute

CONFIG = FeatureConfig(views_half_life_days=3.0, revenue_half_life_days=20.0)
T0 = 1_700_000_000_000.0
CATEGORIES = ["shoes", "books", "toys"]


def unique_events(rng: random.Random, n: int, users: int) -> list[dict[str, Any]]:
    events = []
    for i in range(n):
        etype = rng.choice(list(CANONICAL_TYPES))
        events.append(
            {
                "event_id": f"e{i}",
                "user_id": f"u{rng.randrange(users)}",
                "type": etype,
                "ts": T0 + rng.uniform(0, 60) * MS_PER_DAY,
                "amount": round(rng.uniform(1, 200), 2) if etype in ("purchase", "refund") else 0.0,
                "category": rng.choice([*CATEGORIES, None]),
            }
        )
    return events


def with_redeliveries(
    rng: random.Random, events: list[dict[str, Any]], share: float, max_gap: int
) -> list[dict[str, Any]]:
    """Each chosen event gets a second copy, inserted up to ``max_gap`` places later in the
    stream (at a later offset); then offsets are assigned in stream order."""
    stream = list(events)
    for e in rng.sample(events, int(len(events) * share)):
        at = stream.index(e) + 1 + rng.randrange(max_gap)
        stream.insert(min(at, len(stream)), dict(e))
    return [{**e, "partition": 0, "offset": i} for i, e in enumerate(stream)]


def apply_in_batches(
    events: list[dict[str, Any]], sizes: list[int], window: int = DEDUPE_SLOTS
) -> tuple[np.ndarray, dict[str, int], int]:
    """State after applying ``events`` in batches of ``sizes``; returns the applied count."""
    rows = {u: i for i, u in enumerate(dict.fromkeys(e["user_id"] for e in events))}
    state = empty_state(len(rows))
    cache: dict[str, float] = {}
    applied = start = 0
    for size in sizes:
        chunk = events[start : start + size]
        start += size
        if not chunk:
            continue
        cols = EventColumns(
            user=np.array([rows[e["user_id"]] for e in chunk], dtype=np.int64),
            ts_ms=np.array([e["ts"] for e in chunk]),
            type_code=np.array([int(CANONICAL_TYPES[e["type"]]) for e in chunk], dtype=np.int8),
            amount=np.array([e["amount"] for e in chunk]),
            category_code=category_codes([e["category"] for e in chunk], cache),
            partition=np.array([e["partition"] for e in chunk], dtype=np.int64),
            offset=np.array([e["offset"] for e in chunk], dtype=np.int64),
            event_id_hash=event_id_hashes([e["event_id"] for e in chunk]),
        )
        applied += int(apply_events(state, cols, CONFIG, dedupe_window=window).sum())
    assert start >= len(events)
    return state, rows, applied


def random_sizes(rng: random.Random, n: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(rng.choice([1, 2, 3, 7, 20, 100]))
    return sizes


def assert_matches_reference(
    state: np.ndarray, rows: dict[str, int], events: list[dict[str, Any]]
) -> None:
    names = {float(c): n for n, c in zip(CATEGORIES, category_codes(CATEGORIES, {}), strict=True)}
    expected = recompute(events, CONFIG)
    assert set(expected) == set(rows)
    for user, want in expected.items():
        got: dict[str, Any] = state_as_dict(state[rows[user]], names)
        for key, value in want.items():
            if key == "categories":
                assert list(got[key]) == list(value), user
                for cat, parts in value.items():
                    for part, v in parts.items():
                        assert got[key][cat][part] == pytest.approx(v, rel=1e-9, abs=1e-12)
            else:
                np.testing.assert_allclose(got[key], value, rtol=1e-9, err_msg=f"{user} {key}")


def first_copies(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stream with every event id kept once (its first copy): what should be applied."""
    seen: set[str] = set()
    out = []
    for e in stream:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_copies_within_the_window_are_applied_once_whatever_the_batches(seed: int) -> None:
    rng = random.Random(seed)
    events = unique_events(rng, 300, users=12)
    # A copy at most 3 places later in the whole stream is within any user's last 8 events.
    stream = with_redeliveries(rng, events, share=0.4, max_gap=3)
    assert len(stream) > len(events)
    assert drop_duplicate_event_ids(stream, DEDUPE_SLOTS) == first_copies(stream)
    states = []
    for sizes in ([len(stream)], [1] * len(stream), random_sizes(rng, len(stream))):
        state, rows, applied = apply_in_batches(stream, sizes)
        assert applied == len(events)
        assert_matches_reference(state, rows, first_copies(stream))
        states.append(state)
    # The dedupe bookkeeping is exactly the same whatever the batch boundaries.
    tail = slice(STATE_FIELDS.index("event_ids_seen"), None)
    for other in states[1:]:
        np.testing.assert_array_equal(other[:, tail], states[0][:, tail])


def test_whichever_copy_comes_first_the_features_are_the_same() -> None:
    rng = random.Random(11)
    events = [{**e, "partition": 0, "offset": i} for i, e in enumerate(unique_events(rng, 80, 5))]
    # The same event twice in a row; then the pair swapped with the next event of the stream.
    doubled = [c for e in events for c in (e, {**e})]
    swapped = list(doubled)
    for i in range(0, len(swapped) - 2, 6):
        swapped[i + 1], swapped[i + 2] = swapped[i + 2], swapped[i + 1]
    reference, rows, _ = apply_in_batches(renumber(events), [len(events)])
    for stream in (doubled, swapped):
        state, rows2, applied = apply_in_batches(renumber(stream), random_sizes(rng, len(stream)))
        assert applied == len(events) and rows2.keys() == rows.keys()
        acc = [STATE_FIELDS.index(f) for f in ("purchases", "purchase_amount", "views", "carts")]
        for user, r in rows.items():
            np.testing.assert_allclose(state[rows2[user], acc], reference[r, acc], rtol=1e-9)


def renumber(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "offset": i} for i, e in enumerate(stream)]


def test_a_copy_beyond_the_window_is_applied_again_and_the_window_is_configurable() -> None:
    base = {"user_id": "u", "type": "view", "ts": T0, "amount": 0.0, "category": None}
    # e0, then six other events, then e0 again: 6 applied events in between.
    ids = ["e0", *(f"x{i}" for i in range(6)), "e0"]
    stream = [{**base, "event_id": e, "partition": 0, "offset": i} for i, e in enumerate(ids)]
    for window, applied_expected in ((8, 7), (7, 7), (6, 8), (1, 8), (0, 8)):
        for sizes in ([len(stream)], [1] * len(stream)):
            state, _, applied = apply_in_batches(stream, sizes, window=window)
            assert applied == applied_expected, (window, sizes)
            assert len(drop_duplicate_event_ids(stream, window)) == applied_expected
            assert state[0, COL["views"]] == pytest.approx(applied_expected)


def test_a_redelivered_batch_after_a_duplicate_changes_nothing() -> None:
    base: dict[str, Any] = {
        "user_id": "u",
        "type": "purchase",
        "ts": T0,
        "amount": 10.0,
        "category": "shoes",
    }
    stream = [
        {**base, "event_id": e, "partition": 0, "offset": i}
        for i, e in enumerate(["a", "b", "a", "c", "b"])
    ]
    state, _, applied = apply_in_batches(stream, [len(stream)])
    assert applied == 3
    # The last stored offset is that of "c" (the last applied event), not the skipped copy.
    assert state[0, COL["offset"]] == 3
    before = state.copy()
    state2 = before.copy()
    cache: dict[str, float] = {}
    cols = EventColumns(
        user=np.zeros(len(stream), dtype=np.int64),
        ts_ms=np.full(len(stream), T0),
        type_code=np.full(len(stream), int(CANONICAL_TYPES["purchase"]), dtype=np.int8),
        amount=np.full(len(stream), 10.0),
        category_code=category_codes(["shoes"] * len(stream), cache),
        partition=np.zeros(len(stream), dtype=np.int64),
        offset=np.arange(len(stream), dtype=np.int64),
        event_id_hash=event_id_hashes([e["event_id"] for e in stream]),
    )
    assert not apply_events(state2, cols, CONFIG).any()
    np.testing.assert_array_equal(state2, before)


def test_without_event_id_hashes_nothing_is_deduplicated() -> None:
    state = empty_state(1)
    cols = EventColumns(
        user=np.zeros(3, dtype=np.int64),
        ts_ms=np.full(3, T0),
        type_code=np.full(3, int(CANONICAL_TYPES["view"]), dtype=np.int8),
        amount=np.zeros(3),
        category_code=np.full(3, np.nan),
        partition=np.zeros(3, dtype=np.int64),
        offset=np.arange(3, dtype=np.int64),
    )
    assert apply_events(state, cols, CONFIG).all()
    assert state[0, COL["views"]] == pytest.approx(3)
    with pytest.raises(ValueError, match="dedupe_window"):
        apply_events(empty_state(1), cols, CONFIG, dedupe_window=DEDUPE_SLOTS + 1)
