"""StreamingSegmenter: quality against planted labels and offline k-means, stability, drift,
stable ids, dying clusters, hysteresis and the estimator contract."""

import doctest
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from model.exceptions import InsufficientDataError, NotFittedError
from model.preprocessing import Preprocessor
from model.quality import offline_inertia
from model.segmenter import (
    StreamingSegmenter,
    assign_with_hysteresis,
    match_centers,
    nearest_centers,
)

Blobs = tuple[np.ndarray, np.ndarray]  # rows, planted labels


# -- planted data sets of several shapes: the tests must not depend on one generator ----------


def _separated_means(rng: np.random.Generator, k: int, d: int, min_gap: float) -> np.ndarray:
    means: list[np.ndarray] = []
    while len(means) < k:
        m = rng.uniform(-min_gap * k / 2, min_gap * k / 2, d)
        if all(np.linalg.norm(m - o) >= min_gap for o in means):
            means.append(m)
    return np.array(means)


def rotated_gaussians(rng: np.random.Generator, n: int, min_gap: float = 12.0) -> Blobs:
    """6 anisotropic, randomly rotated Gaussians in 10-D, blob scales x4 apart, sizes skewed."""
    k, d = 6, 10
    scales = np.exp(rng.uniform(np.log(0.5), np.log(2.0), k))
    means = _separated_means(rng, k, d, min_gap=min_gap)
    share = rng.dirichlet(np.full(k, 3.0)) * 0.7 + 0.3 / k
    labels = rng.choice(k, n, p=share)
    X = np.empty((n, d))
    for j in range(k):
        rows = labels == j
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        axes = scales[j] * np.exp(rng.uniform(-0.7, 0.7, d))  # elongated, not spherical
        X[rows] = means[j] + (rng.normal(size=(rows.sum(), d)) * axes) @ q.T
    return X, labels


def sklearn_blobs(rng: np.random.Generator, n: int) -> Blobs:
    """scikit-learn's make_blobs, 5 isotropic blobs in 4-D with different spreads."""
    X, y = make_blobs(
        n_samples=n,
        n_features=4,
        centers=5,
        cluster_std=[0.4, 0.8, 1.2, 0.6, 1.0],
        center_box=(-20, 20),
        random_state=int(rng.integers(1 << 31)),
    )
    return X, y


def uniform_boxes(rng: np.random.Generator, n: int) -> Blobs:
    """4 uniform hyper-rectangles in 3-D (flat-topped, not Gaussian), unequal widths."""
    k, d = 4, 3
    means = _separated_means(rng, k, d, min_gap=10.0)
    widths = rng.uniform(1.0, 4.0, (k, d))
    labels = rng.integers(0, k, n)
    X = means[labels] + (rng.random((n, d)) - 0.5) * widths[labels]
    return X, labels


def business_like(rng: np.random.Generator, n: int) -> Blobs:
    """5 log-normal segments in 6 business-unit columns of very different magnitudes.

    Heavy-tailed, skewed, columns from 0..1 to thousands: only separable after the
    preprocessing (signed log1p + robust scaling), as real feature vectors are.
    """
    k, d = 5, 6
    log_means = _separated_means(rng, k, d, min_gap=4.0)
    units = np.array([1.0, 10.0, 1000.0, 0.01, 100.0, 5.0])
    labels = rng.choice(k, n, p=[0.4, 0.25, 0.15, 0.12, 0.08])
    X = np.exp(log_means[labels] + rng.normal(0, 0.35, (n, d))) * units
    X[:, 2] *= np.where(labels == 0, -1.0, 1.0)  # a segment with negative net revenue
    return X, labels


GENERATORS: dict[str, Callable[[np.random.Generator, int], Blobs]] = {
    "rotated_gaussians": rotated_gaussians,
    "sklearn_blobs": sklearn_blobs,
    "uniform_boxes": uniform_boxes,
    "business_like": business_like,
}


def space(name: str, X: np.ndarray) -> np.ndarray:
    """The clustering space: business-like data goes through the preprocessing."""
    if name != "business_like":
        return X
    names = [f"f{j}" for j in range(X.shape[1])]
    return Preprocessor(names, log_columns=names).fit_transform(X)


def stream(
    seg: StreamingSegmenter, Z: np.ndarray, *, bootstrap: int, batch: int
) -> StreamingSegmenter:
    """Bootstrap on the first rows, then one partial_fit per batch over the rest."""
    seg.fit(Z[:bootstrap])
    for start in range(bootstrap, Z.shape[0], batch):
        seg.partial_fit(Z[start : start + batch])
    return seg


# -- quality ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_streaming_recovers_planted_segments_and_matches_offline_kmeans(name: str) -> None:
    rng = np.random.default_rng(11)
    X, truth = GENERATORS[name](rng, 12_000)
    Z = space(name, X)
    K = len(np.unique(truth))
    seg = stream(
        StreamingSegmenter(K, half_life_batches=10, random_state=0), Z, bootstrap=2000, batch=500
    )
    assert seg.version_ == 1 + (12_000 - 2000) // 500
    assert adjusted_rand_score(truth, seg.predict(Z)) >= 0.9
    offline = offline_inertia(Z, K, n_init=10)
    streaming = nearest_centers(Z, seg.cluster_centers_)[1].sum()
    assert streaming <= 1.05 * offline


@pytest.mark.parametrize("name", ["overlapping", "no_structure"])
def test_consecutive_versions_barely_move_users_when_behaviour_is_unchanged(name: str) -> None:
    # Well separated blobs would pass trivially; these data sets put many users near a boundary.
    rng = np.random.default_rng(5)
    if name == "no_structure":
        # One correlated cloud, no planted clusters: k-means just partitions it.
        cov = np.cov(rng.normal(size=(5, 50)))
        Z = rng.multivariate_normal(np.zeros(5), cov, 30_000)
    else:
        Z = rotated_gaussians(rng, 30_000, min_gap=0.5)[0]
    seg = StreamingSegmenter(6, half_life_batches=20, random_state=0)
    stream(seg, Z[:20_000], bootstrap=4000, batch=2000)  # warm-up
    snapshot = Z[:5000]
    before, _ = seg.assign(snapshot)
    for start in range(20_000, 30_000, 2000):
        seg.partial_fit(Z[start : start + 2000])
        after, _ = seg.assign(snapshot)
        assert np.mean(before != after) < 0.02
        before = after


# -- drift --------------------------------------------------------------------------------------

CORNERS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
SHIFT = np.array([3.0, 3.0])  # blob 3 moves from (10, 10) to (13, 13): still nearest its centre


def _corner_batch(rng: np.random.Generator, n: int, moved: bool) -> np.ndarray:
    means = CORNERS.copy()
    if moved:
        means[3] += SHIFT
    return means[rng.integers(0, 4, n)] + rng.normal(0, 1.0, (n, 2))


def _run_drift(half_life: float | None) -> tuple[list[float], StreamingSegmenter, list[int]]:
    rng = np.random.default_rng(3)
    seg = StreamingSegmenter(4, half_life_batches=half_life, random_state=0)
    seg.fit(_corner_batch(rng, 2000, moved=False))
    for _ in range(30):
        seg.partial_fit(_corner_batch(rng, 400, moved=False))
    moving = int(seg.predict(CORNERS[3:])[0])
    ids_before = seg.ids_.tolist()
    gaps = []
    for _ in range(25):
        seg.partial_fit(_corner_batch(rng, 400, moved=True))
        gaps.append(float(np.linalg.norm(seg.cluster_centers_[moving] - (CORNERS[3] + SHIFT))))
    return gaps, seg, ids_before


def test_with_forgetting_a_moved_segment_is_followed_and_keeps_every_id() -> None:
    half_life = 5.0
    gaps, seg, ids_before = _run_drift(half_life)
    # At steady state each batch moves a centre by 1 - decay of the remaining gap, so the gap
    # (4.24) falls below 0.5 after log(0.5 / 4.24) / log(decay) ~ 15.4 updates; allow 3 more.
    decay = 0.5 ** (1 / half_life)
    bound = int(np.ceil(np.log(0.5 / np.linalg.norm(SHIFT)) / np.log(decay))) + 3
    assert min(i for i, g in enumerate(gaps, 1) if g < 0.5) <= bound
    assert gaps[-1] < 0.3
    assert seg.ids_.tolist() == ids_before  # every centre, the moving one too, kept its id
    # The other segments did not move.
    others = np.delete(seg.cluster_centers_, seg.predict(CORNERS[3:] + SHIFT), axis=0)
    assert np.abs(np.sort(others, axis=0) - np.sort(CORNERS[:3], axis=0)).max() < 0.3


def test_without_forgetting_a_moved_segment_lags_behind() -> None:
    followed, _, _ = _run_drift(5.0)
    frozen, _, _ = _run_drift(None)
    # Without decay the centre is the mean of everything ever seen: still far from the blob.
    assert frozen[-1] > 1.0
    assert frozen[-1] > 5 * followed[-1]


# -- stable ids ---------------------------------------------------------------------------------


def _blob_ids(seg: StreamingSegmenter, means: np.ndarray) -> list[int]:
    ids, _ = seg.assign(means)
    return ids.tolist()


def test_refit_on_permuted_data_keeps_the_ids_of_every_segment() -> None:
    rng = np.random.default_rng(8)
    means = _separated_means(rng, 5, 3, min_gap=8.0)
    labels = rng.integers(0, 5, 5000)
    X = means[labels] + rng.normal(0, 1.0, (5000, 3))
    seg = StreamingSegmenter(5, random_state=0).fit(X)
    before = _blob_ids(seg, means)
    assert sorted(before) == [0, 1, 2, 3, 4]

    # Refit with other seeds, shuffled rows, and a centre order forced to differ.
    seg.set_params(random_state=1).fit(X[rng.permutation(len(X))])
    assert _blob_ids(seg, means) == before
    order = [3, 0, 4, 1, 2]
    seg.set_params(init=means[order]).fit(X)
    assert seg.predict(means).tolist() != seg.predict(means[order]).tolist()
    assert _blob_ids(seg, means) == before
    assert seg.version_ == 3 and seg.next_id_ == 5


def test_a_refit_never_ends_worse_than_polishing_the_current_centres() -> None:
    # Twelve blobs on a grid, six heavy and six light: one k-means++ run often splits a heavy
    # blob and merges two light ones; the model already sits at the planted optimum.
    rng = np.random.default_rng(12)
    means = np.array([[x, y] for x in range(4) for y in range(3)], dtype=float) * 5.0
    weights = np.r_[np.full(6, 0.15), np.full(6, 0.1 / 6)]
    X = means[rng.choice(12, 6000, p=weights / weights.sum())] + rng.normal(0, 1.0, (6000, 2))
    optimum = StreamingSegmenter(12, init=means).fit(X).inertia_
    missed = 0
    for seed in range(8):
        seg = StreamingSegmenter(12, init=means).fit(X)
        seg.set_params(init="k-means++", n_init=1, random_state=seed).fit(X)
        assert seg.inertia_ <= optimum * (1 + 1e-9)
        assert nearest_centers(X, seg.cluster_centers_)[1].sum() == pytest.approx(seg.inertia_)
        missed += offline_inertia(X, 12, n_init=1, random_state=seed) > 1.01 * optimum
    assert missed > 0, "k-means++ found the optimum every time: the test proves nothing"


def test_a_new_far_segment_gets_a_new_id_and_ids_are_never_reused() -> None:
    rng = np.random.default_rng(9)
    means = _separated_means(rng, 4, 3, min_gap=8.0)

    def sample(ms: np.ndarray) -> np.ndarray:
        return ms[rng.integers(0, len(ms), 4000)] + rng.normal(0, 1.0, (4000, 3))

    seg = StreamingSegmenter(4, new_id_distance=2.0, random_state=0).fit(sample(means))
    old = _blob_ids(seg, means)

    far = np.vstack([means, [[100.0, 100.0, 100.0]]])
    seg.set_params(n_clusters=5).fit(sample(far))
    assert _blob_ids(seg, means) == old
    assert _blob_ids(seg, far[4:]) == [4] and seg.next_id_ == 5

    # Segment of blob 0 disappears, then another far blob appears: it must not get id old[0].
    kept = np.vstack([far[1:], [[-100.0, 50.0, 0.0]]])
    seg.fit(sample(kept))
    assert _blob_ids(seg, far[1:]) == [*old[1:], 4]
    assert _blob_ids(seg, kept[-1:]) == [5]
    assert old[0] not in seg.ids_.tolist()


# -- the update rule, forgetting and dying clusters ----------------------------------------------


def test_partial_fit_is_the_running_mean_with_decayed_counts() -> None:
    init = np.array([[0.0, 0.0], [10.0, 10.0]])
    X0 = np.array([[-1.0, 0.0], [1.0, 0.0], [9.0, 10.0], [11.0, 10.0]])
    seg = StreamingSegmenter(2, init=init, half_life_batches=1.0).fit(X0)
    np.testing.assert_allclose(seg.counts_, [2.0, 2.0])
    seg.partial_fit(np.array([[3.0, 0.0]]))
    # Counts halve (half-life 1 batch): 2 -> 1; then (1 * 0 + 3) / (1 + 1) = 1.5.
    np.testing.assert_allclose(seg.cluster_centers_, [[1.5, 0.0], [10.0, 10.0]])
    np.testing.assert_allclose(seg.counts_, [2.0, 1.0])
    assert seg.inertia_ == pytest.approx(9.0)  # before the update: (3 - 0) ** 2


@pytest.mark.parametrize(
    ("params", "weight", "expected"),
    [
        ({"half_life_batches": 4.0}, 100.0, 0.5**0.25),
        ({"half_life_batches": None, "half_life_points": 1000.0}, 500.0, 0.5**0.5),
        ({"half_life_batches": 2.0, "half_life_points": 100.0}, 100.0, 0.5**0.5 * 0.5),
        ({"half_life_batches": float("inf")}, 100.0, 1.0),
    ],
)
def test_decay_factor_follows_spark_rule(
    params: dict[str, Any], weight: float, expected: float
) -> None:
    assert StreamingSegmenter(**params).decay_factor(weight) == pytest.approx(expected)


def test_a_dying_cluster_is_flagged_and_kept_in_place_not_relocated() -> None:
    rng = np.random.default_rng(4)
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    seg = StreamingSegmenter(3, half_life_batches=2.0, dying_share=0.01, random_state=0)
    seg.fit(means[rng.integers(0, 3, 3000)] + rng.normal(0, 1, (3000, 2)))
    assert seg.dying_clusters_.size == 0
    gone = int(seg.predict(means[2:])[0])
    gone_id, gone_centre = int(seg.ids_[gone]), seg.cluster_centers_[gone].copy()
    for _ in range(12):  # the third segment stops receiving users
        seg.partial_fit(means[rng.integers(0, 2, 500)] + rng.normal(0, 1, (500, 2)))
    assert seg.dying_clusters_.tolist() == [gone_id]
    assert int(seg.ids_[gone]) == gone_id
    np.testing.assert_array_equal(seg.cluster_centers_[gone], gone_centre)


# -- assignment ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 9), st.integers(1, 12))
def test_vectorised_assignment_equals_brute_force(seed: int, k: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, d)) * rng.uniform(0.1, 10, d)
    C = rng.normal(size=(k, d)) * 3
    brute = ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    positions, d2 = nearest_centers(X, C)
    np.testing.assert_allclose(d2, brute.min(axis=1), rtol=1e-9, atol=1e-9)
    # Where the brute force has a unique winner the position agrees.
    srt = np.sort(brute, axis=1)
    clear = srt[:, 0] < srt[:, min(1, k - 1)] - 1e-6 if k > 1 else np.ones(len(X), bool)
    np.testing.assert_array_equal(positions[clear], brute.argmin(axis=1)[clear])


def test_hysteresis_keeps_the_previous_segment_unless_clearly_closer() -> None:
    C = np.array([[0.0, 0.0], [10.0, 0.0]])
    ids = np.array([7, 9], dtype=np.int64)
    X = np.array([[5.5, 0.0], [8.0, 0.0], [5.5, 0.0], [1.0, 0.0]])
    previous = np.array([7, 7, 42, -1])  # 42: a segment that no longer exists
    got, positions, dist = assign_with_hysteresis(X, C, ids, previous, margin=0.2)
    # Row 0: 4.5 to id 9 vs 5.5 to id 7; 4.5 < 0.8 * 5.5 = 4.4 is false -> stays 7.
    # Row 1: 2.0 vs 8.0 -> switches. Rows 2, 3: no valid previous -> nearest.
    assert got.tolist() == [7, 9, 9, 7]
    assert positions.tolist() == [0, 1, 1, 0]
    np.testing.assert_allclose(dist, [5.5, 2.0, 4.5, 1.0])
    plain, _, _ = assign_with_hysteresis(X, C, ids)
    assert plain.tolist() == [9, 9, 9, 7]


# -- contract and errors -------------------------------------------------------------------------


def test_estimator_contract() -> None:
    seg = StreamingSegmenter(3, half_life_batches=7.0, random_state=1)
    assert not any(k.endswith("_") for k in vars(seg))  # __init__ only stores parameters
    assert clone(seg).get_params() == seg.get_params()
    with pytest.raises(NotFittedError):
        seg.predict(np.zeros((1, 2)))
    X = np.random.default_rng(0).normal(size=(300, 2))
    seg.partial_fit(X)  # first call on an unfitted estimator is the bootstrap
    assert seg.version_ == 1 and seg.n_updates_ == 0
    seg.partial_fit(X[:10])
    assert seg.version_ == 2 and seg.n_updates_ == 1
    assert seg.fit_predict(X).shape == (300,)


def test_never_bootstraps_from_a_tiny_batch() -> None:
    tiny = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(InsufficientDataError, match="at least 100 rows"):
        StreamingSegmenter(8).partial_fit(tiny)
    with pytest.raises(InsufficientDataError, match="at least 200 rows"):
        StreamingSegmenter(20).fit(np.zeros((150, 4)))


def test_from_state_continues_where_the_stored_model_stopped() -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(1000, 3))
    seg = StreamingSegmenter(4, random_state=0).fit(X)
    seg.partial_fit(X[:200])
    copy = StreamingSegmenter.from_state(
        seg.cluster_centers_,
        seg.counts_,
        seg.ids_,
        next_id=seg.next_id_,
        version=seg.version_,
        half_life_batches=20.0,
    )
    seg.partial_fit(X[200:400])
    copy.partial_fit(X[200:400])
    np.testing.assert_allclose(copy.cluster_centers_, seg.cluster_centers_)
    assert copy.version_ == seg.version_ and copy.ids_.tolist() == seg.ids_.tolist()


def test_docstring_examples_run() -> None:
    import model.segmenter

    result = doctest.testmod(model.segmenter)
    assert result.attempted > 0 and result.failed == 0


def test_matching_prefers_more_valid_pairs_over_a_smaller_total_distance() -> None:
    previous = np.array([[0.0], [10.0]])
    current = np.array([[1.9], [-8.0]])
    # Minimal total distance pairs 1.9 with 10 and -8 with 0 (8.1 + 8.0): both too far. With
    # gating, 1.9 keeps the centre at 0 (1.9 <= 2) and -8 gets nothing.
    assert match_centers(previous, current, max_distance=2.0).tolist() == [0, -1]
    assert match_centers(previous, current, max_distance=np.inf).tolist() == [1, 0]
