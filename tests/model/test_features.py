"""The vectorised feature maths against the written definition."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import numpy as np
import pytest

from model.events import CANONICAL_TYPES
from model.features import (
    COL,
    FEATURE_NAMES,
    MS_PER_DAY,
    EventColumns,
    FeatureConfig,
    apply_events,
    category_codes,
    derive_features,
    empty_state,
    state_as_dict,
    top_categories,
    users_on_several_partitions,
)
from tests.reference_features import recompute

CONFIG = FeatureConfig(views_half_life_days=3.0, revenue_half_life_days=20.0)
T0 = 1_700_000_000_000.0
CATEGORIES = [f"cat{i}" for i in range(9)]  # more than the slots, to exercise the cap


def random_events(rng: random.Random, n: int, users: int) -> list[dict[str, Any]]:
    events = []
    for offset in range(n):
        etype = rng.choice(list(CANONICAL_TYPES))
        events.append(
            {
                "user_id": f"u{rng.randrange(users)}",
                "type": etype,
                # out of order by up to 30 days
                "ts": T0 + rng.uniform(0, 60) * MS_PER_DAY,
                "amount": round(rng.lognormvariate(3, 1), 2)
                if etype in ("purchase", "refund")
                else 0.0,
                "category": rng.choice([*CATEGORIES, None]),
                "partition": 0,
                "offset": offset,
            }
        )
    return events


def run_batches(
    events: list[dict[str, Any]], sizes: list[int], state: np.ndarray, rows: dict[str, int]
) -> None:
    cache: dict[str, float] = {}
    start = 0
    for size in sizes:
        chunk = events[start : start + size]
        start += size
        if not chunk:
            continue
        cols = EventColumns(
            user=np.array([rows[e["user_id"]] for e in chunk]),
            ts_ms=np.array([e["ts"] for e in chunk]),
            type_code=np.array([int(CANONICAL_TYPES[e["type"]]) for e in chunk], dtype=np.int8),
            amount=np.array([e["amount"] for e in chunk]),
            category_code=category_codes([e["category"] for e in chunk], cache),
            partition=np.array([e["partition"] for e in chunk]),
            offset=np.array([e["offset"] for e in chunk]),
        )
        apply_events(state, cols, CONFIG)


def assert_matches_reference(
    state: np.ndarray, rows: dict[str, int], events: list[dict[str, Any]]
) -> None:
    names = {float(c): n for n, c in zip(CATEGORIES, category_codes(CATEGORIES, {}), strict=True)}
    expected = recompute(events, CONFIG)
    for user, want in expected.items():
        got: dict[str, Any] = state_as_dict(state[rows[user]], names)
        for key, value in want.items():
            if key == "categories":
                assert list(got[key]) == list(value), user
                for cat, parts in value.items():
                    for part, v in parts.items():
                        assert got[key][cat][part] == pytest.approx(v, rel=1e-9, abs=1e-12)
            elif isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[key])
            else:
                assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (user, key)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_state_equals_independent_recomputation_whatever_the_batching(seed: int) -> None:
    rng = random.Random(seed)
    events = random_events(rng, 3000, users=40)
    rows = {f"u{i}": i for i in range(40)}
    for sizes in ([3000], [1] * 3000, [rng.randint(1, 400) for _ in range(60)]):
        state = empty_state(40)
        run_batches(events, sizes, state, rows)
        assert_matches_reference(state, rows, events)


def test_redelivered_events_are_not_applied_twice() -> None:
    rng = random.Random(7)
    events = random_events(rng, 500, users=10)
    rows = {f"u{i}": i for i in range(10)}
    state = empty_state(10)
    run_batches(events, [300], state, rows)
    # a crash before the offset commit redelivers from offset 100: 100..299 must be skipped
    run_batches(events[100:], [400], state, rows)
    assert_matches_reference(state, rows, events)


def test_users_whose_events_come_from_several_partitions_are_found() -> None:
    """Within the batch, or between the batch and the partition the state last applied."""
    state = empty_state(5)
    state[3, COL["partition"]] = 2  # user 3 last applied an event of partition 2
    state[4, COL["partition"]] = 1
    user = np.array([0, 0, 1, 1, 2, 3, 4, 4])
    partition = np.array([0, 0, 0, 1, 5, 0, 1, 1])
    cols = EventColumns(
        user=user,
        ts_ms=np.full(len(user), T0),
        type_code=np.zeros(len(user), dtype=np.int8),
        amount=np.zeros(len(user)),
        category_code=np.full(len(user), np.nan),
        partition=partition,
        offset=np.arange(len(user)),
    )
    applied = np.ones(len(user), dtype=bool)
    found = users_on_several_partitions(state[:, COL["partition"]], cols, applied)
    assert found.tolist() == [1, 3]  # 0: one partition; 2: first event; 4: same as before
    # Only applied events count: user 1's event of partition 1 skipped as a duplicate.
    applied[3] = False
    found = users_on_several_partitions(state[:, COL["partition"]], cols, applied)
    assert found.tolist() == [3]
    assert users_on_several_partitions(state[:, COL["partition"]], cols, applied & False).size == 0
    # A batch of one partition (the usual case) checks against the stored partitions alone.
    one = dataclasses.replace(cols, partition=np.ones(len(user), dtype=np.int64))
    found = users_on_several_partitions(state[:, COL["partition"]], one, np.ones(len(user), bool))
    assert found.tolist() == [3]


def test_arrival_order_does_not_change_the_state_beyond_rounding() -> None:
    rng = random.Random(11)
    events = [e for e in random_events(rng, 2000, users=20) if e["category"] is None]
    rows = {f"u{i}": i for i in range(20)}
    ordered = sorted(events, key=lambda e: e["ts"])
    shuffled = list(events)
    rng.shuffle(shuffled)
    states = []
    for evs in (ordered, shuffled):
        renumbered = [dict(e, offset=i) for i, e in enumerate(evs)]
        state = empty_state(20)
        run_batches(renumbered, [137] * 20, state, rows)
        states.append(state)
    acc = [COL[n] for n in ("purchases", "purchase_amount", "views", "engagement", "last_ts_ms")]
    np.testing.assert_allclose(states[0][:, acc], states[1][:, acc], rtol=1e-12)


def test_derived_features_follow_their_formulas() -> None:
    state = empty_state(2)
    day = MS_PER_DAY
    evs = [
        ("purchase", 0.0, 100.0),
        ("purchase", 10 * day, 50.0),
        ("view", 10 * day, 0.0),
        ("cart", 10 * day, 0.0),
        ("refund", 10 * day, 30.0),
    ]
    cols = EventColumns(
        user=np.zeros(len(evs), dtype=np.int64),
        ts_ms=np.array([T0 + t for _, t, _ in evs]),
        type_code=np.array([int(CANONICAL_TYPES[k]) for k, _, _ in evs], dtype=np.int8),
        amount=np.array([a for _, _, a in evs]),
        category_code=np.full(len(evs), np.nan),
        partition=np.zeros(len(evs), dtype=np.int64),
        offset=np.arange(len(evs)),
    )
    apply_events(state, cols, CONFIG)
    now = T0 + 30 * day  # 20 days after the last event
    x = dict(zip(FEATURE_NAMES, derive_features(state, now, CONFIG)[0], strict=True))
    p = 0.5 ** (30 / 90) + 0.5 ** (20 / 90)
    amount = 100 * 0.5 ** (30 / 20) + 50 * 0.5 ** (20 / 20)
    refund = 30 * 0.5 ** (20 / 20)
    assert x["recency_days"] == pytest.approx(20)
    assert x["purchases"] == pytest.approx(p)
    assert x["net_revenue"] == pytest.approx(amount - refund)
    assert x["avg_order_value"] == pytest.approx(amount / p)
    assert x["views"] == pytest.approx(0.5 ** (20 / 3))
    assert x["carts"] == pytest.approx(0.5 ** (20 / 14))
    assert x["cart_to_purchase"] == pytest.approx(1.0)  # more purchases than carts: capped at 1
    assert x["view_to_purchase"] == pytest.approx(1.0)
    assert x["tenure_days"] == pytest.approx(30)
    # the user with no event: zeros, recency at the cap
    empty = dict(zip(FEATURE_NAMES, derive_features(state, now, CONFIG)[1], strict=True))
    assert empty["recency_days"] == CONFIG.recency_cap_days
    assert empty["purchases"] == 0 and empty["tenure_days"] == 0


def test_top_categories_by_spend_and_by_views() -> None:
    state = empty_state(1)
    names = ["shoes", "books", "toys"]
    codes = category_codes(names, {})
    cols = EventColumns(
        user=np.zeros(4, dtype=np.int64),
        ts_ms=np.full(4, T0),
        type_code=np.array(
            [int(CANONICAL_TYPES[t]) for t in ("view", "view", "purchase", "view")], dtype=np.int8
        ),
        amount=np.array([0, 0, 80.0, 0]),
        category_code=np.array([codes[0], codes[0], codes[1], codes[2]]),
        partition=np.zeros(4, dtype=np.int64),
        offset=np.arange(4),
    )
    apply_events(state, cols, CONFIG)
    by_spend, by_views = top_categories(state)
    assert by_spend[0] == codes[1]
    assert by_views[0] == codes[0]
