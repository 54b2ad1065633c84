"""Rolling per-user features on event time: the declarative tables and the vectorised maths.

State
-----
Each user has a fixed-width float64 *state vector* (layout: `STATE_FIELDS`). Decayed
accumulators are stored **anchored at the user's latest event time** ``T`` (``last_ts_ms``):

    acc_j = sum over the user's events e of  w_j(e) * 2 ** (-(T - t_e) / h_j)

with ``t_e`` the event time, ``h_j`` the accumulator's half-life and ``w_j(e)`` its weight
(1 or the event's ``amount`` when the event's type is one the accumulator counts, else 0).
This sum depends only on the *set* of events, not on their arrival order, so late and
out-of-order events and a replay give the same state (up to float rounding, ~1e-15 relative).

Merging a batch whose events of this user have latest time ``T_b`` and batch sums ``B_j``
(anchored at ``T_b``) into a state anchored at ``T_old``:

    T_new = max(T_old, T_b)
    acc_j = acc_j * 2 ** (-(T_new - T_old) / h_j) + B_j * 2 ** (-(T_new - T_b) / h_j)

Idempotence: the state remembers the Kafka (partition, offset) of the last event applied;
an event from that partition at or below that offset is skipped (a redelivery).

Duplicate events: a producer that retries without idempotence writes the same event twice
at different offsets, which the offset rule cannot see. The state therefore also keeps a ring
of `DEDUPE_SLOTS` *event-id hashes* (52 bits: CRC-32 and Adler-32 of the UTF-8
``event_id``, exact in float64) of the user's last applied events, and ``event_ids_seen``,
how many have been applied (the ring's write position is ``event_ids_seen mod window``).
The rule, applied event by event in Kafka offset order: an event whose id hash is among the
hashes of the user's last ``window`` applied events (``pipeline.dedupe_window_events``, at
most `DEDUPE_SLOTS`; 0 = off) is a duplicate and is skipped; otherwise it is applied and its
hash enters the window. Within a batch the rule is evaluated sequentially, exactly as if the
events came one per batch, so the outcome never depends on batch boundaries and a replay
decides the same way. The first copy in offset order is applied, so for identical copies
the features do not depend on which copy arrives first. Copies further apart than
``window`` of the user's applied events are both applied (the window is bounded by design);
a collision of two distinct ids' 52-bit hashes (`event_id_hashes`; about 2^-52 per pair if
the checksums behaved like random hashes) would drop the second event.

Features
--------
The model sees `FEATURE_NAMES`, derived at a time ``now`` (epoch ms, ``now >= T``) from the
state by the formulas in `FEATURES` (their ``formula`` text is the documentation). Decayed
accumulators at ``now`` are ``acc_j * 2 ** (-(now - T) / h_j)``.

Categories: the first `CATEGORY_SLOTS` distinct categories of a user (in the order their
first event is applied, i.e. Kafka offset order) get a slot holding decayed spend (purchase
amounts, revenue half-life) and decayed views (views half-life); later new categories are
not tracked for that user. The top category by spend (by views) is the slot with the largest
value; ties go to the earlier slot.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from model.events import EventType

MS_PER_DAY = 86_400_000.0
CATEGORY_SLOTS = 6
#: Event-id hashes kept per user for duplicate detection (the largest configurable window).
DEDUPE_SLOTS = 8


class FeatureConfig(BaseModel):
    """Half-lives (days) of the decayed aggregates and the recency cap (days)."""

    # A misspelt setting is an error, not ignored; ``inf`` is not a half-life.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    purchases_half_life_days: float = Field(default=90.0, gt=0)
    revenue_half_life_days: float = Field(default=90.0, gt=0)
    views_half_life_days: float = Field(default=14.0, gt=0)
    carts_half_life_days: float = Field(default=14.0, gt=0)
    engagement_half_life_days: float = Field(default=30.0, gt=0)
    recency_cap_days: float = Field(default=365.0, gt=0)


HalfLife = Literal["purchases", "revenue", "views", "carts", "engagement"]


@dataclass(frozen=True)
class Accumulator:
    """A decayed sum over the events of some types, weighted by 1 or by ``amount``."""

    name: str
    event_types: frozenset[EventType]
    weight: Literal["one", "amount"]
    half_life: HalfLife


#: The decayed sums kept per user. Adding one here adds it to the state (and nothing else).
ACCUMULATORS: tuple[Accumulator, ...] = (
    Accumulator("purchases", frozenset({EventType.PURCHASE}), "one", "purchases"),
    Accumulator("purchase_amount", frozenset({EventType.PURCHASE}), "amount", "revenue"),
    Accumulator("refund_amount", frozenset({EventType.REFUND}), "amount", "revenue"),
    Accumulator("views", frozenset({EventType.VIEW}), "one", "views"),
    Accumulator("carts", frozenset({EventType.CART}), "one", "carts"),
    Accumulator(
        "engagement",
        frozenset({EventType.REVIEW, EventType.LIKE, EventType.SHARE}),
        "one",
        "engagement",
    ),
)

#: Layout of the state vector: bookkeeping, then accumulators, then category slots.
BOOKKEEPING_FIELDS = (
    "last_ts_ms",  # latest event time applied (the anchor T); NaN before the first event
    "first_ts_ms",  # earliest event time applied
    "last_purchase_ts_ms",  # latest purchase time; NaN if none
    "partition",  # Kafka partition of the last applied event
    "offset",  # Kafka offset of the last applied event
    "segment_id",  # segment last assigned; -1 = none (cold start)
    "model_version",  # version of the model that assigned it; -1 = none
)
STATE_FIELDS: tuple[str, ...] = (
    *BOOKKEEPING_FIELDS,
    *(a.name for a in ACCUMULATORS),
    *(f"category_code_{i}" for i in range(CATEGORY_SLOTS)),
    *(f"category_spend_{i}" for i in range(CATEGORY_SLOTS)),
    *(f"category_views_{i}" for i in range(CATEGORY_SLOTS)),
    "event_ids_seen",  # event ids applied so far (the dedupe ring's write position)
    *(f"event_id_hash_{i}" for i in range(DEDUPE_SLOTS)),  # NaN = empty slot
)
STATE_WIDTH = len(STATE_FIELDS)
COL = {name: i for i, name in enumerate(STATE_FIELDS)}
_ACC = slice(len(BOOKKEEPING_FIELDS), len(BOOKKEEPING_FIELDS) + len(ACCUMULATORS))
_CAT_CODE = slice(_ACC.stop, _ACC.stop + CATEGORY_SLOTS)
#: Columns of the state holding category codes (NaN = empty slot).
CATEGORY_CODES = _CAT_CODE
_CAT_SPEND = slice(_CAT_CODE.stop, _CAT_CODE.stop + CATEGORY_SLOTS)
_CAT_VIEWS = slice(_CAT_SPEND.stop, _CAT_SPEND.stop + CATEGORY_SLOTS)
_IDS_SEEN = _CAT_VIEWS.stop
_ID_HASH = slice(_IDS_SEEN + 1, _IDS_SEEN + 1 + DEDUPE_SLOTS)


def empty_state(n: int) -> np.ndarray:
    """State vectors of ``n`` users that have seen no event."""
    state = np.zeros((n, STATE_WIDTH), dtype=np.float64)
    state[:, COL["last_ts_ms"]] = np.nan
    state[:, COL["first_ts_ms"]] = np.nan
    state[:, COL["last_purchase_ts_ms"]] = np.nan
    state[:, COL["partition"]] = -1
    state[:, COL["offset"]] = -1
    state[:, COL["segment_id"]] = -1
    state[:, COL["model_version"]] = -1
    state[:, _CAT_CODE] = np.nan
    state[:, _ID_HASH] = np.nan
    return state


def half_lives_ms(config: FeatureConfig) -> dict[HalfLife, float]:
    """Half-life of each family in milliseconds."""
    return {
        "purchases": config.purchases_half_life_days * MS_PER_DAY,
        "revenue": config.revenue_half_life_days * MS_PER_DAY,
        "views": config.views_half_life_days * MS_PER_DAY,
        "carts": config.carts_half_life_days * MS_PER_DAY,
        "engagement": config.engagement_half_life_days * MS_PER_DAY,
    }


def _hash52(text: str) -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "big") >> 12)


def category_code(name: str) -> float:
    """A stable 52-bit code for a category name, exact in float64 (blake2b of UTF-8)."""
    return _hash52(name)


def event_id_hashes(event_ids: Sequence[str]) -> np.ndarray:
    """52-bit hashes of event ids, exact in float64, for deduplication.

    ``crc32 << 20 | adler32 & 0xFFFFF`` of the UTF-8 bytes: about 2x cheaper than blake2b,
    which matters once per event; only ids of one user's last few events are ever compared,
    so a chance collision (about 2^-52 per pair if the checksums behaved like random hashes;
    they are not cryptographic, so colliding ids can be crafted) is what a wrongly skipped
    event would need.
    """
    crc32, adler32 = zlib.crc32, zlib.adler32
    encoded = [e.encode() for e in event_ids]
    return np.fromiter(
        [(crc32(d) << 20) | (adler32(d) & 0xFFFFF) for d in encoded],
        dtype=np.float64,
        count=len(encoded),
    )


@dataclass(frozen=True, slots=True)
class EventColumns:
    """A batch of events as columns, with ``user`` the row of the user in the state matrix.

    ``category_code`` is NaN where the event has no category. ``offset`` and ``partition``
    come from Kafka and give idempotence; rows must be in Kafka delivery order.
    ``event_id_hash`` (`event_id_hashes`) enables duplicate detection by event id; None
    turns it off for this batch.
    """

    user: np.ndarray  # int64 row in the state matrix
    ts_ms: np.ndarray  # float64
    type_code: np.ndarray  # int8 EventType
    amount: np.ndarray  # float64, 0 where absent
    category_code: np.ndarray  # float64, NaN where absent
    partition: np.ndarray  # int64
    offset: np.ndarray  # int64
    event_id_hash: np.ndarray | None = None  # float64 52-bit hashes of event_id


def _weight_tables() -> tuple[np.ndarray, np.ndarray]:
    """(types x accumulators) masks: counts with weight 1, counts with weight = amount."""
    n_types = len(EventType)
    ones = np.zeros((n_types, len(ACCUMULATORS)))
    amounts = np.zeros((n_types, len(ACCUMULATORS)))
    for j, acc in enumerate(ACCUMULATORS):
        for t in acc.event_types:
            (ones if acc.weight == "one" else amounts)[int(t), j] = 1.0
    return ones, amounts


_WEIGHT_ONE, _WEIGHT_AMOUNT = _weight_tables()


def already_applied(state: np.ndarray, events: EventColumns) -> np.ndarray:
    """Mask of redeliveries: same partition as the user's last applied event, offset at or
    below it."""
    u = events.user
    return (state[u, COL["partition"]] == events.partition) & (
        events.offset <= state[u, COL["offset"]]
    )


def users_on_several_partitions(
    partition_before: np.ndarray, events: EventColumns, applied: np.ndarray
) -> np.ndarray:
    """Rows of the users whose events come from more than one Kafka partition: this batch's
    applied events, and the event their state last applied before it (``partition_before``,
    the state's ``partition`` column before `apply_events`; -1 = none).

    Such a user's redeliveries from another partition escape the (partition, offset) rule
    (only the event-id window catches them), and two consumers can write the user. Events
    skipped (redeliveries, duplicate event ids) do not count. Partitions are Kafka's: >= 0
    and below 2^31.
    """
    rows = events.user[applied]
    if not len(rows):
        return np.empty(0, dtype=np.int64)
    partitions = events.partition[applied]
    before = partition_before[rows]
    found = rows[(before >= 0) & (before != partitions)]  # not the partition stored
    if partitions.min() != partitions.max():  # a batch of several partitions: within it too
        # One int64 per distinct (row, partition): partitions are < 2^31.
        pairs = np.unique((rows.astype(np.int64) << 32) | partitions.astype(np.int64))
        found = np.concatenate([found, np.flatnonzero(np.bincount(pairs >> 32) > 1)])
    return np.unique(found).astype(np.int64)


def apply_events(
    state: np.ndarray,
    events: EventColumns,
    config: FeatureConfig,
    *,
    dedupe_window: int = DEDUPE_SLOTS,
) -> np.ndarray:
    """Apply a batch of events to the users' states in place; return the applied-event mask.

    Events already applied (same partition, offset at or below the stored one) are skipped,
    and so are duplicates by event id within the user's last ``dedupe_window`` applied
    events (see the module docstring; needs ``events.event_id_hash``; 0 = off).
    Vectorised over events and users; short Python loops run only for categories new to
    a user and for users with a candidate duplicate.
    """
    if not 0 <= dedupe_window <= DEDUPE_SLOTS:
        raise ValueError(f"dedupe_window must be in [0, {DEDUPE_SLOTS}], got {dedupe_window}")
    n_users = state.shape[0]
    u = events.user
    applied = ~already_applied(state, events)
    hashes = events.event_id_hash
    if hashes is not None and dedupe_window:
        fresh = np.flatnonzero(applied)
        dup = _duplicate_rows(state, events.user[fresh], hashes[fresh], dedupe_window)
        applied[fresh[dup]] = False
    if not applied.any():
        return applied
    u = u[applied]
    ts = events.ts_ms[applied]
    types = events.type_code[applied].astype(np.intp)
    amount = events.amount[applied]
    cat = events.category_code[applied]
    rows = np.flatnonzero(applied)

    lives = half_lives_ms(config)
    acc_half = np.array([lives[a.half_life] for a in ACCUMULATORS])

    batch_last = np.full(n_users, -np.inf)
    np.maximum.at(batch_last, u, ts)
    touched = np.flatnonzero(batch_last > -np.inf)

    # Batch sums anchored at each user's latest event time in this batch.
    age = batch_last[u] - ts  # >= 0
    weights = _WEIGHT_ONE[types] + _WEIGHT_AMOUNT[types] * amount[:, None]
    contrib = weights * np.exp2(-age[:, None] / acc_half[None, :])
    batch_sums = np.stack(
        [np.bincount(u, contrib[:, j], minlength=n_users) for j in range(len(ACCUMULATORS))],
        axis=1,
    )

    old_anchor = state[touched, COL["last_ts_ms"]]
    old_anchor = np.where(np.isnan(old_anchor), -np.inf, old_anchor)
    new_anchor = np.maximum(old_anchor, batch_last[touched])
    keep_old = np.exp2(-(new_anchor - old_anchor)[:, None] / acc_half[None, :])
    keep_new = np.exp2(-(new_anchor - batch_last[touched])[:, None] / acc_half[None, :])
    state[touched, _ACC] = state[touched, _ACC] * keep_old + batch_sums[touched] * keep_new

    batch_first = np.full(n_users, np.inf)
    np.minimum.at(batch_first, u, ts)
    state[touched, COL["first_ts_ms"]] = np.fmin(
        state[touched, COL["first_ts_ms"]], batch_first[touched]
    )
    is_purchase = types == int(EventType.PURCHASE)
    last_purchase = np.full(n_users, np.nan)
    np.fmax.at(last_purchase, u[is_purchase], ts[is_purchase])
    state[touched, COL["last_purchase_ts_ms"]] = np.fmax(
        state[touched, COL["last_purchase_ts_ms"]], last_purchase[touched]
    )

    _apply_categories(
        state, touched, old_anchor, new_anchor, u, ts, types, amount, cat, batch_last, lives
    )
    state[touched, COL["last_ts_ms"]] = new_anchor

    # Kafka delivers a partition in offset order: the last row of a user is its newest.
    last_row = np.full(n_users, -1)
    np.maximum.at(last_row, u, rows)
    state[touched, COL["partition"]] = events.partition[last_row[touched]]
    state[touched, COL["offset"]] = events.offset[last_row[touched]]
    if hashes is not None and dedupe_window:
        _remember_event_ids(state, u, hashes[applied], dedupe_window)
    return applied


def _duplicate_rows(
    state: np.ndarray, users: np.ndarray, hashes: np.ndarray, window: int
) -> np.ndarray:
    """Mask of the rows that are duplicates by the sequential window rule (module docstring).

    Rows are in offset order. Only users with a candidate (a hash already in their window, or
    repeated in the batch) go through the exact row-by-row rule; the rest have none.
    """
    dup = np.zeros(len(users), dtype=bool)
    if not len(users):
        return dup
    ring = state[users, _ID_HASH.start : _ID_HASH.start + window]
    candidate = (ring == hashes[:, None]).any(axis=1)
    order = np.lexsort((hashes, users))
    same = (users[order][1:] == users[order][:-1]) & (hashes[order][1:] == hashes[order][:-1])
    candidate[order[1:][same]] = True
    if not candidate.any():
        return dup
    suspects = np.unique(users[candidate])
    rings = {
        int(user): (
            state[user, _ID_HASH.start : _ID_HASH.start + window].tolist(),
            int(state[user, _IDS_SEEN]),
        )
        for user in suspects
    }
    for row in np.flatnonzero(np.isin(users, suspects)).tolist():
        slots, seen = rings[int(users[row])]
        h = float(hashes[row])
        if h in slots:
            dup[row] = True
        else:
            slots[seen % window] = h
            rings[int(users[row])] = (slots, seen + 1)
    return dup


def _remember_event_ids(
    state: np.ndarray, users: np.ndarray, hashes: np.ndarray, window: int
) -> None:
    """Write the hashes of applied events (offset order) into their users' rings."""
    order = np.argsort(users, kind="stable")
    su, sh = users[order], hashes[order]
    starts = np.ones(len(su), dtype=bool)
    starts[1:] = su[1:] != su[:-1]
    idx = np.arange(len(su))
    rank = idx - np.maximum.accumulate(np.where(starts, idx, 0))
    counts = np.bincount(su, minlength=state.shape[0])
    seen = state[su, _IDS_SEEN].astype(np.int64)
    # Only each user's last `window` hashes survive: writing just those avoids colliding writes.
    last = rank >= counts[su] - window
    slot = (seen[last] + rank[last]) % window
    state[su[last], _ID_HASH.start + slot] = sh[last]
    touched = np.flatnonzero(counts)
    state[touched, _IDS_SEEN] += counts[touched]


def _apply_categories(
    state: np.ndarray,
    touched: np.ndarray,
    old_anchor: np.ndarray,
    new_anchor: np.ndarray,
    u: np.ndarray,
    ts: np.ndarray,
    types: np.ndarray,
    amount: np.ndarray,
    cat: np.ndarray,
    batch_last: np.ndarray,
    lives: Mapping[HalfLife, float],
) -> None:
    spend_half, views_half = lives["revenue"], lives["views"]
    # Re-anchor the existing slot values of every touched user to the new anchor.
    shift = (new_anchor - old_anchor)[:, None]
    state[touched, _CAT_SPEND] *= np.exp2(-shift / spend_half)
    state[touched, _CAT_VIEWS] *= np.exp2(-shift / views_half)

    is_spend = types == int(EventType.PURCHASE)
    is_view = types == int(EventType.VIEW)
    has_cat = ~np.isnan(cat) & (is_spend | is_view)
    if not has_cat.any():
        return
    cu, cc, ct = u[has_cat], cat[has_cat], ts[has_cat]
    # The caller stores the new anchor after this call: here it is max(old anchor, batch last).
    old = state[cu, COL["last_ts_ms"]]
    anchor = np.fmax(np.where(np.isnan(old), -np.inf, old), batch_last[cu])
    spend = np.where(is_spend[has_cat], amount[has_cat], 0.0) * np.exp2(-(anchor - ct) / spend_half)
    views = is_view[has_cat].astype(np.float64) * np.exp2(-(anchor - ct) / views_half)

    slots = state[cu, _CAT_CODE]
    match = slots == cc[:, None]
    slot = np.where(match.any(axis=1), match.argmax(axis=1), -1)
    new = np.flatnonzero(slot == -1)
    if new.size:
        slot[new] = _claim_slots(state, cu[new], cc[new], new)
    tracked = slot >= 0
    np.add.at(state, (cu[tracked], _CAT_SPEND.start + slot[tracked]), spend[tracked])
    np.add.at(state, (cu[tracked], _CAT_VIEWS.start + slot[tracked]), views[tracked])


def _claim_slots(
    state: np.ndarray, users: np.ndarray, codes: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Give categories new to their user the next free slots, in order of first appearance.

    Slots fill from the left and are never freed, so a user's next free slot is the number
    of occupied ones; the k-th new category of a user in this batch takes that plus k.
    Returns the slot of every input row, -1 where the user's slots are full.
    """
    order = np.lexsort((positions, codes, users))
    su, sc, sp = users[order], codes[order], positions[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (su[1:] != su[:-1]) | (sc[1:] != sc[:-1])
    pair_of = np.cumsum(first) - 1  # distinct (user, code) pair of each sorted row
    pair_user, pair_code, pair_first = su[first], sc[first], sp[first]

    by_appearance = np.lexsort((pair_first, pair_user))
    grouped_users = pair_user[by_appearance]
    starts = np.ones(len(grouped_users), dtype=bool)
    starts[1:] = grouped_users[1:] != grouped_users[:-1]
    idx = np.arange(len(grouped_users))
    rank = np.empty(len(pair_user), dtype=np.int64)
    rank[by_appearance] = idx - np.maximum.accumulate(np.where(starts, idx, 0))

    occupied = (~np.isnan(state[pair_user, _CAT_CODE])).sum(axis=1)
    pair_slot = occupied + rank
    full = pair_slot >= CATEGORY_SLOTS
    ok = ~full
    state[pair_user[ok], _CAT_CODE.start + pair_slot[ok]] = pair_code[ok]
    pair_slot[full] = -1
    out = np.empty(len(order), dtype=np.int64)
    out[order] = pair_slot[pair_of]
    return out


@dataclass(frozen=True)
class Feature:
    """A model feature: its documented formula and its vectorised computation."""

    name: str
    unit: str
    formula: str
    compute: Callable[[Mapping[str, np.ndarray], FeatureConfig], np.ndarray]


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


#: The model's input, in order. ``P, A, R, V, C, E`` are the decayed purchases, purchase
#: amount, refund amount, views, carts and engagement at ``now``; times in days.
FEATURES: tuple[Feature, ...] = (
    Feature(
        "recency_days",
        "days",
        "min(cap, (now - last_purchase_ts) / 1 day); cap when the user never purchased",
        lambda v, c: np.where(
            np.isnan(v["last_purchase_ts_ms"]),
            c.recency_cap_days,
            np.minimum(c.recency_cap_days, (v["now"] - v["last_purchase_ts_ms"]) / MS_PER_DAY),
        ),
    ),
    Feature("purchases", "orders", "P", lambda v, c: v["purchases"]),
    Feature(
        "net_revenue", "currency", "A - R", lambda v, c: v["purchase_amount"] - v["refund_amount"]
    ),
    Feature(
        "avg_order_value",
        "currency",
        "A / P, 0 when P = 0",
        lambda v, c: _safe_ratio(v["purchase_amount"], v["purchases"]),
    ),
    Feature("views", "events", "V", lambda v, c: v["views"]),
    Feature("carts", "events", "C", lambda v, c: v["carts"]),
    Feature(
        "cart_to_purchase",
        "ratio",
        "P / max(C, P), 0 when both are 0",
        lambda v, c: _safe_ratio(v["purchases"], np.maximum(v["carts"], v["purchases"])),
    ),
    Feature(
        "view_to_purchase",
        "ratio",
        "P / max(V, P), 0 when both are 0",
        lambda v, c: _safe_ratio(v["purchases"], np.maximum(v["views"], v["purchases"])),
    ),
    Feature("engagement", "events", "E (reviews + likes + shares)", lambda v, c: v["engagement"]),
    Feature(
        "tenure_days",
        "days",
        "(now - first_ts) / 1 day",
        lambda v, c: (v["now"] - v["first_ts_ms"]) / MS_PER_DAY,
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
#: Heavy-tailed counts and money: the model takes a signed log1p of these before scaling.
LOG_FEATURES: tuple[str, ...] = (
    "purchases",
    "net_revenue",
    "avg_order_value",
    "views",
    "carts",
    "engagement",
)


def derive_features(
    state: np.ndarray, now_ms: np.ndarray | float, config: FeatureConfig
) -> np.ndarray:
    """The model input (n_users x len(FEATURES)) at time ``now_ms`` (epoch ms, per user or one).

    ``now`` earlier than a user's last event is raised to it: features never look back.
    Users without any event get zeros and the recency cap.
    """
    anchor = state[:, COL["last_ts_ms"]]
    now = np.fmax(np.broadcast_to(np.asarray(now_ms, dtype=np.float64), anchor.shape), anchor)
    lives = half_lives_ms(config)
    elapsed = np.nan_to_num(now - anchor, nan=0.0)
    values: dict[str, np.ndarray] = {"now": now}
    for j, acc in enumerate(ACCUMULATORS):
        values[acc.name] = state[:, _ACC.start + j] * np.exp2(-elapsed / lives[acc.half_life])
    for name in ("first_ts_ms", "last_purchase_ts_ms"):
        values[name] = state[:, COL[name]]
    columns = [f.compute(values, config) for f in FEATURES]
    return np.nan_to_num(np.stack(columns, axis=1), nan=0.0)


def top_categories(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of each user's top category by spend and by views (NaN when none is positive)."""
    codes = state[:, _CAT_CODE]
    out = []
    for block in (_CAT_SPEND, _CAT_VIEWS):
        values = state[:, block]
        best = values.argmax(axis=1)
        code = codes[np.arange(len(codes)), best]
        out.append(np.where(values.max(axis=1) > 0, code, np.nan))
    return out[0], out[1]


def state_as_dict(state_row: np.ndarray, category_names: Mapping[float, str]) -> dict[str, object]:
    """One user's state in readable form: accumulators by name, categories by name."""
    readable: dict[str, object] = {
        name: float(state_row[COL[name]])
        for name in (*BOOKKEEPING_FIELDS, *(a.name for a in ACCUMULATORS))
    }
    categories = {}
    for i in range(CATEGORY_SLOTS):
        code = state_row[_CAT_CODE.start + i]
        if not np.isnan(code):
            categories[category_names.get(float(code), f"#{int(code)}")] = {
                "spend": float(state_row[_CAT_SPEND.start + i]),
                "views": float(state_row[_CAT_VIEWS.start + i]),
            }
    readable["categories"] = categories
    return readable


def category_codes(names: Sequence[str | None], cache: dict[str, float]) -> np.ndarray:
    """Codes of a column of category names (NaN for None), memoised in ``cache``."""
    for name in set(names) - cache.keys():  # each new name hashed once
        if name is not None:
            cache[name] = category_code(name)
    nan = float("nan")
    return np.array([nan if name is None else cache[name] for name in names], dtype=np.float64)
