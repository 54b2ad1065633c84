"""Streaming k-means segmenter: bootstrap with k-means++, then mini-batch updates with forgetting.

``StreamingSegmenter`` keeps the scikit-learn estimator contract and adds what an online service
needs on top of ``MiniBatchKMeans``: counts that decay (centres follow drift), no random
relocation of centres (a segment id never silently changes meaning), and ids that stay stable
across updates and refits (Hungarian matching of centres, a fresh id when nothing matches).

The module also holds the vectorised assignment functions shared with :mod:`model.model_format`.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from model.exceptions import InsufficientDataError, InvalidInputError, NotFittedError
from model.preprocessing import as_feature_matrix

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def limit_threads(n_threads: int | None) -> AbstractContextManager[object]:
    """Context limiting OpenMP and BLAS threads (``None``: leave the library defaults).

    scikit-learn's ``KMeans`` runs OpenMP threads that spin while they wait; next to other busy
    processes (a consumer on the same machine) that makes it far slower, not faster: six small
    fits took 6.8 s with the default threads and 0.14 s with one, on a loaded 2-core machine.
    """
    return nullcontext() if n_threads is None else threadpool_limits(limits=n_threads)


# -- assignment: pure functions over arrays ----------------------------------------------------


def squared_norms(A: FloatArray) -> FloatArray:
    """Row-wise squared Euclidean norms of a 2-D array."""
    return np.einsum("ij,ij->i", A, A)


def sq_distance_matrix(
    X: FloatArray, centers: FloatArray, center_sq_norms: FloatArray | None = None
) -> FloatArray:
    """Squared Euclidean distances (n_rows, n_centers), via ``|x|^2 - 2 x.c + |c|^2``.

    One matrix product instead of a Python loop; clipped at 0 because the expansion can round
    slightly below 0 for a row sitting on a centre.
    """
    cn = squared_norms(centers) if center_sq_norms is None else center_sq_norms
    D = X @ centers.T
    D *= -2.0
    D += cn
    D += squared_norms(X)[:, None]
    np.maximum(D, 0.0, out=D)
    return D


def nearest_centers(
    X: FloatArray, centers: FloatArray, center_sq_norms: FloatArray | None = None
) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Position of the nearest centre of each row and the squared distance to it.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features), float64
    centers : ndarray of shape (n_centers, n_features), float64
    center_sq_norms : ndarray of shape (n_centers,), optional
        Precomputed ``|c|^2``; pass it on hot paths.

    Returns
    -------
    positions : ndarray of shape (n_rows,)
        Index into ``centers``; exact ties go to the lowest index.
    sq_distances : ndarray of shape (n_rows,)
        Squared Euclidean distance to that centre (units of ``X`` squared).
    """
    cn = squared_norms(centers) if center_sq_norms is None else center_sq_norms
    # |x|^2 is the same for every centre of a row, so the argmin needs only |c|^2 - 2 x.c;
    # |x|^2 is added back for the chosen centre only (n values instead of n*K).
    D = X @ centers.T
    D *= -2.0
    D += cn
    positions = D.argmin(axis=1)
    d2 = D[np.arange(D.shape[0]), positions]
    d2 += squared_norms(X)
    np.maximum(d2, 0.0, out=d2)
    return positions, d2


def assign_with_hysteresis(
    X: FloatArray,
    centers: FloatArray,
    ids: IntArray,
    previous_ids: npt.ArrayLike | None = None,
    margin: float = 0.0,
    center_sq_norms: FloatArray | None = None,
) -> tuple[IntArray, npt.NDArray[np.intp], FloatArray]:
    """Assign rows to segment ids, optionally keeping each row's previous segment.

    With ``previous_ids`` a row keeps its previous segment ``p`` unless the nearest centre is
    closer by the relative ``margin``: it switches only when ``d_best < (1 - margin) * d_p``
    (Euclidean distances). A previous id that is not among ``ids`` (unknown, dropped, or -1 for
    "none") does not hold the row back.

    Returns
    -------
    ids : ndarray of int64, shape (n_rows,)
    positions : ndarray of intp, shape (n_rows,)
        Index of the chosen centre in ``centers``.
    distances : ndarray of float64, shape (n_rows,)
        Euclidean distance to the chosen centre (units of ``X``).
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    if previous_ids is None or margin == 0.0:
        positions, d2 = nearest_centers(X, centers, center_sq_norms)
        return ids[positions], positions, np.sqrt(d2)
    prev = np.asarray(previous_ids, dtype=np.int64)
    if prev.shape != (X.shape[0],):
        raise InvalidInputError(f"previous_ids must have shape ({X.shape[0]},), got {prev.shape}")
    D = sq_distance_matrix(X, centers, center_sq_norms)
    rows = np.arange(X.shape[0])
    best = D.argmin(axis=1)
    # Position of each previous id among the current ids, -1 when it is gone.
    order = np.argsort(ids, kind="stable")
    idx = np.searchsorted(ids[order], prev)
    idx = np.minimum(idx, len(ids) - 1)
    prev_pos = np.where(ids[order][idx] == prev, order[idx], -1)
    known = prev_pos >= 0
    d_best = np.sqrt(D[rows, best])
    d_prev = np.sqrt(D[rows, np.where(known, prev_pos, 0)])
    keep = known & ~(d_best < (1.0 - margin) * d_prev)
    positions = np.where(keep, prev_pos, best)
    distances = np.where(keep, d_prev, d_best)
    return ids[positions], positions, distances


def match_centers(previous: FloatArray, current: FloatArray, max_distance: float) -> IntArray:
    """Match current centres to previous ones (Hungarian algorithm on Euclidean distance).

    Among assignments, the one with the most pairs within ``max_distance`` wins; among those,
    the one with the smallest total distance.

    Parameters
    ----------
    previous : ndarray of shape (n_previous, n_features)
    current : ndarray of shape (n_current, n_features)
        Both in the same space; the counts may differ.
    max_distance : float
        A matched pair farther apart than this (units of the space) is not a match.

    Returns
    -------
    ndarray of int64, shape (n_current,)
        For each current centre, the index of its previous centre, or -1 when none matches.
    """
    out = np.full(current.shape[0], -1, dtype=np.int64)
    if previous.shape[0] == 0 or current.shape[0] == 0:
        return out
    cost = cdist(current, previous)
    allowed = cost <= max_distance
    # Gating, as in tracking: a forbidden pair costs more than all allowed pairs together, so
    # the assignment first maximises the number of valid matches, then minimises distance.
    gated = np.where(allowed, cost, cost[allowed].sum() + 1.0)
    rows, cols = linear_sum_assignment(gated)
    ok = allowed[rows, cols]
    out[rows[ok]] = cols[ok]
    return out


# -- the estimator -----------------------------------------------------------------------------


class StreamingSegmenter(ClusterMixin, BaseEstimator):
    """Mini-batch k-means with forgetting, explicit dying clusters and stable segment ids.

    ``fit`` bootstraps the centres from a proper sample with k-means++ and ``n_init`` restarts
    (scikit-learn ``KMeans``). ``partial_fit`` then applies one mini-batch step per batch, the
    update of ``MiniBatchKMeans`` and Spark's ``StreamingKMeans`` with decayed counts::

        decay  = 0.5 ** (1 / half_life_batches) * 0.5 ** (n_batch / half_life_points)
        c_k   <- decay * c_k                     (forget: old weight halves every half-life)
        m_k    = total weight of batch rows nearest to centre k, s_k their weighted sum
        mu_k  <- (c_k * mu_k + s_k) / (c_k + m_k)   if m_k > 0, else unchanged
        c_k   <- c_k + m_k

    A half-life of ``None`` (or ``inf``) means no forgetting in that unit: ``mu_k`` is then the
    running mean of everything ever assigned, the plain ``MiniBatchKMeans`` behaviour that freezes
    centres. With forgetting the count settles near ``m_k / (1 - decay)`` so every batch keeps a
    learning rate of about ``1 - decay`` and centres follow drift.

    The update is written with numpy instead of wrapping ``MiniBatchKMeans.partial_fit`` because
    the wrapper cannot forget: its per-centre counts are private state (``_counts``) with no
    decay hook, and its low-count reassignment relocates centres to random rows.

    Dying clusters: never relocated (that would change what an id means). A centre whose decayed
    count is below ``dying_share`` of the total decayed count is kept, still assignable, and its
    id is reported in ``dying_clusters_`` for the trainer to act on (refit, drop, alert).

    Stable ids: after every ``fit`` on a fitted estimator (refit) and every ``partial_fit`` the
    new centres are matched to the previous ones with the Hungarian algorithm on Euclidean
    distance. A centre matched within ``new_id_distance`` inherits the previous id; any other
    centre gets a fresh id from ``next_id_``. Ids are never reused.

    Parameters
    ----------
    n_clusters : int, default 8
        Number of centres K.
    half_life_batches : float or None, default 20.0
        Number of ``partial_fit`` calls after which old weight counts half. ``None`` or ``inf``:
        no forgetting per batch.
    half_life_points : float or None, default None
        Number of rows (total sample weight) after which old weight counts half (Spark's
        ``timeUnit="points"``). Both half-lives may be combined; both ``None`` means no
        forgetting at all.
    new_id_distance : float, default 1.0
        Largest distance (units of ``X``; with :class:`~model.preprocessing.Preprocessor`, 1 is
        ``max(IQR, 1.349 * std)`` of the transformed column) at which a centre keeps the id of
        the previous centre it is matched to.
    dying_share : float, default 0.001
        A centre holding less than this share of the total decayed count is dying.
    n_init : int, default 5
        k-means++ restarts in ``fit``; the lowest inertia wins.
    init : "k-means++" or array of shape (n_clusters, n_features), default "k-means++"
        Initial centres of ``fit``. An explicit array runs Lloyd's algorithm once from it.
    min_fit_rows : int, default 100
        ``fit`` with k-means++ needs at least ``max(10 * n_clusters, min_fit_rows)`` rows.
    max_iter : int, default 300
        Lloyd iterations per k-means++ run in ``fit``.
    tol : float, default 1e-4
        Relative tolerance of ``KMeans`` convergence in ``fit``.
    random_state : int, RandomState or None, default None
        Seed of k-means++ in ``fit``.
    n_threads : int or None, default 1
        Threads of ``KMeans`` in ``fit`` (:func:`limit_threads`); ``None`` uses every core,
        which pays off only on an otherwise idle machine.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Centres (units of ``X``).
    counts_ : ndarray of shape (n_clusters,)
        Decayed weight of rows assigned to each centre.
    ids_ : ndarray of int64, shape (n_clusters,)
        Stable segment id of each centre; position ``k`` of every array is the same centre.
    next_id_ : int
        The id the next new centre gets; greater than every id ever used.
    version_ : int
        Bumped by every ``fit``, ``partial_fit`` and ``replace_centers``.
    inertia_ : float
        After ``fit``: sum of squared distances of the sample to its centres. After
        ``partial_fit``: the same for the batch against the centres *before* the update (an
        honest test-then-train error).
    dying_clusters_ : ndarray of int64
        Ids of dying centres (see above).
    n_features_in_ : int
    n_updates_ : int
        ``partial_fit`` steps since the last ``fit``.
    labels_ : ndarray of intp
        Positions of the rows of the last ``fit`` or ``partial_fit`` call.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 0.1, (100, 2)), rng.normal(5, 0.1, (100, 2))])
    >>> seg = StreamingSegmenter(n_clusters=2, random_state=0).fit(X)
    >>> sorted(seg.ids_.tolist()), seg.version_
    ([0, 1], 1)
    >>> ids, dist = seg.assign(np.array([[0.0, 0.0], [5.0, 5.0]]))
    >>> bool(ids[0] != ids[1]), bool((dist < 0.5).all())
    (True, True)
    >>> _ = seg.partial_fit(X + 0.05)
    >>> seg.version_, sorted(seg.ids_.tolist())
    (2, [0, 1])
    """

    # Fitted state, declared for type checkers; set by fit / partial_fit / from_state.
    cluster_centers_: FloatArray
    counts_: FloatArray
    ids_: IntArray
    next_id_: int
    version_: int
    inertia_: float
    dying_clusters_: IntArray
    n_features_in_: int
    n_updates_: int
    labels_: npt.NDArray[np.intp]
    _cached_sq_norms: FloatArray | None

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        half_life_batches: float | None = 20.0,
        half_life_points: float | None = None,
        new_id_distance: float = 1.0,
        dying_share: float = 0.001,
        n_init: int = 5,
        init: Literal["k-means++"] | npt.ArrayLike = "k-means++",
        min_fit_rows: int = 100,
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        n_threads: int | None = 1,
    ) -> None:
        self.n_clusters = n_clusters
        self.half_life_batches = half_life_batches
        self.half_life_points = half_life_points
        self.new_id_distance = new_id_distance
        self.dying_share = dying_share
        self.n_init = n_init
        self.init = init
        self.min_fit_rows = min_fit_rows
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_threads = n_threads

    # -- helpers ---------------------------------------------------------------------------

    def _is_fitted(self) -> bool:
        return hasattr(self, "cluster_centers_")

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError(
                "StreamingSegmenter is not fitted: call fit(X) on a bootstrap sample first"
            )

    def _weights(self, sample_weight: npt.ArrayLike | None, n: int) -> FloatArray:
        if sample_weight is None:
            return np.ones(n, dtype=np.float64)
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
            raise InvalidInputError(f"sample_weight must be {n} finite values >= 0")
        return w

    def decay_factor(self, batch_weight: float = 0.0) -> float:
        """Multiplier applied to the counts before an update with ``batch_weight`` rows.

        ``0.5 ** (1 / half_life_batches) * 0.5 ** (batch_weight / half_life_points)``, with a
        missing or infinite half-life contributing a factor of 1.
        """
        decay = 1.0
        for half_life, elapsed in (
            (self.half_life_batches, 1.0),
            (self.half_life_points, batch_weight),
        ):
            if half_life is None or math.isinf(half_life):
                continue
            if half_life <= 0:
                raise ValueError(f"half-lives must be > 0 or None, got {half_life}")
            decay *= 0.5 ** (elapsed / half_life)
        return decay

    def _set_ids(self, previous_centers: FloatArray | None, previous_ids: IntArray | None) -> None:
        """Give ``ids_`` to the current centres, inheriting matched previous ids."""
        K = self.cluster_centers_.shape[0]
        if previous_centers is None or previous_ids is None:
            self.ids_ = np.arange(K, dtype=np.int64)
            self.next_id_ = K
            return
        match = match_centers(previous_centers, self.cluster_centers_, self.new_id_distance)
        ids = np.empty(K, dtype=np.int64)
        next_id = self.next_id_
        # Fresh ids are handed out in position order so the result is deterministic.
        for k in range(K):
            if match[k] >= 0:
                ids[k] = previous_ids[match[k]]
            else:
                ids[k] = next_id
                next_id += 1
        self.ids_ = ids
        self.next_id_ = next_id

    def _update_dying(self) -> None:
        total = float(self.counts_.sum())
        share = self.counts_ / total if total > 0 else np.zeros_like(self.counts_)
        self.dying_clusters_ = self.ids_[share < self.dying_share].copy()

    def _center_sq_norms(self) -> FloatArray:
        cached: FloatArray | None = getattr(self, "_cached_sq_norms", None)
        if cached is None:
            cached = squared_norms(self.cluster_centers_)
            self._cached_sq_norms = cached
        return cached

    def _set_centers(self, centers: FloatArray) -> None:
        self.cluster_centers_ = centers
        self._cached_sq_norms = None

    # -- fitting ---------------------------------------------------------------------------

    def fit_rows_needed(self) -> int:
        """Rows ``fit`` needs with k-means++: ``max(10 * n_clusters, min_fit_rows)``."""
        return max(10 * int(self.n_clusters), int(self.min_fit_rows))

    def fit(
        self, X: npt.ArrayLike, y: object = None, sample_weight: npt.ArrayLike | None = None
    ) -> StreamingSegmenter:
        """Bootstrap (or refit) the centres on a sample with k-means++ and ``n_init`` restarts.

        On a fitted estimator this is a refit: centres are recomputed from ``X`` alone, counts
        restart from the sample, and ids carry over by Hungarian matching against the previous
        centres (a centre farther than ``new_id_distance`` from every unmatched previous one gets
        a new id). Centres must be in the same space as before: after refitting the
        preprocessing, re-express them first (:func:`model.preprocessing.remap_centers` and
        :meth:`replace_centers`).

        With k-means++ a refit with the same K also runs Lloyd's algorithm from the current
        centres and keeps that result when its inertia on ``X`` is lower: the restarts can all
        miss the basin the model is in, and a refit must never end worse than polishing the
        centres it replaces.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
            A representative sample, at least ``max(10 * n_clusters, min_fit_rows)`` rows
            (``n_clusters`` rows with an explicit ``init`` array).
        sample_weight : array-like of shape (n_rows,), optional

        Raises
        ------
        InsufficientDataError
            Too few rows for a meaningful bootstrap.
        """
        K = int(self.n_clusters)
        if K < 1:
            raise ValueError(f"n_clusters must be >= 1, got {K}")
        A = np.asarray(X, dtype=np.float64)
        if A.ndim != 2:
            raise InvalidInputError(f"X must be 2-D, got shape {A.shape}")
        d = self.n_features_in_ if self._is_fitted() else A.shape[1]
        A = as_feature_matrix(A, d)
        w = self._weights(sample_weight, A.shape[0])
        explicit_init = not isinstance(self.init, str)
        needed = K if explicit_init else self.fit_rows_needed()
        if A.shape[0] < needed:
            raise InsufficientDataError(
                f"fit needs at least {needed} rows to bootstrap {K} centres "
                f"(max(10 * n_clusters, min_fit_rows)), got {A.shape[0]}; never bootstrap "
                "from a tiny first batch, pass a representative sample"
            )
        init: Any = self.init
        if explicit_init:
            init = np.asarray(self.init, dtype=np.float64)
            if init.shape != (K, d):
                raise ValueError(f"init must have shape ({K}, {d}), got {init.shape}")
        km = KMeans(
            n_clusters=K,
            init=init,
            n_init=1 if explicit_init else int(self.n_init),
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            random_state=self.random_state,
        )
        with limit_threads(self.n_threads):
            km.fit(A, sample_weight=w)
            if self._is_fitted() and not explicit_init and len(self.cluster_centers_) == K:
                polished = KMeans(
                    n_clusters=K,
                    init=self.cluster_centers_,
                    n_init=1,
                    max_iter=int(self.max_iter),
                    tol=float(self.tol),
                ).fit(A, sample_weight=w)
                if polished.inertia_ < km.inertia_:
                    km = polished

        previous_centers = self.cluster_centers_ if self._is_fitted() else None
        previous_ids = getattr(self, "ids_", None)
        self._set_centers(np.ascontiguousarray(km.cluster_centers_, dtype=np.float64))
        self.labels_ = np.asarray(km.labels_, dtype=np.intp)
        self.counts_ = np.bincount(self.labels_, weights=w, minlength=K).astype(np.float64)
        self.inertia_ = float(km.inertia_)
        self.n_features_in_ = d
        self.n_updates_ = 0
        self._set_ids(previous_centers, previous_ids)
        self.version_ = getattr(self, "version_", 0) + 1
        self._update_dying()
        return self

    def partial_fit(
        self, X: npt.ArrayLike, y: object = None, sample_weight: npt.ArrayLike | None = None
    ) -> StreamingSegmenter:
        """One mini-batch step with forgetting (formula in the class docstring).

        On an unfitted estimator the first call is a bootstrap ``fit`` and needs as many rows
        as ``fit`` does. An empty batch still decays the counts (time passes) and bumps the
        version.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
        sample_weight : array-like of shape (n_rows,), optional
        """
        if not self._is_fitted():
            return self.fit(X, sample_weight=sample_weight)
        A = as_feature_matrix(X, self.n_features_in_)
        w = self._weights(sample_weight, A.shape[0])
        C = self.cluster_centers_
        K = C.shape[0]

        positions, d2 = nearest_centers(A, C, self._center_sq_norms())
        batch_weight = np.bincount(positions, weights=w, minlength=K)
        # Weighted sum of rows per centre as one BLAS product with a one-hot matrix: much faster
        # than np.add.at, and no Python loop over rows.
        onehot = np.zeros((A.shape[0], K), dtype=np.float64)
        onehot[np.arange(A.shape[0]), positions] = w
        sums = onehot.T @ A

        counts = self.counts_ * self.decay_factor(float(w.sum()))
        new_counts = counts + batch_weight
        hit = batch_weight > 0
        new_centers = C.copy()
        new_centers[hit] = (C[hit] * counts[hit, None] + sums[hit]) / new_counts[hit, None]

        previous_ids = self.ids_
        self._set_centers(new_centers)
        self.counts_ = new_counts
        self.inertia_ = float(np.dot(w, d2))
        self.labels_ = positions
        self.n_updates_ += 1
        self._set_ids(C, previous_ids)
        self.version_ += 1
        self._update_dying()
        return self

    def replace_centers(self, centers: npt.ArrayLike) -> StreamingSegmenter:
        """Swap in re-expressed centres (same K, same order), keeping ids and counts.

        Use after refitting the preprocessing, with centres mapped by
        :func:`model.preprocessing.remap_centers`. Bumps ``version_``.
        """
        self._check_fitted()
        C = as_feature_matrix(centers, self.n_features_in_, what="centers")
        if C.shape != self.cluster_centers_.shape:
            raise InvalidInputError(
                f"centers must have shape {self.cluster_centers_.shape}, got {C.shape}"
            )
        self._set_centers(C.copy())
        self.version_ += 1
        return self

    @classmethod
    def from_state(
        cls,
        centers: npt.ArrayLike,
        counts: npt.ArrayLike,
        ids: npt.ArrayLike,
        *,
        next_id: int,
        version: int,
        **params: Any,
    ) -> StreamingSegmenter:
        """Rebuild a fitted segmenter from stored state (e.g. a loaded model) to keep updating.

        ``params`` are constructor parameters; ``n_clusters`` is taken from ``centers``.
        """
        C = np.asarray(centers, dtype=np.float64)
        if C.ndim != 2:
            raise InvalidInputError(f"centers must be 2-D, got shape {C.shape}")
        seg = cls(n_clusters=C.shape[0], **params)
        C = as_feature_matrix(C, C.shape[1], what="centers").copy()
        cnt = np.asarray(counts, dtype=np.float64).copy()
        idv = np.asarray(ids, dtype=np.int64).copy()
        if cnt.shape != (C.shape[0],) or idv.shape != (C.shape[0],):
            raise InvalidInputError("counts and ids need one value per centre")
        if len(set(idv.tolist())) != len(idv) or (idv.size and next_id <= idv.max()):
            raise InvalidInputError("ids must be unique and smaller than next_id")
        seg._set_centers(C)
        seg.counts_ = cnt
        seg.ids_ = idv
        seg.next_id_ = int(next_id)
        seg.version_ = int(version)
        seg.inertia_ = float("nan")
        seg.n_features_in_ = C.shape[1]
        seg.n_updates_ = 0
        seg._update_dying()
        return seg

    # -- predicting ------------------------------------------------------------------------

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Position (0..K-1) of the nearest centre of each row."""
        self._check_fitted()
        A = as_feature_matrix(X, self.n_features_in_)
        return nearest_centers(A, self.cluster_centers_, self._center_sq_norms())[0]

    def assign(
        self,
        X: npt.ArrayLike,
        previous_ids: npt.ArrayLike | None = None,
        margin: float = 0.0,
    ) -> tuple[IntArray, FloatArray]:
        """Stable segment id and Euclidean distance (units of ``X``) of each row.

        With ``previous_ids`` and ``margin`` > 0, hysteresis as in
        :func:`assign_with_hysteresis`: a row keeps its previous segment unless the nearest
        centre is closer by the relative margin.
        """
        self._check_fitted()
        A = as_feature_matrix(X, self.n_features_in_)
        ids, _, dist = assign_with_hysteresis(
            A, self.cluster_centers_, self.ids_, previous_ids, margin, self._center_sq_norms()
        )
        return ids, dist

    def score(self, X: npt.ArrayLike, y: object = None) -> float:
        """Opposite of the inertia of ``X`` (scikit-learn convention: higher is better)."""
        self._check_fitted()
        A = as_feature_matrix(X, self.n_features_in_)
        return -float(nearest_centers(A, self.cluster_centers_, self._center_sq_norms())[1].sum())
