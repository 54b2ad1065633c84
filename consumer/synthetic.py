"""A realistic, deterministic e-commerce event stream with planted user types (no Kafka here).

`EventGenerator` simulates ``users`` shoppers over ``days`` of event time starting at
``start_ms`` (epoch milliseconds) and yields Kafka records ``(key, value)``: the key is the
UTF-8 user id, the value the JSON event of the contract in `model.events`, or deliberately
malformed raw bytes. The same configuration and seed give byte-identical output.

Planted user types
------------------
Every user gets one type (see `planted_types`); the numbers are the defaults of
`PLANTED_TYPES` (order value = median of a lognormal, currency units, before the category's
price level and a small personal offset):

======================  =====  ========  =====  ====  ========  =====  ======  ============
type                    share  sess/day  views  cart  checkout  order  refund  active
======================  =====  ========  =====  ====  ========  =====  ======  ============
``loyal_high_spender``  10%    0.6       1+5    0.25  0.70      150    3%      whole span
``bargain_hunter``      20%    0.8       1+9    0.12  0.45      25     12%     whole span
``window_shopper``      22%    0.7       1+8    0.05  0.08      60     5%      whole span
``new_user``            10%    0.5       1+4    0.10  0.35      50     6%      from 70-95%
``churning``            13%    0.4       1+4    0.12  0.40      70     10%     until 30-62%
``occasional``          25%    0.1       1+3    0.15  0.50      45     5%      whole span
======================  =====  ========  =====  ====  ========  =====  ======  ============

(views = 1 + Poisson mean per session, cart = per view, checkout = per session with carts)

``churning`` users also slow down linearly (to 40% of their rate) before going silent, so the
last third of the span holds none of their events. Each type also has its own like, share and
review rates, typical rating and a Dirichlet concentration over the 12 `CATEGORIES`, from which
each user draws personal category preferences. Users vary around their type: session rates by
a lognormal factor (sigma 0.5), order values by a personal log-offset (sigma 0.2).

How a session unfolds
---------------------
Sessions start as a Poisson process per user, modulated by time of day (UTC, evening peak).
A session is ``1 + Poisson(views)`` product views ~35 s apart (lognormal); a session sticks to
one category 70% of the time; each view may lead to a cart (~20 s later), a like (wishlist)
or a share. A session with carts ends in a purchase with the type's checkout probability
(~2 min after the last cart; amount lognormal, ``quantity`` = items carted). A purchase may be
refunded 1-30 days later (in full or in part) and reviewed days later (rating lower after a
refund). Events after the user's activity window or after the span end are dropped.

Drift: with ``drift_type`` set, users of that type behave like ``drift_to`` (funnel, order
values, engagement, session rate) for sessions starting at or after ``drift_at`` of the span
(event time). The default ``drift_to`` (``window_shopper``) makes loyal high spenders stop
buying.

Stream realism
--------------
- ``alias_share`` of events use a real-world alias of their type from `DEFAULT_ALIASES`
  (``product_view``, ``add_to_cart``, ``order_completed``, ``wishlist_add``, ...).
- ``iso_ts_share`` of timestamps are ISO-8601 strings with a zone (``Z`` or offsets such as
  ``+05:30``), the rest epoch milliseconds (integers).
- Records come in event-time order except ``out_of_order_share`` delayed by 5 s - 5 min and
  ``late_share`` delayed by 1-6 hours (emission is sorted by event time + delay).
- ``malformed_share`` of all records are bad on purpose (``consumer.malformed_records``: not
  JSON, invalid UTF-8, JSON arrays, missing or empty user id, negative or ``"NaN"`` amounts,
  purchases without amount, ts in year 1 or 9999, ts in seconds, ts without zone, oversize
  payloads, key differing from the user id, ...). Every one of them is rejected by
  `model.events.decode_events` (with keys, default `DecodeLimits`).
- ``hostile_id_share`` of users have ids with unicode, spaces, quotes, tabs, ``{``, ``}``, ``:``.

This is dev tooling for tests, demos and benchmarks; the service never imports it.

Examples
--------
>>> gen = EventGenerator(GeneratorConfig(users=50, days=7, seed=1))
>>> key, value = next(iter(gen.records()))
>>> isinstance(value, bytes) and len(gen.planted_types()) == 50
True
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from consumer.exceptions import ConfigError
from consumer.malformed_records import MALFORMED_KINDS
from model.events import DEFAULT_ALIASES, DecodeLimits, EventType

__all__ = [
    "CATEGORIES",
    "PLANTED_TYPES",
    "EventGenerator",
    "GeneratorConfig",
    "GeneratorStats",
    "PlantedType",
]

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

#: Product categories, in the order of the Dirichlet concentration vectors.
CATEGORIES: tuple[str, ...] = (
    "electronics",
    "fashion",
    "home",
    "beauty",
    "sports",
    "books",
    "toys",
    "grocery",
    "garden",
    "auto",
    "pets",
    "jewelry",
)
# Price level of each category: added to the log of the order value.
_CATEGORY_LOG_PRICE = np.array(
    [0.6, 0.0, 0.2, -0.3, 0.1, -0.6, -0.3, -0.8, 0.0, 0.3, -0.4, 0.7], dtype=np.float64
)
_ITEMS_PER_CATEGORY = 2000
_CATEGORY_SKU = ("EL", "FA", "HO", "BE", "SP", "BO", "TO", "GR", "GA", "AU", "PE", "JE")


def _alpha(base: float, **boost: float) -> tuple[float, ...]:
    unknown = set(boost) - set(CATEGORIES)
    assert not unknown, unknown
    return tuple(base + boost.get(c, 0.0) for c in CATEGORIES)


@dataclass(frozen=True, slots=True)
class PlantedType:
    """Behaviour of one planted user type. Rates are probabilities unless stated.

    Attributes
    ----------
    share : fraction of users of this type (normalised over all types).
    sessions_per_day : mean sessions per active day (before time-of-day modulation).
    extra_views : mean of the Poisson number of views after the first, per session.
    p_cart, p_like, p_share : per product view.
    p_checkout : per session with at least one cart.
    order_median : median order value, currency units (lognormal ``exp(mu)``).
    order_sigma : lognormal sigma of the order value (log units).
    p_refund, p_review : per purchase.
    rating_mean : mean review rating (1-5) before the refund penalty.
    category_alpha : Dirichlet concentration over `CATEGORIES`.
    """

    share: float
    sessions_per_day: float
    extra_views: float
    p_cart: float
    p_checkout: float
    order_median: float
    order_sigma: float
    p_refund: float
    p_review: float
    p_like: float
    p_share: float
    rating_mean: float
    category_alpha: tuple[float, ...]

    def expected_events_per_session(self) -> float:
        """Expected events of one session, its refunds and reviews included (exact)."""
        views = 1.0 + self.extra_views
        # P(no cart) with V = 1 + Poisson(lam): (1 - p) * exp(-lam * p).
        p_any_cart = 1.0 - (1.0 - self.p_cart) * np.exp(-self.extra_views * self.p_cart)
        purchases = p_any_cart * self.p_checkout
        per_view = 1.0 + self.p_cart + self.p_like + self.p_share
        return float(views * per_view + purchases * (1.0 + self.p_refund + self.p_review))


#: The planted types, by name (see the module docstring).
PLANTED_TYPES: dict[str, PlantedType] = {
    "loyal_high_spender": PlantedType(
        share=0.10, sessions_per_day=0.6, extra_views=5.0, p_cart=0.25, p_checkout=0.70,
        order_median=150.0, order_sigma=0.5, p_refund=0.03, p_review=0.25, p_like=0.05,
        p_share=0.02, rating_mean=4.4,
        category_alpha=_alpha(0.15, electronics=2.0, fashion=1.5, jewelry=1.2, home=1.0),
    ),
    "bargain_hunter": PlantedType(
        share=0.20, sessions_per_day=0.8, extra_views=9.0, p_cart=0.12, p_checkout=0.45,
        order_median=25.0, order_sigma=0.45, p_refund=0.12, p_review=0.08, p_like=0.10,
        p_share=0.06, rating_mean=3.4,
        category_alpha=_alpha(0.2, grocery=2.0, fashion=1.2, toys=1.0, home=0.8, beauty=0.8),
    ),
    "window_shopper": PlantedType(
        share=0.22, sessions_per_day=0.7, extra_views=8.0, p_cart=0.05, p_checkout=0.08,
        order_median=60.0, order_sigma=0.7, p_refund=0.05, p_review=0.02, p_like=0.15,
        p_share=0.05, rating_mean=3.8, category_alpha=_alpha(0.6),
    ),
    "new_user": PlantedType(
        share=0.10, sessions_per_day=0.5, extra_views=4.0, p_cart=0.10, p_checkout=0.35,
        order_median=50.0, order_sigma=0.7, p_refund=0.06, p_review=0.05, p_like=0.06,
        p_share=0.03, rating_mean=4.0, category_alpha=_alpha(0.5),
    ),
    "churning": PlantedType(
        share=0.13, sessions_per_day=0.4, extra_views=4.0, p_cart=0.12, p_checkout=0.40,
        order_median=70.0, order_sigma=0.6, p_refund=0.10, p_review=0.06, p_like=0.04,
        p_share=0.01, rating_mean=3.2,
        category_alpha=_alpha(0.3, sports=1.0, books=0.8, auto=0.8, garden=0.6),
    ),
    "occasional": PlantedType(
        share=0.25, sessions_per_day=0.1, extra_views=3.0, p_cart=0.15, p_checkout=0.50,
        order_median=45.0, order_sigma=0.7, p_refund=0.05, p_review=0.06, p_like=0.04,
        p_share=0.02, rating_mean=4.0,
        category_alpha=_alpha(0.3, pets=1.0, beauty=0.8, books=0.8, garden=0.6),
    ),
}  # fmt: skip

_TYPE_NAMES = tuple(PLANTED_TYPES)
_NEW_USER_START = (0.70, 0.95)  # fraction of the span where a new user's activity starts
_CHURN_END = (0.30, 0.62)  # fraction of the span where a churning user goes silent
_CHURN_SLOWDOWN = 0.6  # a churning user's rate falls linearly to (1 - this) before silence

# Relative session rate by UTC hour of day (mean 1): quiet nights, evening peak.
_HOURLY = np.array(
    [0.25, 0.15, 0.1, 0.1, 0.1, 0.15, 0.3, 0.55, 0.8, 0.95, 1.05, 1.15,
     1.25, 1.2, 1.1, 1.1, 1.2, 1.35, 1.5, 1.75, 1.95, 1.9, 1.4, 0.8]
)  # fmt: skip
_HOURLY = _HOURLY / _HOURLY.mean()
_HOURLY_MAX = float(_HOURLY.max())

_CURRENCIES = ("EUR", "USD", "GBP")
_CURRENCY_P = (0.7, 0.2, 0.1)
# ISO-8601 zones used for string timestamps: (suffix, offset from UTC in ms).
_ZONES: tuple[tuple[str, int], ...] = (
    ("Z", 0),
    ("+00:00", 0),
    ("+01:00", HOUR_MS),
    ("+02:00", 2 * HOUR_MS),
    ("-05:00", -5 * HOUR_MS),
    ("+05:30", 5 * HOUR_MS + 30 * MINUTE_MS),
    ("+09:00", 9 * HOUR_MS),
)
_ZONE_OFFSET_MS = np.array([z[1] for z in _ZONES], dtype=np.int64)

_HOSTILE_ID_TEMPLATES = (
    "Zoë Ångström {i}",
    "用户:{i}",
    "{{user}}:{i}",
    "  padded {i} ",
    "cart-🛒-{i}",
    'o"brien\\{i}',
    "tab\there:{i}",
    "{{{i}}}",
    "straße {{a:b}} {i}",
)

_OUT_OF_ORDER_DELAY_MS = (5 * SECOND_MS, 5 * MINUTE_MS)
_LATE_DELAY_MS = (1 * HOUR_MS, 6 * HOUR_MS)
_TARGET_CHUNK_EVENTS = 60_000


# Beyond this the stream would not fit in memory at any useful number of users.
_MAX_ACTIVITY = 1e4
_MAX_USERS = 10_000_000


@dataclass(slots=True)
class GeneratorConfig:
    """What to simulate. Shares are fractions in [0, 1).

    Parameters
    ----------
    users : number of users.
    days : simulated span of event time, days.
    start_ms : start of the span, epoch milliseconds (default 2024-01-01T00:00:00Z).
    seed : random seed; the same config gives byte-identical output.
    activity : multiplier of every session rate (more or fewer events per user).
    malformed_share : share of all records that are malformed on purpose.
    out_of_order_share : share of events delayed by 5 s - 5 min (shuffled within minutes).
    late_share : share of events delayed by 1-6 hours.
    alias_share : share of events whose type is written as a real-world alias.
    iso_ts_share : share of timestamps written as ISO-8601 strings with a zone.
    hostile_id_share : share of users with hostile ids (unicode, spaces, braces, colons).
    drift_type : planted type that changes behaviour, or None.
    drift_at : fraction of the span (event time) from which the drift applies.
    drift_to : planted type whose behaviour the drifted users adopt.
    valid_only : emit no malformed records (overrides ``malformed_share``).
    """

    users: int = 1000
    days: float = 90.0
    start_ms: int = 1_704_067_200_000
    seed: int = 0
    activity: float = 1.0
    malformed_share: float = 0.01
    out_of_order_share: float = 0.02
    late_share: float = 0.002
    alias_share: float = 0.2
    iso_ts_share: float = 0.3
    hostile_id_share: float = 0.01
    drift_type: str | None = None
    drift_at: float = 0.6
    drift_to: str = "window_shopper"
    valid_only: bool = False

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ConfigError(f"generator {name}={getattr(self, name)!r}: {why}")

        if not 1 <= self.users <= _MAX_USERS:
            fail("users", f"must be in 1..{_MAX_USERS:,}")
        if not 0 < self.days <= 3650:
            fail("days", "must be in (0, 3650]")
        if not 0 < self.activity <= _MAX_ACTIVITY:  # also refuses NaN
            fail("activity", f"must be in (0, {_MAX_ACTIVITY:g}] (times the default rates)")
        limits = DecodeLimits()
        end_ms = self.start_ms + self.days * DAY_MS
        if self.start_ms < limits.min_ts_ms or end_ms >= limits.max_ts_ms:
            fail("start_ms", "the span must lie within the years 2000-2099")
        for name in (
            "malformed_share",
            "out_of_order_share",
            "late_share",
            "alias_share",
            "iso_ts_share",
            "hostile_id_share",
        ):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(name, "must be in [0, 1)")
        if self.out_of_order_share + self.late_share >= 1.0:
            fail("late_share", "out_of_order_share + late_share must be < 1")
        if self.drift_type is not None and self.drift_type not in PLANTED_TYPES:
            fail("drift_type", f"must be one of {list(PLANTED_TYPES)}")
        if self.drift_to not in PLANTED_TYPES:
            fail("drift_to", f"must be one of {list(PLANTED_TYPES)}")
        if not 0.0 <= self.drift_at <= 1.0:
            fail("drift_at", "must be in [0, 1]")

    @property
    def end_ms(self) -> int:
        """End of the span (exclusive), epoch milliseconds."""
        return self.start_ms + round(self.days * DAY_MS)

    @property
    def drift_ms(self) -> int | None:
        """Event time from which the drift applies, epoch milliseconds (None without drift)."""
        if self.drift_type is None:
            return None
        return self.start_ms + round(self.drift_at * self.days * DAY_MS)


@dataclass(slots=True)
class GeneratorStats:
    """Counts of the last (or ongoing) pass over the stream.

    ``by_type`` counts valid events by canonical type; ``malformed`` counts bad records by kind;
    ``out_of_order`` and ``late`` count events delayed on purpose; ``users`` counts the users
    with at least one valid event (some planted users never act in a short stream).
    """

    records: int = 0
    valid: int = 0
    users: int = 0
    out_of_order: int = 0
    late: int = 0
    aliased: int = 0
    iso_ts: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    #: Which users acted so far (by index), behind ``users``.
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        out = asdict(self)
        out["by_type"] = dict(self.by_type)
        out["malformed"] = dict(self.malformed)
        return out


@dataclass(slots=True)
class _Events:
    """Simulated events as parallel columns (internal). Absent values: -1, NaN or 0."""

    ts: np.ndarray  # int64 epoch ms
    emit: np.ndarray  # int64 emission order key (ts + delay)
    user: np.ndarray  # int64 user index
    code: np.ndarray  # int8 EventType
    item: np.ndarray  # int64 category * _ITEMS_PER_CATEGORY + rank
    amount: np.ndarray  # float64, NaN when absent
    quantity: np.ndarray  # int64, 0 when absent
    rating: np.ndarray  # int64, 0 when absent
    delay_kind: np.ndarray  # int8: 0 in order, 1 out of order, 2 late

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, index: np.ndarray | slice) -> _Events:
        return _Events(*(getattr(self, name)[index] for name in _EVENT_COLUMNS))

    @staticmethod
    def concat(parts: list[_Events]) -> _Events:
        return _Events(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in _EVENT_COLUMNS)
        )

    @staticmethod
    def empty() -> _Events:
        i64 = np.empty(0, dtype=np.int64)
        i8 = np.empty(0, dtype=np.int8)
        return _Events(i64, i64, i64, i8, i64, np.empty(0), i64, i64, i8)


_EVENT_COLUMNS = (
    "ts", "emit", "user", "code", "item", "amount", "quantity", "rating", "delay_kind"
)  # fmt: skip


def _param(name: str) -> np.ndarray:
    return np.array([getattr(PLANTED_TYPES[t], name) for t in _TYPE_NAMES], dtype=np.float64)


class EventGenerator:
    """A seeded e-commerce event stream with planted user types (see the module docstring).

    Parameters
    ----------
    config : what to simulate.

    Attributes
    ----------
    stats : `GeneratorStats` of the last (or ongoing) call of `records` or `events`.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.stats = GeneratorStats()
        root = np.random.SeedSequence(config.seed)
        users_seq, self._sim_seq, self._fmt_seq, self._bad_seq = root.spawn(4)
        self._tag = f"s{config.seed}-"
        self._init_users(np.random.default_rng(users_seq))
        self._init_tables()

    # ---------------------------------------------------------------- users
    def _init_users(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n = cfg.users
        shares = np.array([p.share for p in PLANTED_TYPES.values()])
        shares = shares / shares.sum()
        # Largest-remainder counts: every type present in the planted proportions.
        exact = shares * n
        counts = np.floor(exact).astype(np.int64)
        for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
            counts[k] += 1
        self._type = rng.permutation(np.repeat(np.arange(len(_TYPE_NAMES)), counts))

        hostile = rng.random(n) < cfg.hostile_id_share
        templates = rng.integers(len(_HOSTILE_ID_TEMPLATES), size=n)
        width = max(6, len(str(n - 1)))
        self._user_ids: list[str] = [
            _HOSTILE_ID_TEMPLATES[t].format(i=i) if h else f"u{i:0{width}d}"
            for i, (h, t) in enumerate(zip(hostile.tolist(), templates.tolist(), strict=True))
        ]
        self._user_keys: list[bytes] = [u.encode() for u in self._user_ids]
        self._user_ids_json: list[str] = [orjson.dumps(u).decode() for u in self._user_ids]

        span = cfg.end_ms - cfg.start_ms
        start = np.full(n, cfg.start_ms, dtype=np.int64)
        end = np.full(n, cfg.end_ms, dtype=np.int64)
        new = self._type == _TYPE_NAMES.index("new_user")
        start[new] += (rng.uniform(*_NEW_USER_START, size=int(new.sum())) * span).astype(np.int64)
        churn = self._type == _TYPE_NAMES.index("churning")
        end[churn] = cfg.start_ms + (rng.uniform(*_CHURN_END, size=int(churn.sum())) * span).astype(
            np.int64
        )
        self._active_start, self._active_end = start, end
        self._churning = churn

        self._rate_factor = rng.lognormal(-0.125, 0.5, size=n) * cfg.activity
        self._amount_offset = rng.normal(0.0, 0.2, size=n)
        alpha = np.array([PLANTED_TYPES[t].category_alpha for t in _TYPE_NAMES])[self._type]
        prefs = rng.gamma(alpha)
        prefs /= prefs.sum(axis=1, keepdims=True)
        self._category_cdf = np.cumsum(prefs, axis=1)
        self._category_cdf[:, -1] = 1.0
        currency = rng.choice(len(_CURRENCIES), size=n, p=_CURRENCY_P)
        self._currency: list[str] = [_CURRENCIES[c] for c in currency.tolist()]

        self._drift_ms = cfg.drift_ms
        self._drifted = (
            self._type == _TYPE_NAMES.index(cfg.drift_type)
            if cfg.drift_type is not None
            else np.zeros(n, dtype=bool)
        )
        self._drift_to = _TYPE_NAMES.index(cfg.drift_to)

    def _init_tables(self) -> None:
        self._sessions_per_day = _param("sessions_per_day")
        self._extra_views = _param("extra_views")
        self._p_cart = _param("p_cart")
        self._p_checkout = _param("p_checkout")
        self._order_mu = np.log(_param("order_median"))
        self._order_sigma = _param("order_sigma")
        self._p_refund = _param("p_refund")
        self._p_review = _param("p_review")
        self._p_like = _param("p_like")
        self._p_share = _param("p_share")
        self._rating_mean = _param("rating_mean")
        own = self._sessions_per_day[self._type]
        drifted_rate = self._sessions_per_day[self._drift_to]
        # Candidate sessions are drawn at the user's highest possible rate, then thinned.
        self._rate_cap = np.where(self._drifted, np.maximum(own, drifted_rate), own)

        # Type names: canonical first (index = EventType), then the aliases of each type.
        names = [t.name.lower() for t in EventType]
        alias_start = np.zeros(len(EventType), dtype=np.int64)
        alias_count = np.zeros(len(EventType), dtype=np.int64)
        for t in EventType:
            aliases = sorted(a for a, target in DEFAULT_ALIASES.items() if target == t.name.lower())
            alias_start[t] = len(names)
            alias_count[t] = len(aliases)
            names.extend(aliases)
        self._type_names = names
        self._alias_start, self._alias_count = alias_start, alias_count
        self._canonical = [t.name.lower() for t in EventType]
        self._items = [
            f"SKU-{sku}-{k:05d}" for sku in _CATEGORY_SKU for k in range(_ITEMS_PER_CATEGORY)
        ]
        self._item_category = [c for c in CATEGORIES for _ in range(_ITEMS_PER_CATEGORY)]

    # ---------------------------------------------------------------- public API
    def planted_types(self) -> dict[str, str]:
        """The planted type of every user: user id -> type name (a key of `PLANTED_TYPES`)."""
        return {
            uid: _TYPE_NAMES[t] for uid, t in zip(self._user_ids, self._type.tolist(), strict=True)
        }

    def write_planted_types(self, path: str | Path) -> None:
        """Write `planted_types` to ``path`` as one JSON object (user id -> type name)."""
        Path(path).write_bytes(orjson.dumps(self.planted_types(), option=orjson.OPT_INDENT_2))

    def expected_valid_events(self) -> float:
        """Expected number of valid events of the stream (an estimate, for progress bars)."""
        cfg = self.config
        per_session = np.array(
            [PLANTED_TYPES[t].expected_events_per_session() for t in _TYPE_NAMES]
        )
        days = (self._active_end - self._active_start) / DAY_MS
        own = self._sessions_per_day[self._type] * per_session[self._type]
        slowdown = np.where(self._churning, 1.0 - _CHURN_SLOWDOWN / 2, 1.0)
        expected = self._rate_factor * days * own * slowdown
        if self._drift_ms is not None:
            drift_start = np.maximum(self._active_start, self._drift_ms)
            after = np.clip(self._active_end - drift_start, 0, None)
            share_after = after / np.maximum(self._active_end - self._active_start, 1)
            drifted = self._sessions_per_day[self._drift_to] * per_session[self._drift_to]
            expected = np.where(
                self._drifted,
                expected * (1 - share_after) + self._rate_factor * days * drifted * share_after,
                expected,
            )
        # Refunds and reviews past the end are dropped; a small correction is not worth it.
        return float(expected.sum()) if cfg.users else 0.0

    def expected_records(self) -> int:
        """Expected number of records, malformed ones included (an estimate)."""
        share = 0.0 if self.config.valid_only else self.config.malformed_share
        return round(self.expected_valid_events() / (1.0 - share))

    def events(self) -> Iterator[dict[str, Any]]:
        """The valid events as JSON-ready dicts, in emission order.

        The same events, in the same order, as the valid records of `records`.
        """
        self.stats = stats = GeneratorStats(seen=np.zeros(self.config.users, dtype=bool))
        fmt_rng = np.random.default_rng(self._fmt_seq)
        seq = 0
        for chunk in self._emitted_chunks():
            values = self._to_values(chunk, fmt_rng, seq, stats)
            seq += len(values)
            stats.records += len(values)
            yield from map(orjson.loads, values)

    def records(self) -> Iterator[tuple[bytes | None, bytes]]:
        """Kafka records ``(key, value)`` in emission order, malformed ones interleaved.

        Keys are the UTF-8 user id (some malformed records have no key or a wrong one);
        values are the JSON event, or raw bytes for malformed records.
        """
        self.stats = stats = GeneratorStats(seen=np.zeros(self.config.users, dtype=bool))
        fmt_rng = np.random.default_rng(self._fmt_seq)
        bad_rng = np.random.default_rng(self._bad_seq)
        share = 0.0 if self.config.valid_only else self.config.malformed_share
        odds = share / (1.0 - share)
        key_of = self._user_keys.__getitem__
        seq = 0
        bad_seq = 0
        for chunk in self._emitted_chunks():
            values = self._to_values(chunk, fmt_rng, seq, stats)
            seq += len(values)
            users = chunk.user.tolist()
            good = list(zip(map(key_of, users), values, strict=True))
            n_bad = int(bad_rng.binomial(len(good), odds)) if odds > 0 and good else 0
            stats.records += len(good) + n_bad
            if n_bad == 0:
                yield from good
                continue
            # Malformed records go in before these positions, modelled on the event there.
            at = np.sort(bad_rng.integers(0, len(good), size=n_bad)).tolist()
            kinds = bad_rng.integers(len(MALFORMED_KINDS), size=n_bad).tolist()
            prev = 0
            for pos, kind_index in zip(at, kinds, strict=True):
                yield from good[prev:pos]
                prev = pos
                kind = _MALFORMED_NAMES[kind_index]
                template = orjson.loads(values[pos])
                template["event_id"] = f"{self._tag}bad{bad_seq}"
                bad_seq += 1
                stats.malformed[kind] += 1
                u = users[pos]
                yield MALFORMED_KINDS[kind](template, key_of(u), self._other_key(u), bad_rng)
            yield from good[prev:]

    def _other_key(self, user: int) -> bytes:
        return self._user_keys[(user + 1) % len(self._user_keys)] + (
            b"-other" if len(self._user_keys) == 1 else b""
        )

    # ---------------------------------------------------------------- simulation
    def _chunk_bounds(self) -> list[tuple[int, int]]:
        cfg = self.config
        per_ms = self.expected_valid_events() / max(cfg.end_ms - cfg.start_ms, 1)
        length = _TARGET_CHUNK_EVENTS / max(per_ms, 1e-12)
        length = int(min(max(length, 10 * MINUTE_MS), cfg.end_ms - cfg.start_ms))
        edges = [*range(cfg.start_ms, cfg.end_ms, max(length, 1)), cfg.end_ms]
        return list(itertools.pairwise(edges))

    def _emitted_chunks(self) -> Iterator[_Events]:
        """Events sorted by emission key, chunk by chunk (global order across chunks)."""
        rng = np.random.default_rng(self._sim_seq)
        pending = _Events.empty()
        bounds = self._chunk_bounds()
        for n, (t0, t1) in enumerate(bounds):
            merged = _Events.concat([pending, self._simulate(t0, t1, rng)])
            merged = merged.take(np.argsort(merged.emit, kind="stable"))
            # Later chunks only hold events with ts >= t1, so everything keyed < t1 is final.
            cut = len(merged) if n == len(bounds) - 1 else int(np.searchsorted(merged.emit, t1))
            pending = merged.take(slice(cut, None))
            if cut:
                yield merged.take(slice(0, cut))

    def _simulate(self, t0: int, t1: int, rng: np.random.Generator) -> _Events:
        """Events of the sessions that start in [t0, t1), with their delays."""
        lo = np.maximum(self._active_start, t0)
        hi = np.minimum(self._active_end, t1)
        width = np.clip(hi - lo, 0, None)
        lam = self._rate_factor * self._rate_cap * _HOURLY_MAX * (width / DAY_MS)
        n_candidates = rng.poisson(lam)
        user = np.repeat(np.arange(len(lam)), n_candidates)
        start = lo[user] + (rng.random(len(user)) * width[user]).astype(np.int64)

        # Thinning: time of day, drift, churn slowdown.
        profile = self._type[user]
        if self._drift_ms is not None:
            drifted = self._drifted[user] & (start >= self._drift_ms)
            profile = np.where(drifted, self._drift_to, profile)
        rate = self._sessions_per_day[profile] / self._rate_cap[user]
        rate = rate * _HOURLY[(start // HOUR_MS) % 24] / _HOURLY_MAX
        churn = self._churning[user]
        if churn.any():
            a, b = self._active_start[user[churn]], self._active_end[user[churn]]
            rate[churn] *= 1.0 - _CHURN_SLOWDOWN * (start[churn] - a) / np.maximum(b - a, 1)
        keep = rng.random(len(user)) < rate
        user, start, profile = user[keep], start[keep], profile[keep]
        n_sessions = len(user)

        # Views: 1 + Poisson, lognormal gaps within a session.
        n_views = 1 + rng.poisson(self._extra_views[profile])
        v_session = np.repeat(np.arange(n_sessions), n_views)
        first = np.cumsum(n_views) - n_views
        gaps = rng.lognormal(np.log(35 * SECOND_MS), 0.9, size=len(v_session))
        gaps[first] = 0.0
        offsets = np.cumsum(gaps)
        offsets -= offsets[first][v_session]
        v_ts = start[v_session] + offsets.astype(np.int64)
        v_user = user[v_session]
        v_profile = profile[v_session]
        session_category = self._draw_category(user, rng)
        v_category = np.where(
            rng.random(len(v_session)) < 0.7,
            session_category[v_session],
            self._draw_category(v_user, rng),
        )
        rank = np.minimum(rng.zipf(1.6, size=len(v_session)) - 1, _ITEMS_PER_CATEGORY - 1)
        v_item = v_category * _ITEMS_PER_CATEGORY + rank

        u3 = rng.random((3, len(v_session)))
        is_cart = u3[0] < self._p_cart[v_profile]
        is_like = u3[1] < self._p_like[v_profile]
        is_share = u3[2] < self._p_share[v_profile]

        c = np.flatnonzero(is_cart)
        c_ts = v_ts[c] + rng.lognormal(np.log(20 * SECOND_MS), 0.7, size=len(c)).astype(np.int64)
        c_qty = 1 + rng.poisson(0.3, size=len(c))
        c_session = v_session[c]

        # Purchase: one per session with carts, with the checkout probability.
        group = np.flatnonzero(np.r_[True, np.diff(c_session) != 0]) if len(c) else c
        p_session = c_session[group]
        p_last_cart = np.maximum.reduceat(c_ts, group) if len(c) else c_ts
        p_qty = np.add.reduceat(c_qty, group) if len(c) else c_qty
        p_item = v_item[c[group]]
        checkout = rng.random(len(group)) < self._p_checkout[profile[p_session]]
        p_session, p_last_cart, p_qty, p_item = (
            p_session[checkout],
            p_last_cart[checkout],
            p_qty[checkout],
            p_item[checkout],
        )
        p_user, p_profile = user[p_session], profile[p_session]
        p_ts = p_last_cart + rng.lognormal(np.log(2 * MINUTE_MS), 0.6, len(p_session)).astype(
            np.int64
        )
        log_amount = (
            self._order_mu[p_profile]
            + self._amount_offset[p_user]
            + _CATEGORY_LOG_PRICE[p_item // _ITEMS_PER_CATEGORY]
            + 0.3 * np.log(p_qty)
        )
        p_amount = np.maximum(
            np.round(np.exp(rng.normal(log_amount, self._order_sigma[p_profile])), 2), 0.01
        )

        # Refunds (1-30 days later, partial 30% of the time) and reviews (days later).
        u2 = rng.random((2, len(p_session)))
        r = np.flatnonzero(u2[0] < self._p_refund[p_profile])
        r_ts = p_ts[r] + rng.uniform(1 * DAY_MS, 30 * DAY_MS, size=len(r)).astype(np.int64)
        partial = rng.random(len(r)) < 0.3
        r_amount = np.where(
            partial,
            np.maximum(np.round(p_amount[r] * rng.uniform(0.2, 0.9, size=len(r)), 2), 0.01),
            p_amount[r],
        )
        refunded = np.zeros(len(p_session), dtype=bool)
        refunded[r] = True
        w = np.flatnonzero(u2[1] < self._p_review[p_profile])
        w_ts = p_ts[w] + rng.lognormal(np.log(4 * DAY_MS), 0.6, size=len(w)).astype(np.int64)
        w_rating = np.clip(
            np.round(rng.normal(self._rating_mean[p_profile[w]] - 1.5 * refunded[w], 0.9)), 1, 5
        ).astype(np.int64)

        likes = np.flatnonzero(is_like)
        shares = np.flatnonzero(is_share)
        l_ts = v_ts[likes] + rng.lognormal(np.log(8 * SECOND_MS), 0.6, len(likes)).astype(np.int64)
        s_ts = v_ts[shares] + rng.lognormal(np.log(15 * SECOND_MS), 0.6, len(shares)).astype(
            np.int64
        )

        parts = [
            (EventType.VIEW, v_ts, v_user, v_item, None, None, None),
            (EventType.CART, c_ts, v_user[c], v_item[c], None, c_qty, None),
            (EventType.PURCHASE, p_ts, p_user, p_item, p_amount, p_qty, None),
            (EventType.REFUND, r_ts, p_user[r], p_item[r], r_amount, None, None),
            (EventType.REVIEW, w_ts, p_user[w], p_item[w], None, None, w_rating),
            (EventType.LIKE, l_ts, v_user[likes], v_item[likes], None, None, None),
            (EventType.SHARE, s_ts, v_user[shares], v_item[shares], None, None, None),
        ]
        ts = np.concatenate([p[1] for p in parts])
        sizes = [len(p[1]) for p in parts]

        def column(k: int, fill: float, dtype: type) -> np.ndarray:
            return np.concatenate(
                [
                    np.full(s, fill, dtype=dtype) if p[k] is None else np.asarray(p[k], dtype)
                    for p, s in zip(parts, sizes, strict=True)
                ]
            )

        ev_user = np.concatenate([p[2] for p in parts])
        code = np.repeat(np.array([int(p[0]) for p in parts], dtype=np.int8), sizes)
        item = np.concatenate([p[3] for p in parts])
        # Nothing after the user's activity window (churned users stay silent) or the span.
        inside = ts < self._active_end[ev_user]

        delay_kind = np.zeros(len(ts), dtype=np.int8)
        u = rng.random(len(ts))
        late = u < self.config.late_share
        ooo = ~late & (u < self.config.late_share + self.config.out_of_order_share)
        delay = np.zeros(len(ts), dtype=np.int64)
        delay[ooo] = rng.integers(*_OUT_OF_ORDER_DELAY_MS, size=int(ooo.sum()))
        delay[late] = rng.integers(*_LATE_DELAY_MS, size=int(late.sum()))
        delay_kind[ooo] = 1
        delay_kind[late] = 2
        events = _Events(
            ts=ts,
            emit=ts + delay,
            user=ev_user,
            code=code,
            item=item,
            amount=column(4, np.nan, np.float64),
            quantity=column(5, 0, np.int64),
            rating=column(6, 0, np.int64),
            delay_kind=delay_kind,
        )
        return events.take(inside)

    def _draw_category(self, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(len(user))
        return (u[:, None] >= self._category_cdf[user]).sum(axis=1).astype(np.int64)

    # ---------------------------------------------------------------- formatting
    def _to_values(
        self, ev: _Events, rng: np.random.Generator, seq: int, stats: GeneratorStats
    ) -> list[bytes]:
        """JSON values of a chunk, with aliases, ISO timestamps and event ids applied.

        Written with string templates (3x faster than dict + orjson): every piece is either
        a number, a constant without characters to escape, or pre-escaped JSON (user ids).
        """
        cfg = self.config
        n = len(ev)
        u = rng.random((2, n))
        code = ev.code.astype(np.int64)
        aliased = (u[0] < cfg.alias_share) & (self._alias_count[code] > 0)
        pick = (rng.random(n) * np.maximum(self._alias_count[code], 1)).astype(np.int64)
        name_id = np.where(aliased, self._alias_start[code] + pick, code)

        ts: list[Any] = ev.ts.tolist()
        iso = np.flatnonzero(u[1] < cfg.iso_ts_share)
        zone = rng.integers(len(_ZONES), size=len(iso))
        local = (ev.ts[iso] + _ZONE_OFFSET_MS[zone]).astype("datetime64[ms]")
        text = np.datetime_as_string(local, unit="ms").tolist()
        for i, t, z in zip(iso.tolist(), text, zone.tolist(), strict=True):
            ts[i] = f'"{t}{_ZONES[z][0]}"'

        stats.valid += n
        stats.seen[ev.user] = True
        stats.users = int(np.count_nonzero(stats.seen))
        stats.aliased += int(aliased.sum())
        stats.iso_ts += len(iso)
        kinds = np.bincount(ev.delay_kind, minlength=3)
        stats.out_of_order += int(kinds[1])
        stats.late += int(kinds[2])
        counts = np.bincount(code, minlength=len(EventType))
        for t in EventType:
            stats.by_type[self._canonical[t]] += int(counts[t])

        names, uids, currency = self._type_names, self._user_ids_json, self._currency
        items, item_category = self._items, self._item_category
        tag = self._tag
        out: list[bytes] = []
        append = out.append
        view, cart, purchase = int(EventType.VIEW), int(EventType.CART), int(EventType.PURCHASE)
        refund, review = int(EventType.REFUND), int(EventType.REVIEW)
        for k, (t, usr, c, nm, it, amt, q, rt) in enumerate(
            zip(
                ts,
                ev.user.tolist(),
                code.tolist(),
                name_id.tolist(),
                ev.item.tolist(),
                ev.amount.tolist(),
                ev.quantity.tolist(),
                ev.rating.tolist(),
                strict=True,
            ),
            start=seq,
        ):
            head = (
                f'{{"event_id":"{tag}{k}","user_id":{uids[usr]},"type":"{names[nm]}",'
                f'"ts":{t},"category":"{item_category[it]}","item_id":"{items[it]}"'
            )
            if c == view:
                append(f"{head}}}".encode())
            elif c == cart:
                append(f'{head},"quantity":{q}}}'.encode())
            elif c == purchase:
                append(
                    f'{head},"amount":{amt},"currency":"{currency[usr]}","quantity":{q}}}'.encode()
                )
            elif c == refund:
                append(f'{head},"amount":{amt},"currency":"{currency[usr]}"}}'.encode())
            elif c == review:
                append(f'{head},"rating":{rt}}}'.encode())
            else:
                append(f"{head}}}".encode())
        return out


_MALFORMED_NAMES = tuple(MALFORMED_KINDS)
