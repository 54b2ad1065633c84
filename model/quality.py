"""Quality metrics of a segmentation: inertia, agreement, stability, and choice of K.

All distances are Euclidean in the space of the arrays passed in (the scaled space for centres
of a :class:`~model.segmenter.StreamingSegmenter` fed by a
:class:`~model.preprocessing.Preprocessor`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, silhouette_score

from model.exceptions import InsufficientDataError, InvalidInputError
from model.model_format import SegmentModel
from model.preprocessing import as_feature_matrix
from model.segmenter import limit_threads, match_centers, nearest_centers

FloatArray = npt.NDArray[np.float64]


def inertia(X: npt.ArrayLike, centers: npt.ArrayLike) -> float:
    """Sum of squared distances of each row to its nearest centre (units of ``X`` squared)."""
    C = np.asarray(centers, dtype=np.float64)
    if C.ndim != 2:
        raise InvalidInputError(f"centers must be 2-D, got shape {C.shape}")
    C = as_feature_matrix(C, C.shape[1], what="centers")
    A = as_feature_matrix(X, C.shape[1])
    return float(nearest_centers(A, C)[1].sum())


def model_inertia(model: SegmentModel, X_raw: npt.ArrayLike) -> float:
    """Inertia of a published model on a snapshot of raw rows (scaled units squared)."""
    distances = model.assign(X_raw)[2]
    return float(np.dot(distances, distances))


def offline_inertia(
    X: npt.ArrayLike,
    n_clusters: int,
    *,
    n_init: int = 10,
    random_state: int | None = 0,
    n_threads: int | None = 1,
) -> float:
    """Inertia of offline ``KMeans(n_clusters, n_init=n_init)`` on ``X``: the reference.

    ``n_threads`` as in :func:`model.segmenter.limit_threads`.
    """
    A = np.asarray(X, dtype=np.float64)
    with limit_threads(n_threads):
        km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state).fit(A)
    return float(km.inertia_)


def polished_inertia(
    X: npt.ArrayLike, centers: npt.ArrayLike, *, n_threads: int | None = 1
) -> float:
    """Inertia on ``X`` after Lloyd's algorithm from ``centers``: the best of their basin.

    Below :func:`inertia` of ``centers`` when they trail the rows; equal when converged.
    """
    A = np.asarray(X, dtype=np.float64)
    C = np.asarray(centers, dtype=np.float64)
    with limit_threads(n_threads):
        km = KMeans(n_clusters=len(C), init=C, n_init=1).fit(A)
    return float(km.inertia_)


def inertia_ratio(
    X: npt.ArrayLike,
    centers: npt.ArrayLike,
    *,
    n_init: int = 10,
    random_state: int | None = 0,
    n_threads: int | None = 1,
) -> float:
    """Inertia of ``centers`` on ``X`` over that of offline ``KMeans(n_init=10)`` with same K.

    1.0 means as good as offline k-means; 1.05 means 5% worse. Can be slightly below 1 since
    offline k-means finds a local optimum only.
    """
    C = np.asarray(centers, dtype=np.float64)
    reference = offline_inertia(
        X, C.shape[0], n_init=n_init, random_state=random_state, n_threads=n_threads
    )
    return inertia(X, C) / reference if reference > 0 else float("inf")


def adjusted_rand(labels_true: npt.ArrayLike, labels_pred: npt.ArrayLike) -> float:
    """Adjusted Rand index of two labelings of the same rows: 1 identical, ~0 random.

    Invariant to renaming the labels, so positions, ids or planted labels all work.
    """
    return float(adjusted_rand_score(np.asarray(labels_true), np.asarray(labels_pred)))


def partition_inertia(X: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Inertia of a given partition: squared distances of rows to the mean of their label.

    With planted labels, ``partition_inertia / offline_inertia`` says whether the planted groups
    are k-means clusters at all: near 1 they are, well above 1 k-means prefers another split of
    the same rows (and no k-means, streaming or not, can be expected to recover them).
    """
    A = np.asarray(X, dtype=np.float64)
    y = np.asarray(labels)
    if A.ndim != 2 or len(y) != len(A):
        raise InvalidInputError(f"X {A.shape} and labels ({len(y)},) do not match")
    _, codes = np.unique(y, return_inverse=True)
    counts = np.bincount(codes)
    means = np.zeros((len(counts), A.shape[1]))
    np.add.at(means, codes, A)
    means /= counts[:, None]
    return float(((A - means[codes]) ** 2).sum())


def separability_ari(
    X: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    folds: int = 3,
    random_state: int | None = 0,
    n_threads: int | None = 1,
) -> float:
    """Adjusted Rand index of cross-validated *supervised* predictions of ``labels`` from ``X``.

    A gradient-boosted classifier is trained on the labels of ``folds - 1`` folds and predicts
    the held-out fold. It is told the answer during training, so the result is a practical
    ceiling for any unsupervised segmentation of the same features: when it is low, the labels
    are not recoverable from ``X`` (too little history, behaviours the features cannot see),
    whatever the clustering. ``n_threads`` as in :func:`model.segmenter.limit_threads`.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    A = np.asarray(X, dtype=np.float64)
    y = np.asarray(labels)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    classifier = HistGradientBoostingClassifier(max_iter=100, random_state=random_state)
    with limit_threads(n_threads):
        predicted = cross_val_predict(classifier, A, y, cv=splitter)
    return adjusted_rand(y, predicted)


def segment_change_share(
    before: npt.ArrayLike,
    after: npt.ArrayLike,
    *,
    centers_before: npt.ArrayLike | None = None,
    centers_after: npt.ArrayLike | None = None,
    max_distance: float = float("inf"),
) -> float:
    """Share (0..1) of rows whose segment differs between two assignments.

    Without centres, ``before`` and ``after`` are stable segment ids and are compared as they
    are. With ``centers_before`` and ``centers_after`` they are centre positions of two models
    whose numbering is arbitrary: the centres are first matched with the Hungarian algorithm
    (:func:`model.segmenter.match_centers`; a pair farther apart than ``max_distance`` does not
    match) and a row counts as unchanged when its two centres are matched to each other.
    """
    a = np.asarray(before)
    b = np.asarray(after)
    if a.shape != b.shape or a.ndim != 1:
        raise InvalidInputError(f"before and after must be 1-D of one length: {a.shape} {b.shape}")
    if a.size == 0:
        return 0.0
    if (centers_before is None) != (centers_after is None):
        raise ValueError("give both centers_before and centers_after, or neither")
    if centers_before is not None and centers_after is not None:
        match = match_centers(
            np.asarray(centers_before, dtype=np.float64),
            np.asarray(centers_after, dtype=np.float64),
            max_distance,
        )
        # A position of `after` becomes the position of its matched `before` centre (-1 = none).
        b = match[b.astype(np.intp)]
    return float(np.mean(a != b))


@dataclass(frozen=True)
class KScore:
    """Scores of one K in :func:`tune_k`."""

    k: int
    inertia: float
    """Sum of squared distances (units of ``X`` squared); always falls as K grows."""
    silhouette: float
    """Mean silhouette on a sample, -1..1, higher is better."""
    calinski_harabasz: float
    """Between- over within-cluster dispersion, higher is better."""


#: How `recommend_k` picks K (documented in `tune_k`).
KRule = Literal["silhouette", "calinski_harabasz", "elbow"]


@dataclass(frozen=True)
class TuneKResult:
    """Outcome of :func:`tune_k`: one :class:`KScore` per K and the recommended K."""

    scores: list[KScore]
    recommended_k: int
    rule: KRule


def _elbow(ks: FloatArray, inertias: FloatArray) -> int:
    # Kneedle: normalise both axes to [0, 1]; the elbow is the K farthest below the straight
    # line from the first to the last point.
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    span = inertias[0] - inertias[-1]
    y = (inertias - inertias[-1]) / span if span > 0 else np.zeros_like(inertias)
    return int(np.argmax((1.0 - x) - y))


def tune_k(
    X: npt.ArrayLike,
    k_range: Iterable[int],
    *,
    sample_size: int = 5000,
    rule: KRule = "silhouette",
    n_init: int = 3,
    random_state: int | None = 0,
    n_threads: int | None = 1,
) -> TuneKResult:
    """Score each K with k-means++ ``KMeans`` and recommend one.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        Rows in the clustering space (already preprocessed).
    k_range : iterable of int
        Candidate K values, each >= 2 (silhouette needs two clusters).
    sample_size : int, default 5000
        Rows drawn (without replacement) for the silhouette, which costs O(n^2).
    rule : {"silhouette", "calinski_harabasz", "elbow"}, default "silhouette"
        How ``recommended_k`` is chosen: the highest mean silhouette, the highest
        Calinski-Harabasz score, or the elbow of the inertia curve (Kneedle: the K farthest
        below the chord from the first to the last K, both axes normalised). Ties go to the
        smaller K.
    n_init : int, default 3
        k-means++ restarts per K.
    random_state : int or None, default 0
    n_threads : int or None, default 1
        Threads of ``KMeans`` (:func:`model.segmenter.limit_threads`).

    Raises
    ------
    InsufficientDataError
        When ``X`` has fewer rows than the largest K + 1.
    """
    ks = sorted({int(k) for k in k_range})
    if not ks or ks[0] < 2:
        raise ValueError(f"k_range must hold values >= 2, got {ks}")
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2:
        raise InvalidInputError(f"X must be 2-D, got shape {A.shape}")
    A = as_feature_matrix(A, A.shape[1])
    if A.shape[0] <= ks[-1]:
        raise InsufficientDataError(f"tune_k needs more than {ks[-1]} rows, got {A.shape[0]}")
    scores = []
    for k in ks:
        with limit_threads(n_threads):
            km = KMeans(n_clusters=k, n_init=n_init, random_state=random_state).fit(A)
        labels = km.labels_
        sil = float(
            silhouette_score(
                A,
                labels,
                sample_size=min(sample_size, A.shape[0]),
                random_state=random_state,
            )
        )
        scores.append(
            KScore(
                k=k,
                inertia=float(km.inertia_),
                silhouette=sil,
                calinski_harabasz=float(calinski_harabasz_score(A, labels)),
            )
        )
    return TuneKResult(scores=scores, recommended_k=recommend_k(scores, rule), rule=rule)


def recommend_k(scores: list[KScore], rule: KRule) -> int:
    """The K that ``rule`` picks among ``scores`` (rules documented in :func:`tune_k`)."""
    ordered = sorted(scores, key=lambda s: s.k)
    if not ordered:
        raise ValueError("no scores to choose from")
    if rule == "silhouette":
        best = int(np.argmax([s.silhouette for s in ordered]))
    elif rule == "calinski_harabasz":
        best = int(np.argmax([s.calinski_harabasz for s in ordered]))
    elif rule == "elbow":
        ks = np.array([s.k for s in ordered], dtype=np.float64)
        inertias = np.array([s.inertia for s in ordered])
        best = _elbow(ks, inertias) if len(ordered) > 2 else 0
    else:
        raise ValueError(f"unknown rule {rule!r}")
    return ordered[best].k
