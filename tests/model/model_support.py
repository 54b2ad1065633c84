"""A fitted model of plausible users, shared by the model tests (`fitted` in conftest)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from model.labels import label_segments
from model.model_format import SegmentModel
from model.preprocessing import Preprocessor
from model.segmenter import StreamingSegmenter

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
HEAVY = ["purchases", "net_revenue", "avg_order_value", "views", "carts", "engagement"]


def raw_users(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plausible feature rows in business units: three behaviours, heavy tails."""
    kind = rng.integers(0, 3, n)
    purchases = np.where(kind == 0, 0.0, rng.gamma(2.0, 2.0 + 3 * kind, n))
    aov = np.where(purchases > 0, rng.lognormal(3.5 + kind, 0.5, n), 0.0)
    revenue = purchases * aov - rng.exponential(5.0, n)
    views = rng.gamma(2.0, 10.0 + 20 * kind, n)
    carts = views * rng.uniform(0.05, 0.3, n)
    return np.column_stack(
        [
            np.where(purchases > 0, rng.uniform(0, 90, n), 365.0),
            purchases,
            revenue,
            aov,
            views,
            carts,
            np.minimum(purchases / np.maximum(carts, 1), 1.0),
            np.minimum(purchases / np.maximum(views, 1), 1.0),
            rng.exponential(1.0 + kind, n),
            rng.uniform(0, 1000, n),
        ]
    )


def fitted_model() -> tuple[SegmentModel, StreamingSegmenter, Preprocessor, np.ndarray]:
    """A 5-segment model fitted on 6,000 `raw_users`, with the segmenter, preprocessor, rows."""
    rng = np.random.default_rng(0)
    X = raw_users(rng, 6000)
    pre = Preprocessor(FEATURES, log_columns=HEAVY).fit(X)
    Z = pre.transform(X)
    seg = StreamingSegmenter(5, random_state=0).fit(Z[:3000])
    for start in range(3000, 6000, 1000):
        seg.partial_fit(Z[start : start + 1000])
    centres = pre.inverse_transform(seg.cluster_centers_)
    labels = label_segments(centres, X, seg.predict(Z), FEATURES)
    created = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    model = SegmentModel.from_fitted(seg, pre, labels, created_at=created, n_rows=len(X))
    return model, seg, pre, X
