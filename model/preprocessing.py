"""Preprocessing of feature vectors before clustering: signed log1p, then median/spread scaling.

The preprocessing is fitted together with the centres and stored with them in the model
(:mod:`model.model_format`): centres live in the scaled space, so a centre means nothing without
the exact scaling that produced it.

Formula, column by column (``j``), for a raw value ``x`` in business units::

    t_j(x) = sign(x) * log1p(|x|)    if feature j is in ``log_columns``  (heavy tails)
    t_j(x) = x                       otherwise
    z_j    = (t_j(x) - center_j) / scale_j     (computed as a product with 1 / scale_j)

with ``center_j`` the median of ``t_j`` over the fitting rows and ``scale_j`` the larger of their
inter-quartile range (75th minus 25th percentile, linear interpolation) and ``1.349`` times their
population standard deviation (the IQR a normal column of that spread would have)::

    s_j     = max(IQR_j, 1.349 * std_j)
    scale_j = s_j     if s_j > iqr_floor
            = 1.0     else (constant column: it only gets centred)

Why the larger of the two: the IQR alone under-states the spread of a column whose middle half is
packed together while a sizeable minority sits far away -- a sentinel (the recency cap of users
who never purchased), a zero-inflated count, a bimodal column. Divided by a small IQR that
minority lands 5-10+ units from the centre and one column decides the clustering on its own (in a
90-day snapshot ``recency_days`` had scaled variance 10.5 against 0.2-1.5 for the others). With
the larger of the two, every column's scaled standard deviation is at most ``1 / 1.349 ~ 0.74``,
so no single column can dominate the distance by its spread; for a normal column both figures
agree. Extreme outliers that would inflate the standard deviation are what the log columns are
for (counts and money get the log before scaling).

The inverse is ``t_j = z_j * scale_j + center_j`` then ``x = sign(t) * expm1(|t|)`` on the log
columns. Signed log1p keeps the sign of a negative net revenue (refunds larger than purchases) and
is defined at 0, unlike ``log``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from model.exceptions import InvalidInputError, ModelFormatError, NotFittedError

FloatArray = npt.NDArray[np.float64]

# IQR of a standard normal distribution: 1.349 * std is the IQR a Gaussian column would have,
# so the std-based spread is on the same footing as an IQR.
_IQR_PER_STD = 1.349


def signed_log1p(x: npt.ArrayLike) -> FloatArray:
    """Return ``sign(x) * log1p(|x|)``, elementwise; defined for every real, odd, monotone."""
    a = np.asarray(x, dtype=np.float64)
    return np.copysign(np.log1p(np.abs(a)), a)


def signed_expm1(y: npt.ArrayLike) -> FloatArray:
    """Return ``sign(y) * expm1(|y|)``, the exact inverse of :func:`signed_log1p`."""
    a = np.asarray(y, dtype=np.float64)
    return np.copysign(np.expm1(np.abs(a)), a)


def as_feature_matrix(X: npt.ArrayLike, n_features: int, *, what: str = "X") -> FloatArray:
    """Return ``X`` as a C-contiguous float64 matrix of ``n_features`` columns, all finite.

    Raises
    ------
    InvalidInputError
        When ``X`` is not 2-D, has the wrong number of columns, or holds NaN or infinity.
    """
    A = np.ascontiguousarray(X, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != n_features:
        raise InvalidInputError(f"{what} must have shape (n_rows, {n_features}), got {A.shape}")
    if not np.isfinite(A).all():
        bad = int((~np.isfinite(A)).any(axis=1).sum())
        raise InvalidInputError(f"{what} has {bad} row(s) with NaN or infinite values")
    return A


def scale_rows(
    A: FloatArray, log_index: npt.NDArray[np.intp], center: FloatArray, inv_scale: FloatArray
) -> FloatArray:
    """The transform kernel: ``(t(A) - center) * inv_scale`` as a new array, ``A`` untouched.

    ``t`` is the signed log1p on the columns ``log_index``. Shared by :class:`Preprocessor`
    and the consumer's hot path (:meth:`model.model_format.SegmentModel.assign`) so that both
    give bit-identical results. In place where possible: allocations cost as much as the maths
    on 5k x 10 batches.
    """
    Z = A.copy()
    if log_index.size:
        raw = A[:, log_index]
        logs = np.abs(raw)
        np.log1p(logs, out=logs)
        np.copysign(logs, raw, out=logs)
        Z[:, log_index] = logs
    Z -= center
    Z *= inv_scale
    return Z


class Preprocessor:
    """Signed log1p on heavy-tailed columns, then median centring and IQR-or-std scaling.

    The exact formula is in the module docstring. Follows the scikit-learn estimator contract:
    ``__init__`` only stores parameters, fitted state ends in an underscore.

    Parameters
    ----------
    feature_names : sequence of str
        Names of the columns of ``X``, in order.
    log_columns : sequence of str, default ()
        Names (a subset of ``feature_names``) that get the signed log1p before scaling: counts,
        amounts and other heavy-tailed features.
    iqr_floor : float, default 1e-6
        A spread ``max(IQR, 1.349 * std)`` at or below this (in transformed units) means a
        constant column: its scale is 1 (see module docstring).

    Attributes
    ----------
    center_ : ndarray of shape (n_features,)
        Median of each transformed column (transformed units).
    scale_ : ndarray of shape (n_features,)
        Divisor of each transformed column: ``max(IQR, 1.349 * std)`` (transformed units),
        always > 0.
    n_features_in_ : int
        Number of columns seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> p = Preprocessor(["spend", "days"], log_columns=["spend"]).fit(
    ...     np.array([[0.0, 1.0], [9.0, 2.0], [99.0, 3.0]]))
    >>> p.transform(np.array([[9.0, 2.0]])).round(6).tolist()
    [[0.0, 0.0]]
    >>> p.inverse_transform(p.transform(np.array([[-5.0, 7.0]]))).round(9).tolist()
    [[-5.0, 7.0]]
    """

    # Fitted state, declared for type checkers.
    log_mask_: npt.NDArray[np.bool_]
    center_: FloatArray
    scale_: FloatArray
    n_features_in_: int

    def __init__(
        self,
        feature_names: Sequence[str],
        log_columns: Sequence[str] = (),
        iqr_floor: float = 1e-6,
    ) -> None:
        self.feature_names = feature_names
        self.log_columns = log_columns
        self.iqr_floor = iqr_floor

    # -- fitting -----------------------------------------------------------------------------

    def _log_mask(self) -> npt.NDArray[np.bool_]:
        names = list(self.feature_names)
        if len(set(names)) != len(names):
            raise ValueError(f"feature_names has duplicates: {names}")
        unknown = sorted(set(self.log_columns) - set(names))
        if unknown:
            raise ValueError(f"log_columns {unknown} are not in feature_names {names}")
        return np.array([name in set(self.log_columns) for name in names], dtype=bool)

    def fit(self, X: npt.ArrayLike, y: object = None) -> Preprocessor:
        """Fit centre and scale on ``X`` (n_rows, n_features), raw business units; return self."""
        mask = self._log_mask()
        A = as_feature_matrix(X, len(mask))
        if A.shape[0] == 0:
            raise InvalidInputError("cannot fit the preprocessing on 0 rows")
        T = A.copy()
        T[:, mask] = signed_log1p(A[:, mask])
        q25, median, q75 = np.percentile(T, [25.0, 50.0, 75.0], axis=0)
        # A column whose IQR is small next to its overall spread (a zero-inflated count, a
        # sentinel such as the recency cap, IQR 0 in the extreme) would let its far minority
        # dominate every distance: take the std-based spread when it is larger (module
        # docstring), and 1 for a constant column.
        spread = np.maximum(q75 - q25, _IQR_PER_STD * T.std(axis=0))
        scale = np.where(spread > self.iqr_floor, spread, 1.0)
        self.log_mask_ = mask
        self.center_ = np.ascontiguousarray(median, dtype=np.float64)
        self.scale_ = np.ascontiguousarray(scale, dtype=np.float64)
        self.n_features_in_ = len(mask)
        return self

    def fit_transform(self, X: npt.ArrayLike, y: object = None) -> FloatArray:
        """Fit on ``X`` then return it transformed."""
        return self.fit(X).transform(X)

    def stale_for(self, X: npt.ArrayLike, tolerance: float) -> bool:
        """Would a preprocessing fitted on ``X`` differ: a centre moved by more than
        ``tolerance`` current scale units, or a scale changed by more than the factor
        ``1 + tolerance`` (either way)?

        Compares like with like: the scale of ``X`` is computed as :meth:`fit` computes it.
        Judging the scaled rows' IQR instead declared every batch stale by chance on a column
        whose scale comes from its standard deviation (a sentinel, a zero-inflated count),
        whose scaled IQR sits below 1 by construction.
        """
        self._check_fitted()
        fresh = Preprocessor(self.feature_names, self.log_columns, iqr_floor=self.iqr_floor).fit(X)
        moved = np.abs(fresh.center_ - self.center_) > tolerance * self.scale_
        ratio = fresh.scale_ / self.scale_
        stretched = (ratio > 1 + tolerance) | (ratio < 1 / (1 + tolerance))
        return bool((moved | stretched).any())

    def _check_fitted(self) -> None:
        if not hasattr(self, "center_"):
            raise NotFittedError("Preprocessor is not fitted: call fit(X) or from_dict(...)")

    # -- transforming ------------------------------------------------------------------------

    def transform(self, X: npt.ArrayLike) -> FloatArray:
        """Map raw rows (business units) to the scaled space; returns a new float64 array.

        Raises
        ------
        InvalidInputError
            Wrong shape or non-finite values.
        NotFittedError
            Before ``fit``.
        """
        self._check_fitted()
        A = as_feature_matrix(X, self.n_features_in_)
        return scale_rows(A, np.flatnonzero(self.log_mask_), self.center_, 1.0 / self.scale_)

    def inverse_transform(self, Z: npt.ArrayLike) -> FloatArray:
        """Map scaled rows (e.g. centres) back to business units; returns a new array."""
        self._check_fitted()
        B = as_feature_matrix(Z, self.n_features_in_, what="Z")
        T = B * self.scale_ + self.center_
        T[:, self.log_mask_] = signed_expm1(T[:, self.log_mask_])
        return T

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the fitted parameters as a JSON-safe dict (lists of floats, no numpy)."""
        self._check_fitted()
        return {
            "feature_names": list(self.feature_names),
            "log_columns": [n for n in self.feature_names if n in set(self.log_columns)],
            "iqr_floor": float(self.iqr_floor),
            "center": [float(v) for v in self.center_],
            "scale": [float(v) for v in self.scale_],
        }

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> Preprocessor:
        """Rebuild a fitted preprocessor from :meth:`to_dict` output.

        Raises
        ------
        ModelFormatError
            Missing keys, lengths that differ from ``feature_names``, non-finite values or a
            scale that is not strictly positive.
        """
        try:
            names = [str(n) for n in params["feature_names"]]
            p = cls(names, [str(n) for n in params["log_columns"]], float(params["iqr_floor"]))
            center = np.asarray(params["center"], dtype=np.float64)
            scale = np.asarray(params["scale"], dtype=np.float64)
            mask = p._log_mask()
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"invalid preprocessing parameters: {exc!r}") from exc
        d = len(names)
        if center.shape != (d,) or scale.shape != (d,):
            raise ModelFormatError(
                f"preprocessing center/scale must have {d} values (one per feature), "
                f"got {center.shape} and {scale.shape}"
            )
        if not (np.isfinite(center).all() and np.isfinite(scale).all()):
            raise ModelFormatError("preprocessing center/scale hold NaN or infinite values")
        if (scale <= 0).any():
            raise ModelFormatError("preprocessing scale values must be > 0")
        p.log_mask_ = mask
        p.center_ = np.ascontiguousarray(center)
        p.scale_ = np.ascontiguousarray(scale)
        p.n_features_in_ = d
        return p


def remap_centers(centers: npt.ArrayLike, old: Preprocessor, new: Preprocessor) -> FloatArray:
    """Re-express centres from the scaled space of ``old`` in the scaled space of ``new``.

    When the scaling is refitted the space moves; a centre keeps its meaning (the same typical
    user in business units) only if it is mapped through
    ``new.transform(old.inverse_transform(c))``.
    The map is not linear when log columns are involved, hence this function rather than an
    affine shortcut.

    Parameters
    ----------
    centers : array-like of shape (n_clusters, n_features)
        Centres in the scaled space of ``old``.
    old, new : Preprocessor
        Fitted preprocessors over the same ``feature_names``.
    """
    if list(old.feature_names) != list(new.feature_names):
        raise ValueError(
            f"feature names differ: {list(old.feature_names)} vs {list(new.feature_names)}"
        )
    return new.transform(old.inverse_transform(centers))
