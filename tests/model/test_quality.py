"""Quality metrics: inertia, ratio to offline k-means, ARI, segment changes, choice of K."""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from model.labels import label_segments
from model.model_format import SegmentModel
from model.preprocessing import Preprocessor
from model.quality import (
    adjusted_rand,
    inertia,
    inertia_ratio,
    model_inertia,
    partition_inertia,
    polished_inertia,
    recommend_k,
    segment_change_share,
    separability_ari,
    tune_k,
)
from model.segmenter import StreamingSegmenter, limit_threads


def blobs(seed: int, k: int, n: int = 3000, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.vstack([np.eye(d), -np.eye(d)])[rng.permutation(2 * d)[:k]] * 12.0  # k <= 2d
    labels = rng.integers(0, k, n)
    spread = rng.uniform(0.5, 1.5, k)[labels, None]
    return means[labels] + rng.normal(size=(n, d)) * spread, labels


def test_inertia_equals_scikit_learn_for_its_own_centres() -> None:
    X, _ = blobs(0, 4)
    with limit_threads(1):
        km = KMeans(4, n_init=3, random_state=0).fit(X)
    assert inertia(X, km.cluster_centers_) == pytest.approx(km.inertia_, rel=1e-9)


def test_inertia_ratio_is_one_for_good_centres_and_larger_for_bad_ones() -> None:
    X, truth = blobs(1, 4)
    good = np.array([X[truth == k].mean(axis=0) for k in range(4)])
    assert inertia_ratio(X, good) == pytest.approx(1.0, abs=1e-3)
    assert inertia_ratio(X, good[[0, 1, 2, 2]] + 0.5) > 1.5


def test_polished_inertia_improves_trailing_centres_and_keeps_converged_ones() -> None:
    X, _ = blobs(4, 4)
    converged = KMeans(4, n_init=5, random_state=0).fit(X)
    assert polished_inertia(X, converged.cluster_centers_) == pytest.approx(converged.inertia_)
    trailing = converged.cluster_centers_ + 2.0  # every centre 2 units off in each direction
    assert inertia(X, trailing) > 1.5 * converged.inertia_
    assert polished_inertia(X, trailing) == pytest.approx(converged.inertia_, rel=1e-6)


def test_adjusted_rand_ignores_label_names() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand(labels, (labels + 1) % 3 * 10) == 1.0
    assert adjusted_rand(labels, [0, 1, 0, 1, 0, 1]) < 0


def test_segment_change_share_with_ids_and_with_matched_positions() -> None:
    before = np.array([5, 5, 7, 7, 9, 9, 9, 9, 5, 7])
    after = before.copy()
    after[[1, 4]] = [7, 5]
    assert segment_change_share(before, after) == pytest.approx(0.2)

    # Two fits of the same data number their centres differently: matching undoes that.
    X, _ = blobs(2, 3)
    with limit_threads(1):
        a = KMeans(3, n_init=1, random_state=0).fit(X)
        b = KMeans(3, init=a.cluster_centers_[[2, 0, 1]], n_init=1).fit(X)
    assert np.mean(a.labels_ != b.labels_) > 0.5
    share = segment_change_share(
        a.labels_, b.labels_, centers_before=a.cluster_centers_, centers_after=b.cluster_centers_
    )
    assert share == 0.0


def test_model_inertia_is_measured_in_the_scaled_space() -> None:
    X, _ = blobs(3, 3)
    names = ["recency_days", "purchases", "net_revenue"]
    features = [
        *names,
        "avg_order_value",
        "views",
        "carts",
        "cart_to_purchase",
        "view_to_purchase",
        "engagement",
        "tenure_days",
    ]
    X = np.column_stack([np.abs(X), np.ones((len(X), 7))])
    pre = Preprocessor(features, log_columns=["purchases"]).fit(X)
    Z = pre.transform(X)
    seg = StreamingSegmenter(3, random_state=0).fit(Z)
    labels = label_segments(pre.inverse_transform(seg.cluster_centers_), X, seg.labels_, features)
    model = SegmentModel.from_fitted(seg, pre, labels)
    assert model_inertia(model, X) == pytest.approx(inertia(Z, seg.cluster_centers_), rel=1e-9)
    assert model_inertia(model, X) == pytest.approx(seg.inertia_, rel=1e-6)


@pytest.mark.parametrize("k", [3, 5])
def test_tune_k_finds_the_planted_number_of_segments(k: int) -> None:
    X, _ = blobs(4 + k, k, n=2000)
    result = tune_k(X, range(2, 8), sample_size=1000)
    assert [s.k for s in result.scores] == list(range(2, 8))
    assert result.recommended_k == k
    inertias = [s.inertia for s in result.scores]
    assert np.all(np.diff(inertias) < 0)
    assert result.rule == "silhouette"
    assert recommend_k(result.scores, "calinski_harabasz") == k
    assert recommend_k(result.scores, "elbow") == k


def test_partition_inertia_tells_whether_labels_are_k_means_clusters() -> None:
    X, truth = blobs(5, 4)
    with limit_threads(1):
        km = KMeans(4, n_init=3, random_state=0).fit(X)
    # Blobs are k-means clusters: their own partition is as good as k-means finds.
    assert partition_inertia(X, truth) == pytest.approx(km.inertia_, rel=1e-3)
    # Labels that cut across the blobs are not: far more inertia than k-means.
    across = (X[:, 0] + X[:, 1] > 0).astype(int) + 2 * (np.arange(len(X)) % 2)
    assert partition_inertia(X, across) > 3 * km.inertia_


def test_separability_ari_is_high_for_visible_labels_and_zero_for_invisible_ones() -> None:
    X, truth = blobs(6, 4, n=1200)
    assert separability_ari(X, truth) > 0.95
    invisible = np.random.default_rng(0).integers(0, 4, len(X))
    assert abs(separability_ari(X, invisible)) < 0.05
