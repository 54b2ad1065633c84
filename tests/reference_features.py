"""An independent, deliberately naive recomputation of user state from the documented formulas.

It shares no code with `model.features` beyond the table of field names, so a test comparing
the two checks the vectorised maths against the written definition.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from typing import Any

from model.features import CATEGORY_SLOTS, MS_PER_DAY, FeatureConfig

_TYPES = {
    "purchases": ("purchase", False, "purchases"),
    "purchase_amount": ("purchase", True, "revenue"),
    "refund_amount": ("refund", True, "revenue"),
    "views": ("view", False, "views"),
    "carts": ("cart", False, "carts"),
}


def recompute(events: list[dict[str, Any]], config: FeatureConfig) -> dict[str, dict[str, Any]]:
    """Per user: accumulators anchored at the last event time, times, categories by name.

    ``events`` are canonical (type already mapped), in Kafka offset order, each once.
    """
    half = {
        "purchases": config.purchases_half_life_days,
        "revenue": config.revenue_half_life_days,
        "views": config.views_half_life_days,
        "carts": config.carts_half_life_days,
        "engagement": config.engagement_half_life_days,
    }
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_user[e["user_id"]].append(e)
    out: dict[str, dict[str, Any]] = {}
    for user, evs in by_user.items():
        last = max(e["ts"] for e in evs)

        def decay(t: float, family: str, last: float = last) -> float:
            return 0.5 ** ((last - t) / (half[family] * MS_PER_DAY))

        row: dict[str, Any] = {"last_ts_ms": last, "first_ts_ms": min(e["ts"] for e in evs)}
        purchases = [e["ts"] for e in evs if e["type"] == "purchase"]
        row["last_purchase_ts_ms"] = max(purchases) if purchases else math.nan
        for name, (etype, by_amount, family) in _TYPES.items():
            row[name] = sum(
                (e["amount"] if by_amount else 1.0) * decay(e["ts"], family)
                for e in evs
                if e["type"] == etype
            )
        row["engagement"] = sum(
            decay(e["ts"], "engagement") for e in evs if e["type"] in ("review", "like", "share")
        )
        categories: dict[str, dict[str, float]] = {}
        for e in evs:
            cat = e.get("category")
            if cat is None or e["type"] not in ("purchase", "view"):
                continue
            if cat not in categories:
                if len(categories) == CATEGORY_SLOTS:
                    continue
                categories[cat] = {"spend": 0.0, "views": 0.0}
            if e["type"] == "purchase":
                categories[cat]["spend"] += e["amount"] * decay(e["ts"], "revenue")
            else:
                categories[cat]["views"] += decay(e["ts"], "views")
        row["categories"] = categories
        out[user] = row
    return out


def drop_duplicate_event_ids(events: list[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """The events a consumer applies when it skips duplicate event ids: per user, in Kafka
    offset order, an event whose ``event_id`` is among the ids of that user's last ``window``
    applied events is dropped (``window`` 0 keeps everything)."""
    recent: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=window))
    kept = []
    for e in events:
        ids = recent[e["user_id"]]
        if window and e["event_id"] in ids:
            continue
        ids.append(e["event_id"])
        kept.append(e)
    return kept
