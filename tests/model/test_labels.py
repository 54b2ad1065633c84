"""Labels: names from documented rules, value tiers, de-duplication, profiles."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model.labels import (
    MAX_NAME_CHARS,
    NamingRules,
    label_segments,
    name_segments,
    profile_segments,
    unique_names,
    value_order,
    value_scores,
    value_tiers,
    with_chosen_names,
)

# The model's columns, in order (model/features.py owns the real list).
FEATURES = [
    "recency_days",
    "purchases",
    "net_revenue",
    "avg_order_value",
    "views",
    "carts",
    "cart_to_purchase",
    "view_to_purchase",
    "engagement",
    "tenure_days",
]
COL = {f: j for j, f in enumerate(FEATURES)}


def centre(
    recency: float,
    purchases: float,
    revenue: float,
    aov: float,
    views: float,
    carts: float,
    engagement: float,
    tenure: float,
) -> list[float]:
    c2p = min(purchases / carts, 1.0) if carts else 0.0
    v2p = min(purchases / views, 1.0) if views else 0.0
    return [recency, purchases, revenue, aov, views, carts, c2p, v2p, engagement, tenure]


# Typical members of eleven segments, business units, with the name the rules must give.
ARCHETYPES = {
    "champions": centre(5, 12, 1500, 125, 80, 20, 6, 700),
    "bargain hunters": centre(7, 10, 150, 15, 40, 15, 2, 500),
    "loyal": centre(12, 9, 450, 50, 30, 12, 3, 600),
    "big spenders at risk": centre(75, 4, 1200, 300, 20, 5, 1, 400),
    "lapsed": centre(250, 6, 1300, 217, 5, 2, 0.5, 800),
    "new customers": centre(3, 1, 60, 60, 15, 3, 0.2, 10),
    "window shoppers": centre(365, 0, 0, 0, 60, 8, 0.3, 200),
    "new visitors": centre(365, 0, 0, 0, 5, 1, 0.1, 5),
    "inactive": centre(365, 0, 0, 0, 0.5, 0, 0, 300),
    "net refunders": centre(20, 2, -80, 70, 10, 3, 0.2, 250),
    "big spenders": centre(8, 3, 1400, 450, 25, 4, 1, 300),
}
EXPECTED = list(ARCHETYPES)
CENTRES = np.array(list(ARCHETYPES.values()))


def test_each_archetype_gets_its_documented_name() -> None:
    names, _, _ = name_segments(CENTRES, FEATURES)
    assert names == EXPECTED


def test_tier_one_is_the_highest_value_and_ties_break_deterministically() -> None:
    labels = label_segments(CENTRES, CENTRES, np.arange(len(CENTRES)), FEATURES)
    by_tier = [EXPECTED[p] for p in np.argsort(labels.tiers)]
    # Value = 0.5 * R / 1500 + 0.5 * P / 12: 1.0, 0.68, 0.59, 0.57, 0.53, 0.47, 0.06, 0.06, ...;
    # the three non-buyers tie at 0 and keep their position order.
    assert by_tier == [
        "champions",
        "lapsed",
        "big spenders",
        "big spenders at risk",
        "loyal",
        "bargain hunters",
        "new customers",
        "net refunders",
        "window shoppers",
        "new visitors",
        "inactive",
    ]
    assert labels.value_scores[labels.tiers == 1][0] == labels.value_scores.max()


def test_names_follow_their_segment_when_positions_are_permuted() -> None:
    perm = np.random.default_rng(0).permutation(len(CENTRES))
    names, _, _ = name_segments(CENTRES[perm], FEATURES)
    assert names == [EXPECTED[p] for p in perm]
    assert name_segments(CENTRES[perm], FEATURES)[0] == names  # deterministic


def test_equal_names_are_numbered_in_value_order() -> None:
    weaker_champions = CENTRES[0] * [1, 1, 0.9, 1, 1, 1, 1, 1, 1, 1]
    centres = np.vstack([weaker_champions, CENTRES])
    names, _, _ = name_segments(centres, FEATURES)
    assert names[0] == "champions (2)" and names[1] == "champions"
    assert len(set(names)) == len(names)


def test_a_numbered_name_stays_with_its_segment_id_when_value_order_flips() -> None:
    """Two "champions" segments whose value order swaps between two models: each keeps the
    name its id had, instead of the " (2)" moving to the other id."""
    weaker_champions = CENTRES[0] * [1, 1, 0.9, 1, 1, 1, 1, 1, 1, 1]
    before, _, _ = name_segments(np.vstack([weaker_champions, CENTRES]), FEATURES)
    assert before[:2] == ["champions (2)", "champions"]
    stronger = CENTRES[0] * [1, 1, 1.2, 1, 1, 1, 1, 1, 1, 1]  # segment 0 now leads
    centres = np.vstack([stronger, CENTRES])
    assert name_segments(centres, FEATURES)[0][:2] == ["champions", "champions (2)"]
    after, _, _ = name_segments(centres, FEATURES, previous_names=before)
    assert after == before
    # A new id (None) or a segment whose rule changed takes the first free name.
    renamed = [None, *before[1:]]
    assert name_segments(centres, FEATURES, previous_names=renamed)[0][:2] == [
        "champions (2)",
        "champions",
    ]
    was_loyal = ["loyal (2)", *before[1:]]
    assert name_segments(centres, FEATURES, previous_names=was_loyal)[0] == before
    # Once no other segment shares it, a numbered name is plain again.
    alone, _, _ = name_segments(
        np.vstack([stronger, CENTRES[1:]]), FEATURES, previous_names=before[:1] + before[2:]
    )
    assert alone[0] == "champions"


def test_names_stay_unique_whatever_the_previous_names() -> None:
    """Previous names that collide (a hand-edited model) cannot make two segments share one."""
    weaker_champions = CENTRES[0] * [1, 1, 0.9, 1, 1, 1, 1, 1, 1, 1]
    centres = np.vstack([weaker_champions, weaker_champions * 0.99, CENTRES])
    previous = ["champions", "champions", "champions (2)", *EXPECTED[1:]]
    names, _, _ = name_segments(centres, FEATURES, previous_names=previous)
    assert len(set(names)) == len(names)
    assert sorted(n for n in names if n.startswith("champions")) == [
        "champions",
        "champions (2)",
        "champions (3)",
    ]


def test_without_prices_no_segment_is_named_for_spending() -> None:
    """A shop's data without prices (``--default amount=0``): value comes from purchases
    alone, so frequent buyers who went quiet are "at risk", not "big spenders at risk"."""
    no_money = CENTRES.copy()
    no_money[:, [COL["net_revenue"], COL["avg_order_value"]]] = 0.0
    names, _, _ = name_segments(no_money, FEATURES)
    assert names[EXPECTED.index("big spenders at risk")] == "at risk"
    assert not [n for n in names if "spender" in n]


def test_a_segment_refunding_more_than_it_buys_is_net_refunders_even_without_purchases() -> None:
    """Refunds of orders older than the data: users with no purchase in it, revenue < 0."""
    refunders = centre(40, 0, -300, 0, 3, 0, 0.1, 200)
    names, _, _ = name_segments(np.vstack([CENTRES, refunders]), FEATURES)
    assert names[-1] == "net refunders (2)"
    # Window shoppers a few of whom refunded: a typical member just below 0 is no refunder.
    browsers = centre(365, 0, -0.06, 0, 60, 8, 0.3, 200)
    names, _, _ = name_segments(np.vstack([CENTRES, browsers]), FEATURES)
    assert names[-1] == "window shoppers (2)"


def test_anchors_are_configurable() -> None:
    strict = NamingRules(active_days=3.0)
    names, _, _ = name_segments(CENTRES, FEATURES, strict)
    assert names[EXPECTED.index("champions")] == "big spenders at risk"


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-3, 1e3))
def test_tiers_and_names_do_not_depend_on_the_currency_unit(rate: float) -> None:
    converted = CENTRES.copy()
    converted[:, [COL["net_revenue"], COL["avg_order_value"]]] *= rate
    names, _, order = name_segments(converted, FEATURES)
    assert names == EXPECTED
    assert value_tiers(order).tolist() == value_tiers(name_segments(CENTRES, FEATURES)[2]).tolist()


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.just(len(FEATURES))),
        elements=st.floats(0, 1e4),
    ),
    st.booleans(),
)
def test_any_centres_get_unique_names_and_a_full_ranking(raw: np.ndarray, refunds: bool) -> None:
    centres = raw.copy()
    if refunds:
        centres[:, COL["net_revenue"]] -= 5e3
    names, scores, order = name_segments(centres, FEATURES)
    tiers = value_tiers(order)
    assert len(set(names)) == len(names)
    assert sorted(tiers.tolist()) == list(range(1, len(centres) + 1))
    assert scores[tiers == 1][0] == scores.max()
    assert np.all(np.diff(scores[order]) <= 0)


def test_rounding_noise_does_not_order_segments_of_equal_value() -> None:
    """Three non-buying centres came back from the scaled space with net revenue -1.32e-15,
    -1.48e-15 and -1.15e-15: the noise decided their tiers (a walkthrough saw [5, 6, 4])."""
    revenue = np.array([-1.32e-15, -1.48e-15, -1.15e-15, 250.0])
    purchases = np.array([1e-16, 0.0, -1e-17, 3.0])
    scores = value_scores(revenue, purchases)
    assert value_order(scores, revenue, purchases).tolist() == [3, 0, 1, 2]


def test_grouped_tiers_are_even_and_monotone() -> None:
    scores = value_scores(CENTRES[:, COL["net_revenue"]], CENTRES[:, COL["purchases"]])
    order = value_order(scores, CENTRES[:, COL["net_revenue"]], CENTRES[:, COL["purchases"]])
    tiers = value_tiers(order, n_tiers=3)
    assert np.bincount(tiers).tolist() == [0, 4, 4, 3]
    assert np.all(np.diff(tiers[order]) >= 0)
    assert value_tiers(order, n_tiers=50).tolist() == value_tiers(order).tolist()


def test_profiles_are_means_of_assigned_users_in_business_units() -> None:
    rng = np.random.default_rng(1)
    positions = np.array([0, 0, 0, 1, 1, 3])  # segment 2 has nobody
    X = CENTRES[positions] * rng.uniform(0.8, 1.2, (6, len(FEATURES)))
    profiles = profile_segments(X, positions, CENTRES[:4], FEATURES)
    assert [p.size for p in profiles] == [3, 2, 0, 1]
    assert profiles[0].share == pytest.approx(0.5)
    assert profiles[0].mean_net_revenue == pytest.approx(X[:3, COL["net_revenue"]].mean())
    assert profiles[1].mean_recency_days == pytest.approx(X[3:5, COL["recency_days"]].mean())
    assert profiles[3].view_to_purchase == pytest.approx(X[5, COL["view_to_purchase"]])
    # An empty segment is described by its centre.
    assert profiles[2].mean_purchases == CENTRES[2, COL["purchases"]]
    assert profiles[2].mean_tenure_days == CENTRES[2, COL["tenure_days"]]


def test_missing_features_are_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="engagement"):
        name_segments(
            np.delete(CENTRES, COL["engagement"], axis=1),
            [f for f in FEATURES if f != "engagement"],
        )


def test_rounding_noise_is_a_value_score_of_zero() -> None:
    """Centres of non-buyers come back from the scaled space with revenue +-1e-14: a score
    of 5.9e-16 read as a profile change from 0 in `streamseg compare`."""
    scores = value_scores([1e-14, -1e-14, 80.0], [0.0, 0.0, 2.0])
    assert scores.tolist() == [0.0, 0.0, 1.0]


# -- names an operator chose ---------------------------------------------------------------


def test_a_chosen_name_wins_and_a_rules_name_equal_to_it_takes_the_smallest_free_suffix() -> None:
    names = ["champions", "loyal", "loyal (2)", "inactive"]
    ids = [7, 3, 9, 4]
    # Segment 4 is called "loyal" now: the rule's "loyal" (segment 3) moves to the first
    # suffix no segment holds, past the "loyal (2)" segment 9 keeps.
    assert with_chosen_names(names, ids, {4: "loyal"}) == [
        "champions",
        "loyal (3)",
        "loyal (2)",
        "loyal",
    ]
    assert with_chosen_names(names, ids, {7: "VIP", 11: "gone"}) == [
        "VIP",
        "loyal",
        "loyal (2)",
        "inactive",
    ]
    assert with_chosen_names(names, ids, {}) == names


def test_unique_names_keeps_the_fixed_positions_and_suffixes_the_others_in_order() -> None:
    assert unique_names(["a", "a", "a (2)", "b"], fixed=[2]) == ["a", "a (3)", "a (2)", "b"]
    assert unique_names(["x", "x"], fixed=[]) == ["x", "x (2)"]
    with pytest.raises(ValueError, match="fixed names must be unique"):
        unique_names(["x", "x"], fixed=[0, 1])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "a (2)", "c (3)"]), min_size=1, max_size=8),
    st.data(),
)
def test_chosen_names_always_leave_the_names_unique(names: list[str], data: st.DataObject) -> None:
    names = unique_names(names, fixed=[])  # a model's names are unique to begin with
    ids = list(range(len(names)))
    chosen_ids = data.draw(st.lists(st.sampled_from(ids), unique=True))
    pool = ["a", "b", "VIP", "a (2)", "b (2)", "a (3)", "c", "d", "e"]
    chosen_names = data.draw(
        st.lists(
            st.sampled_from(pool), min_size=len(chosen_ids), max_size=len(chosen_ids), unique=True
        )
    )
    chosen = dict(zip(chosen_ids, chosen_names, strict=True))
    out = with_chosen_names(names, ids, chosen)
    assert len(set(out)) == len(out)
    assert all(out[i] == name for i, name in chosen.items())
    # A segment nobody chose for keeps its name unless that name was chosen for another.
    assert all(
        out[i] == names[i] for i in ids if i not in chosen and names[i] not in chosen.values()
    )


def test_a_suffix_never_takes_a_name_past_the_longest_a_model_holds() -> None:
    long = "x" * MAX_NAME_CHARS
    names = with_chosen_names([long, "b"], [1, 2], {2: long})
    assert names[1] == long and names[0] == "x" * (MAX_NAME_CHARS - 4) + " (2)"
    assert all(len(n) <= MAX_NAME_CHARS for n in names)


def test_two_segments_given_one_name_by_a_hand_edit_leave_it_to_the_smaller_id() -> None:
    assert with_chosen_names(["a", "b", "c"], [5, 3, 4], {5: "VIP", 3: "VIP"}) == [
        "a",
        "VIP",
        "c",
    ]
