"""Value tiers, human names and business profiles of segments.

Everything here works in business units (days, currency units, decayed counts): centres are first
mapped back with :meth:`model.preprocessing.Preprocessor.inverse_transform`. The centre of a
segment stands for its *typical* member (robust to a few whales, since heavy-tailed columns were
averaged in log space); tiers and names are read from it. Profiles are plain means over the rows
assigned to the segment.

Value score of segment ``k``, from its centre's net revenue ``R_k`` (currency units, may be < 0)
and decayed purchase count ``P_k``::

    v_k = 0.5 * R_k / max_j |R_j|  +  0.5 * P_k / max_j P_j

each term being the segment's fraction of the best segment on that axis; a term whose
denominator is 0 counts as 0, and a ``|v_k| < 1e-9`` (rounding noise of the inverse scaling
where a centre's revenue and purchases are 0) is 0. So ``v`` is in [-0.5, 1], does not depend
on the currency unit, and compares segments of one model only. Tier 1 is the highest score;
ties are broken by net revenue, then purchases (each read as 0 when closer to 0 than 1e-9),
then position.

Names come from ordered rules, first match wins. ``rank(f)`` is the relative rank of the segment
among all segments on feature ``f`` (0 = lowest, 1 = highest, average rank on ties, 0.5 when
there is a single segment); "high" means ``rank >= high_rank``, "low" ``rank <= low_rank``; the
day and count anchors are absolute (:class:`NamingRules`). A *buyer* has
``purchases >= min_purchases``.

Any segment:

1. ``net_revenue < 0`` for buyers, ``net_revenue < -refund_share * max_j |R_j|`` for
   non-buyers                                        -> "net refunders"

(refunds of orders older than the data count, even for users who bought nothing in it)

Buyers:

2. ``recency_days >= lapsed_days``                   -> "lapsed"
3. ``recency_days > active_days``, value high and
   ``net_revenue > 0``                               -> "big spenders at risk"
4. ``recency_days > active_days``                    -> "at risk"
5. ``tenure_days <= new_tenure_days``                -> "new customers"
6. value high and purchases high                     -> "champions"
7. purchases high and avg_order_value low            -> "bargain hunters"
8. purchases high                                    -> "loyal"
9. avg_order_value high                              -> "big spenders"
10. engagement high                                  -> "engaged buyers"
11. otherwise                                        -> "occasional buyers"

Non-buyers:

1. ``tenure_days <= new_tenure_days``                -> "new visitors"
2. ``max(rank(views), rank(carts)) >= browse_rank``  -> "window shoppers"
3. engagement high                                   -> "engaged browsers"
4. otherwise                                         -> "inactive"

Equal names are made unique deterministically. Among segments that share a name, one that had
that name in the previous model (same segment id, same rule) keeps it, suffix included; the
others, in tier order (then position), take the plain name if no segment holds it, else the
smallest free " (2)", " (3)", ... Without a previous model: the first keeps the name, the next
ones get " (2)", " (3)", ... A name only one segment gets is plain.

An operator may choose a segment's name instead (`streamseg model rename`). The chosen name
stays with that segment id in every later model (`with_chosen_names`); a rule's name equal to
a chosen one takes the smallest free suffix.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import rankdata

from model.exceptions import InvalidInputError
from model.preprocessing import as_feature_matrix

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Longest segment name, in characters: every segment record carries the name.
MAX_NAME_CHARS = 200

#: Feature names (columns of ``X``) this module reads; looked up by name in ``feature_names``.
REQUIRED_FEATURES: tuple[str, ...] = (
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
)


@dataclass(frozen=True)
class NamingRules:
    """Anchors of the naming rules (module docstring). Defaults suit a retail shop.

    Parameters
    ----------
    active_days : float
        A buyer whose typical recency (days since last purchase) is at most this is active.
    lapsed_days : float
        A buyer whose typical recency is at least this is lapsed.
    new_tenure_days : float
        A segment whose typical tenure (days since first event) is at most this is new.
    min_purchases : float
        Decayed purchase count from which a segment counts as buying.
    high_rank, low_rank : float
        Relative-rank thresholds (0..1 among segments) for "high" and "low".
    browse_rank : float
        Relative rank of views or carts from which non-buyers are window shoppers.
    refund_share : float
        A non-buying segment is "net refunders" when its net revenue is below
        ``-refund_share * max_j |R_j|``: a typical member of a segment where a few users
        refunded has a centre just below 0, which is not refunding.
    """

    active_days: float = 30.0
    lapsed_days: float = 180.0
    new_tenure_days: float = 30.0
    min_purchases: float = 0.5
    high_rank: float = 2.0 / 3.0
    low_rank: float = 1.0 / 3.0
    browse_rank: float = 0.5
    refund_share: float = 0.1


class SegmentProfile(BaseModel):
    """What a segment looks like in business units: means over its assigned users.

    For a segment with no assigned users (``size == 0``) the values are those of its centre.
    """

    # NaN and infinity are refused: JSON cannot carry them, so a model holding one would not
    # load again after export.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    size: int = Field(ge=0)
    """Number of users assigned in the profiled snapshot."""
    share: float
    """``size`` over all users of the snapshot, 0..1."""
    value_score: float
    """Value score of the segment (module docstring), unit-free."""
    mean_net_revenue: float
    """Decayed purchase minus refund amount, currency units."""
    mean_purchases: float
    """Decayed purchase count."""
    mean_avg_order_value: float
    """Currency units per order."""
    mean_recency_days: float
    """Days since last purchase (the cap when never purchased)."""
    mean_tenure_days: float
    """Days since first seen."""
    mean_views: float
    """Decayed view count."""
    mean_engagement: float
    """Decayed reviews + likes + shares."""
    view_to_purchase: float
    """Mean view-to-purchase conversion, 0..1."""
    cart_to_purchase: float
    """Mean cart-to-purchase conversion, 0..1."""


@dataclass(frozen=True)
class SegmentLabels:
    """Labels of K segments, every list indexed by centre position."""

    names: list[str]
    tiers: IntArray
    value_scores: FloatArray
    profiles: list[SegmentProfile]


#: Scores closer to zero than this are rounding noise of the inverse scaling.
_ZERO = 1e-9


def _columns(feature_names: Sequence[str]) -> dict[str, int]:
    names = list(feature_names)
    missing = [f for f in REQUIRED_FEATURES if f not in names]
    if missing:
        raise ValueError(f"labels need features {missing}, absent from feature_names {names}")
    return {f: names.index(f) for f in REQUIRED_FEATURES}


def relative_ranks(values: npt.ArrayLike) -> FloatArray:
    """Rank of each value among all, scaled to 0 (lowest) .. 1 (highest); ties share the mean.

    A single value gets 0.5.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size <= 1:
        return np.full(v.shape, 0.5)
    return (rankdata(v, method="average") - 1.0) / (v.size - 1.0)


def value_scores(net_revenue: npt.ArrayLike, purchases: npt.ArrayLike) -> FloatArray:
    """Value score per segment (formula in the module docstring), in [-0.5, 1].

    Parameters
    ----------
    net_revenue : array-like of shape (K,)
        Net revenue of each segment's centre, currency units.
    purchases : array-like of shape (K,)
        Decayed purchase count of each segment's centre, >= 0.
    """
    r = np.asarray(net_revenue, dtype=np.float64)
    p = np.maximum(np.asarray(purchases, dtype=np.float64), 0.0)
    r_max = float(np.abs(r).max()) if r.size else 0.0
    p_max = float(p.max()) if p.size else 0.0
    r_term = r / r_max if r_max > 0 else np.zeros_like(r)
    p_term = p / p_max if p_max > 0 else np.zeros_like(p)
    score = 0.5 * r_term + 0.5 * p_term
    # Centres of non-buyers come back from the scaled space as +-1e-16, not 0: call it 0.
    score[np.abs(score) < _ZERO] = 0.0
    return score


def value_order(
    scores: npt.ArrayLike, net_revenue: npt.ArrayLike, purchases: npt.ArrayLike
) -> npt.NDArray[np.intp]:
    """Positions sorted from highest to lowest value (ties: revenue, purchases, position;
    a revenue or purchase count closer to 0 than 1e-9 counts as 0, as in the score)."""
    s = np.asarray(scores, dtype=np.float64)
    positions = np.arange(s.size)
    # Non-buyers' centres read -1.3e-15 and -1.5e-15: rounding noise must not rank them.
    r, p = (np.asarray(v, dtype=np.float64).copy() for v in (net_revenue, purchases))
    r[np.abs(r) < _ZERO] = 0.0
    p[np.abs(p) < _ZERO] = 0.0
    # np.lexsort sorts by the last key first; negate for descending order.
    return np.lexsort((positions, -p, -r, -s))


def value_tiers(order: npt.ArrayLike, n_tiers: int | None = None) -> IntArray:
    """Tier of each position given the value order; 1 is the highest value.

    Parameters
    ----------
    order : array-like of int, shape (K,)
        Positions from highest to lowest value (:func:`value_order`).
    n_tiers : int, optional
        ``None``: one tier per segment (1..K). Otherwise the ranked segments are split into
        ``n_tiers`` groups as evenly as possible: ``tier = 1 + rank * n_tiers // K``.
    """
    o = np.asarray(order, dtype=np.intp)
    K = o.size
    tiers = np.empty(K, dtype=np.int64)
    rank = np.arange(K, dtype=np.int64)
    if n_tiers is None:
        tiers[o] = rank + 1
    else:
        if n_tiers < 1:
            raise ValueError(f"n_tiers must be >= 1, got {n_tiers}")
        tiers[o] = 1 + rank * min(n_tiers, K) // K
    return tiers


def _base_name(
    c: FloatArray,
    col: dict[str, int],
    ranks: dict[str, float],
    rules: NamingRules,
    max_abs_revenue: float,
) -> str:
    high = rules.high_rank
    low = rules.low_rank
    revenue = c[col["net_revenue"]]
    buyer = c[col["purchases"]] >= rules.min_purchases
    if revenue < (0.0 if buyer else -rules.refund_share * max_abs_revenue):
        return "net refunders"
    if buyer:
        recency = c[col["recency_days"]]
        if recency >= rules.lapsed_days:
            return "lapsed"
        if recency > rules.active_days:
            # value high from purchases alone (a shop's data without prices) is no spending
            return "big spenders at risk" if ranks["value"] >= high and revenue > 0 else "at risk"
        if c[col["tenure_days"]] <= rules.new_tenure_days:
            return "new customers"
        if ranks["value"] >= high and ranks["purchases"] >= high:
            return "champions"
        if ranks["purchases"] >= high and ranks["avg_order_value"] <= low:
            return "bargain hunters"
        if ranks["purchases"] >= high:
            return "loyal"
        if ranks["avg_order_value"] >= high:
            return "big spenders"
        if ranks["engagement"] >= high:
            return "engaged buyers"
        return "occasional buyers"
    if c[col["tenure_days"]] <= rules.new_tenure_days:
        return "new visitors"
    if max(ranks["views"], ranks["carts"]) >= rules.browse_rank:
        return "window shoppers"
    if ranks["engagement"] >= high:
        return "engaged browsers"
    return "inactive"


_SUFFIX = re.compile(r"^(?P<base>.+) \((?P<n>[2-9]|[1-9][0-9]+)\)$")


def deduplicate_names(
    names: Sequence[str],
    order: npt.ArrayLike,
    previous: Sequence[str | None] | None = None,
) -> list[str]:
    """Make names unique: following ``order``, repeats get " (2)", " (3)", ...

    ``previous`` holds, by position, the name the same segment id had in the previous model
    (None for a new id). While several segments share a name, one whose rule gives that name
    again keeps its previous name, suffix included, so a " (2)" does not move to another id
    when value scores shift; the others take the plain name or the smallest free suffix. A
    name no other segment shares is plain: no " (2)" without its first.
    """
    positions = np.asarray(order, dtype=np.intp).tolist()
    out: list[str | None] = [None] * len(names)
    taken: set[str] = set()
    shared = {name for name in names if names.count(name) > 1}
    for pos in positions if previous is not None else []:
        before = previous[pos] if previous is not None else None
        if before is None or before in taken or names[pos] not in shared:
            continue
        suffixed = _SUFFIX.match(before)
        if (suffixed.group("base") if suffixed else before) == names[pos]:
            out[pos] = before
            taken.add(before)
    for pos in positions:
        if out[pos] is None:
            name, n = names[pos], 1
            while name in taken:
                n += 1
                name = f"{names[pos]} ({n})"
            out[pos] = name
            taken.add(name)
    return [name for name in out if name is not None]


def unique_names(names: Sequence[str], fixed: Collection[int]) -> list[str]:
    """``names`` made unique around the positions in ``fixed``, which keep theirs.

    Every other position whose name is already held (by a fixed position, or by an earlier
    position in order) takes the smallest free " (2)", " (3)", ... of its name's base (the
    name without such a suffix; cut so that base and suffix fit in `MAX_NAME_CHARS`).
    Raises ValueError when two fixed positions share a name.
    """
    out = list(names)
    held = [out[p] for p in sorted(fixed)]
    if len(set(held)) != len(held):
        raise ValueError(f"fixed names must be unique, got {held}")
    taken = set(held)
    free = [p for p in range(len(out)) if p not in fixed]
    clashing = []
    for pos in free:
        if out[pos] in taken:
            clashing.append(pos)
        else:
            taken.add(out[pos])
    for pos in clashing:
        suffixed = _SUFFIX.match(out[pos])
        base = suffixed.group("base") if suffixed else out[pos]
        n = 2
        while (name := _suffixed(base, n)) in taken:
            n += 1
        out[pos] = name
        taken.add(name)
    return out


def _suffixed(base: str, n: int) -> str:
    """``base (n)``, the base cut to keep the whole within `MAX_NAME_CHARS`."""
    suffix = f" ({n})"
    return base[: MAX_NAME_CHARS - len(suffix)].rstrip() + suffix


def with_chosen_names(
    names: Sequence[str], ids: Sequence[int], chosen: Mapping[int, str]
) -> list[str]:
    """``names`` (by position, of segments ``ids``) with the names an operator chose for some
    ids (`streamseg model rename`). A chosen name wins: another segment whose name equals one
    takes a suffix (`unique_names`). Chosen names of ids not in ``ids`` are left out (their
    segments are gone). Should two ids in ``ids`` have one chosen name (a hand edit), the
    smaller id gets it and the other keeps its rule's name.
    """
    out = list(names)
    fixed = []
    given: set[str] = set()
    for pos, segment_id in sorted(enumerate(ids), key=lambda item: item[1]):
        name = chosen.get(segment_id)
        if name is not None and name not in given:
            out[pos] = name
            fixed.append(pos)
            given.add(name)
    return unique_names(out, fixed)


def name_segments(
    centers_business: npt.ArrayLike,
    feature_names: Sequence[str],
    rules: NamingRules | None = None,
    previous_names: Sequence[str | None] | None = None,
) -> tuple[list[str], FloatArray, npt.NDArray[np.intp]]:
    """Name each segment from its centre with the documented rules (module docstring).

    Parameters
    ----------
    centers_business : array-like of shape (K, n_features)
        Centres in business units.
    feature_names : sequence of str
        Column names; must include :data:`REQUIRED_FEATURES`.
    rules : NamingRules, optional
    previous_names : sequence of str or None, optional
        By position, the name each segment's id had in the previous model (None: a new id);
        see `deduplicate_names`.

    Returns
    -------
    names : list of str
        Unique names, by position.
    scores : ndarray of shape (K,)
        Value scores.
    order : ndarray of shape (K,)
        Positions from highest to lowest value.
    """
    rules = rules or NamingRules()
    col = _columns(feature_names)
    C = as_feature_matrix(centers_business, len(feature_names), what="centers_business")
    scores = value_scores(C[:, col["net_revenue"]], C[:, col["purchases"]])
    order = value_order(scores, C[:, col["net_revenue"]], C[:, col["purchases"]])
    rank_of = {
        "value": relative_ranks(scores),
        **{
            f: relative_ranks(C[:, col[f]])
            for f in ("purchases", "avg_order_value", "views", "carts", "engagement")
        },
    }
    max_abs_revenue = float(np.abs(C[:, col["net_revenue"]]).max()) if len(C) else 0.0
    base = [
        _base_name(C[k], col, {f: float(r[k]) for f, r in rank_of.items()}, rules, max_abs_revenue)
        for k in range(C.shape[0])
    ]
    return deduplicate_names(base, order, previous_names), scores, order


def profile_segments(
    X_raw: npt.ArrayLike,
    positions: npt.ArrayLike,
    centers_business: npt.ArrayLike,
    feature_names: Sequence[str],
    scores: npt.ArrayLike | None = None,
) -> list[SegmentProfile]:
    """Business profile of every segment: size, share and means over its assigned rows.

    Parameters
    ----------
    X_raw : array-like of shape (n_rows, n_features)
        Feature rows in business units.
    positions : array-like of int, shape (n_rows,)
        Centre position (0..K-1) of each row.
    centers_business : array-like of shape (K, n_features)
        Centres in business units; stand in for the means of an empty segment.
    feature_names : sequence of str
    scores : array-like of shape (K,), optional
        Value scores to store; computed from the centres when omitted.
    """
    col = _columns(feature_names)
    d = len(feature_names)
    C = as_feature_matrix(centers_business, d, what="centers_business")
    K = C.shape[0]
    X = as_feature_matrix(X_raw, d, what="X_raw")
    pos = np.asarray(positions, dtype=np.intp)
    if pos.shape != (X.shape[0],) or (pos.size and (pos.min() < 0 or pos.max() >= K)):
        raise InvalidInputError(f"positions must be {X.shape[0]} integers in [0, {K})")
    size = np.bincount(pos, minlength=K)
    # One bincount per column: fast on large snapshots, unlike np.add.at.
    sums = np.stack([np.bincount(pos, weights=X[:, j], minlength=K) for j in range(d)], axis=1)
    means = np.where(size[:, None] > 0, sums / np.maximum(size, 1)[:, None], C)
    if scores is None:
        scores = value_scores(C[:, col["net_revenue"]], C[:, col["purchases"]])
    s = np.asarray(scores, dtype=np.float64)
    n = max(int(size.sum()), 1)
    return [
        SegmentProfile(
            size=int(size[k]),
            share=float(size[k]) / n,
            value_score=float(s[k]),
            mean_net_revenue=float(means[k, col["net_revenue"]]),
            mean_purchases=float(means[k, col["purchases"]]),
            mean_avg_order_value=float(means[k, col["avg_order_value"]]),
            mean_recency_days=float(means[k, col["recency_days"]]),
            mean_tenure_days=float(means[k, col["tenure_days"]]),
            mean_views=float(means[k, col["views"]]),
            mean_engagement=float(means[k, col["engagement"]]),
            view_to_purchase=float(means[k, col["view_to_purchase"]]),
            cart_to_purchase=float(means[k, col["cart_to_purchase"]]),
        )
        for k in range(K)
    ]


def label_segments(
    centers_business: npt.ArrayLike,
    X_raw: npt.ArrayLike,
    positions: npt.ArrayLike,
    feature_names: Sequence[str],
    *,
    rules: NamingRules | None = None,
    n_tiers: int | None = None,
    previous_names: Sequence[str | None] | None = None,
) -> SegmentLabels:
    """Names, value tiers and profiles of all segments (see the module docstring).

    Parameters
    ----------
    centers_business : array-like of shape (K, n_features)
        Centres in business units (``preprocessor.inverse_transform(centers)``).
    X_raw : array-like of shape (n_rows, n_features)
        A snapshot of users in business units.
    positions : array-like of int, shape (n_rows,)
        Their centre positions (e.g. ``segmenter.predict(preprocessor.transform(X_raw))``).
    feature_names : sequence of str
        Must include :data:`REQUIRED_FEATURES`.
    rules : NamingRules, optional
    n_tiers : int, optional
        Number of tiers; ``None`` gives every segment its own tier 1..K.
    previous_names : sequence of str or None, optional
        By position, the name each segment's id had in the previous model (None: a new id):
        a segment named by the same rule again keeps it, suffix included.
    """
    names, scores, order = name_segments(centers_business, feature_names, rules, previous_names)
    tiers = value_tiers(order, n_tiers)
    profiles = profile_segments(X_raw, positions, centers_business, feature_names, scores)
    return SegmentLabels(names=names, tiers=tiers, value_scores=scores, profiles=profiles)
