"""The published segment model: one JSON document, validated on load, fast to apply.

A ``SegmentModel`` holds everything a consumer needs to turn raw feature rows into segment ids
(preprocessing parameters and centres in the scaled space, versioned together) and everything a
reader needs to understand a segment (names, value tiers, business profiles). It is JSON only,
never pickle: any language can read it and loading it cannot run code.

Example document (abridged)::

    {"format_version": 1, "model_version": 7, "created_at": "2024-05-01T12:00:00Z",
     "feature_names": ["recency_days", ...],
     "preprocessing": {"feature_names": [...], "log_columns": [...], "iqr_floor": 1e-06,
                       "center": [...], "scale": [...]},
     "centers": [[...], ...], "counts": [...], "ids": [0, 1, 4], "next_id": 5,
     "names": ["champions", ...], "tiers": [1, 3, 2], "profiles": [{...}, ...],
     "metrics": {"inertia": 1234.5, "n_rows": 50000, "n_updates": 12, "extra": {}},
     "segmenter_params": {"half_life_batches": 20.0, ...}}
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from model.exceptions import InvalidInputError, ModelFormatError
from model.labels import MAX_NAME_CHARS, SegmentLabels, SegmentProfile
from model.preprocessing import Preprocessor, as_feature_matrix, remap_centers, scale_rows
from model.segmenter import (
    StreamingSegmenter,
    assign_with_hysteresis,
    match_centers,
    squared_norms,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Version of the JSON layout written by this code; ``from_json`` refuses any other.
FORMAT_VERSION = 1

# Bounds on what a model document may hold. A model comes from Redis or a file someone hands
# over: each bound keeps a hostile or corrupt one from costing memory, time or NaN distances.
#: Largest document `from_json` reads (a K=64, d=10 model is about 30 KB).
MAX_MODEL_BYTES = 16 * 2**20
#: Most centres a model may have (the trainer's own limit, trainer.n_clusters, is 64).
MAX_CENTRES = 1024
#: Most features a model may read.
MAX_FEATURES = 256
#: Largest id, version or tier: JavaScript's Number.MAX_SAFE_INTEGER, so that every JSON
#: reader of a segment record or change event gets the number exactly.
MAX_SAFE_INTEGER = 2**53 - 1
#: Bound on |centre coordinate|, |preprocessing.center| and preprocessing.scale; the smallest
#: scale is its reciprocal. Squared distances of in-range values stay finite in float64.
MAX_ABS_VALUE = 1e100

SafeInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]

# Constructor parameters of StreamingSegmenter worth keeping with the model, so a trainer that
# reloads it keeps updating it the same way.
_SEGMENTER_PARAMS = (
    "half_life_batches",
    "half_life_points",
    "new_id_distance",
    "dying_share",
    "n_init",
    "min_fit_rows",
    "max_iter",
    "tol",
)


def _check_segmenter_params(params: dict[str, float | int | None]) -> None:
    """Refuse a stored parameter `StreamingSegmenter` would not take, here rather than when a
    trainer resumes from the model."""
    unknown = sorted(set(params) - set(_SEGMENTER_PARAMS))
    if unknown:
        raise ValueError(f"segmenter_params: unknown {unknown}; known {list(_SEGMENTER_PARAMS)}")
    for name, value in params.items():
        if value is None and name in ("half_life_batches", "half_life_points"):
            continue  # no forgetting
        if isinstance(value, bool) or value is None or not math.isfinite(value):
            raise ValueError(f"segmenter_params.{name} must be a finite number, got {value}")
        if name in ("n_init", "min_fit_rows", "max_iter"):
            if value != int(value) or not 1 <= value <= 1_000_000:
                raise ValueError(f"segmenter_params.{name} must be a whole number in 1..10^6")
        elif name == "dying_share":
            if not 0 <= value < 1:
                raise ValueError(f"segmenter_params.dying_share must be in [0, 1), got {value}")
        elif name.startswith("half_life"):
            if value <= 0:
                raise ValueError(f"segmenter_params.{name} must be > 0 or null, got {value}")
        elif value < 0:
            raise ValueError(f"segmenter_params.{name} must be >= 0, got {value}")


class PreprocessingParams(BaseModel):
    """Fitted :class:`~model.preprocessing.Preprocessor` parameters (its ``to_dict``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    feature_names: list[Name] = Field(max_length=MAX_FEATURES)
    log_columns: list[Name] = Field(max_length=MAX_FEATURES)
    iqr_floor: float = Field(gt=0)
    center: list[float]
    scale: list[float]


class TrainingMetrics(BaseModel):
    """How the centres were obtained."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    inertia: float | None = None
    """Inertia of the last fit or batch (scaled units squared); ``None`` when unknown."""
    n_rows: int = Field(default=0, ge=0)
    """Rows of the last fit or batch."""
    n_updates: int = Field(default=0, ge=0)
    """``partial_fit`` steps since the last bootstrap or refit."""
    extra: dict[Name, float] = Field(default_factory=dict, max_length=64)
    """Any further numbers (e.g. inertia ratio, ARI against the previous version)."""


class SegmentModel(BaseModel):
    """A versioned segment model: preprocessing + centres + stable ids + labels.

    Every per-segment list is indexed by centre position. Construct it with
    :meth:`from_fitted` or :meth:`from_json`; apply it with :meth:`assign`.

    Raises
    ------
    pydantic.ValidationError
        On direct construction with inconsistent fields (:meth:`from_json` turns this into
        :class:`~model.exceptions.ModelFormatError`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    format_version: int = FORMAT_VERSION
    model_version: SafeInt
    created_at: AwareDatetime
    """Creation time, serialised as ISO-8601 UTC (``...Z``)."""
    feature_names: list[Name] = Field(max_length=MAX_FEATURES)
    preprocessing: PreprocessingParams
    centers: list[list[float]] = Field(max_length=MAX_CENTRES)
    """K x d centres in the scaled space of ``preprocessing``."""
    counts: list[float]
    """Decayed weight of each centre (rows)."""
    ids: list[SafeInt]
    """Stable segment ids, unique, >= 0."""
    next_id: SafeInt
    """Id the next new segment gets; greater than every id ever used."""
    names: list[Name]
    tiers: list[SafeInt]
    profiles: list[SegmentProfile]
    metrics: TrainingMetrics = Field(default_factory=TrainingMetrics)
    segmenter_params: dict[str, float | int | None] = Field(default_factory=dict)

    # Arrays of the hot path, built once after validation.
    _centers: FloatArray = PrivateAttr()
    _center_sq_norms: FloatArray = PrivateAttr()
    _ids: IntArray = PrivateAttr()
    _tiers: IntArray = PrivateAttr()
    _names: npt.NDArray[np.object_] = PrivateAttr()
    _log_index: npt.NDArray[np.intp] = PrivateAttr()
    _center: FloatArray = PrivateAttr()
    _inv_scale: FloatArray = PrivateAttr()

    @field_validator("created_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _check_consistency(self) -> SegmentModel:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported format_version {self.format_version}; this code reads "
                f"{FORMAT_VERSION}"
            )
        d = len(self.feature_names)
        if d == 0 or len(set(self.feature_names)) != d:
            raise ValueError("feature_names must be non-empty and unique")
        pp = self.preprocessing
        if pp.feature_names != self.feature_names:
            raise ValueError(
                f"preprocessing.feature_names {pp.feature_names} differ from feature_names "
                f"{self.feature_names}"
            )
        if not set(pp.log_columns) <= set(self.feature_names):
            raise ValueError(f"preprocessing.log_columns {pp.log_columns} not in feature_names")
        if len(pp.center) != d or len(pp.scale) != d:
            raise ValueError(f"preprocessing center and scale need {d} values each")
        center = np.asarray(pp.center, dtype=np.float64)
        scale = np.asarray(pp.scale, dtype=np.float64)
        if (
            not (np.abs(center) <= MAX_ABS_VALUE).all()
            or not ((scale >= 1 / MAX_ABS_VALUE) & (scale <= MAX_ABS_VALUE)).all()
        ):
            raise ValueError(
                f"preprocessing center must be within +-{MAX_ABS_VALUE:g} and scale within "
                f"[{1 / MAX_ABS_VALUE:g}, {MAX_ABS_VALUE:g}]"
            )

        K = len(self.centers)
        if K == 0:
            raise ValueError("a model needs at least one centre")
        if any(len(row) != d for row in self.centers):
            raise ValueError(f"centers must be {K} x {d} (one column per feature)")
        C = np.asarray(self.centers, dtype=np.float64)
        if not np.isfinite(C).all():
            raise ValueError("centers hold NaN or infinite values")
        if (np.abs(C) > MAX_ABS_VALUE).any():
            raise ValueError(f"centers hold values beyond +-{MAX_ABS_VALUE:g}")
        for name in ("counts", "ids", "names", "tiers", "profiles"):
            if len(getattr(self, name)) != K:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {K}")
        counts = np.asarray(self.counts, dtype=np.float64)
        if not np.isfinite(counts).all() or (counts < 0).any():
            raise ValueError("counts must be finite and >= 0")
        if len(set(self.ids)) != K:
            raise ValueError(f"ids must be unique, got {self.ids}")
        if min(self.ids) < 0 or self.next_id <= max(self.ids):
            raise ValueError(f"ids must be >= 0 and < next_id ({self.next_id}), got {self.ids}")
        if len(set(self.names)) != K:
            raise ValueError(f"names must be unique, got {self.names}")
        if min(self.tiers) < 1 or max(self.tiers) > K:
            raise ValueError(f"tiers run from 1 to at most K={K}, got {self.tiers}")
        _check_segmenter_params(self.segmenter_params)
        if self.metrics.inertia is not None and not math.isfinite(self.metrics.inertia):
            raise ValueError("metrics.inertia must be finite or null")

        self._centers = np.ascontiguousarray(C)
        self._center_sq_norms = squared_norms(self._centers)
        self._ids = np.asarray(self.ids, dtype=np.int64)
        self._tiers = np.asarray(self.tiers, dtype=np.int64)
        self._names = np.asarray(self.names, dtype=object)
        self._log_index = np.flatnonzero([n in set(pp.log_columns) for n in self.feature_names])
        self._center = center
        self._inv_scale = 1.0 / scale
        return self

    def __eq__(self, other: object) -> bool:
        # Equal fields make equal models; the cached arrays derive from them (and numpy arrays
        # would break pydantic's default comparison of private attributes).
        if not isinstance(other, SegmentModel):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # list fields: not hashable anyway

    # -- building and (de)serialising -------------------------------------------------------

    @classmethod
    def from_fitted(
        cls,
        segmenter: StreamingSegmenter,
        preprocessor: Preprocessor,
        labels: SegmentLabels,
        *,
        created_at: datetime | None = None,
        n_rows: int | None = None,
        extra_metrics: dict[str, float] | None = None,
    ) -> SegmentModel:
        """Package a fitted segmenter, its preprocessor and its labels as a model.

        ``model_version`` is the segmenter's ``version_``; ``created_at`` defaults to now (UTC);
        ``n_rows`` defaults to the rows of the segmenter's last fit or batch.

        Raises
        ------
        ModelFormatError
            When the parts do not fit together (shapes, NaNs, ...).
        """
        pp = preprocessor.to_dict()
        inertia = float(segmenter.inertia_)
        params: dict[str, float | int | None] = {}
        for name in _SEGMENTER_PARAMS:
            value = getattr(segmenter, name)
            # JSON has no infinity; an infinite half-life and None both mean "no forgetting".
            params[name] = None if value is None or value == math.inf else value
        try:
            return cls(
                model_version=int(segmenter.version_),
                created_at=created_at or datetime.now(UTC),
                feature_names=list(pp["feature_names"]),
                preprocessing=PreprocessingParams(**pp),
                centers=segmenter.cluster_centers_.tolist(),
                counts=segmenter.counts_.tolist(),
                ids=segmenter.ids_.tolist(),
                next_id=int(segmenter.next_id_),
                names=list(labels.names),
                tiers=[int(t) for t in labels.tiers],
                profiles=list(labels.profiles),
                metrics=TrainingMetrics(
                    inertia=inertia if math.isfinite(inertia) else None,
                    n_rows=len(getattr(segmenter, "labels_", ())) if n_rows is None else n_rows,
                    n_updates=int(segmenter.n_updates_),
                    extra=dict(extra_metrics or {}),
                ),
                segmenter_params=params,
            )
        except ValidationError as exc:
            raise ModelFormatError(_describe(exc)) from exc

    def to_json(self) -> bytes:
        """Serialise to UTF-8 JSON bytes (floats round-trip exactly)."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> SegmentModel:
        """Load and validate a model.

        Raises
        ------
        ModelFormatError
            Invalid JSON, missing or unknown fields, unsupported format version, centres not
            K x d for the d feature names, duplicate ids, negative counts, NaN or infinity,
            anything beyond the bounds above (size, K, name length, ids, magnitudes), or a
            segmenter parameter `StreamingSegmenter` would refuse.
        """
        if len(data) > MAX_MODEL_BYTES:
            raise ModelFormatError(
                f"invalid segment model: {len(data):,} bytes, more than the "
                f"{MAX_MODEL_BYTES:,} a model may have"
            )
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ModelFormatError(_describe(exc)) from exc

    def to_preprocessor(self) -> Preprocessor:
        """The fitted :class:`~model.preprocessing.Preprocessor` of this model."""
        return Preprocessor.from_dict(self.preprocessing.model_dump())

    def to_segmenter(self, **params: Any) -> StreamingSegmenter:
        """A fitted :class:`~model.segmenter.StreamingSegmenter` that continues from this model.

        Stored ``segmenter_params`` are used unless overridden by ``params``.
        """
        merged: dict[str, Any] = {**self.segmenter_params, **params}
        return StreamingSegmenter.from_state(
            self._centers,
            self.counts,
            self._ids,
            next_id=self.next_id,
            version=self.model_version,
            **merged,
        )

    def with_ids_of(
        self, previous: SegmentModel, max_distance: float, next_id: int | None = None
    ) -> SegmentModel:
        """This model with segment ids that keep their meaning in ``previous``'s namespace.

        For a model made elsewhere (`streamseg model import`): its own ids mean other segments
        here. Its centres are taken to business units with its own preprocessing and into
        ``previous``'s scaled space, then matched to ``previous``'s centres
        (`model.segmenter.match_centers`, Hungarian on Euclidean distance): a centre within
        ``max_distance`` takes the id of its match, every other centre a new id from
        ``next_id`` on (default ``previous.next_id``; after a rollback, pass the largest
        ``next_id`` of the namespace's history), so no id is reused. Models over other
        features share no space: every centre gets a new id.
        """
        matched = np.full(len(self.ids), -1, dtype=np.int64)
        if self.feature_names == previous.feature_names and len(self.centers):
            try:
                with np.errstate(over="ignore"):
                    here = remap_centers(
                        self._centers, self.to_preprocessor(), previous.to_preprocessor()
                    )
            except InvalidInputError:  # a centre beyond float range in business units
                here = None
            if here is not None:
                matched = match_centers(previous._centers, here, max_distance)
        ids: list[int] = []
        next_id = max(previous.next_id, next_id or 0)
        for position in matched.tolist():
            if position >= 0:
                ids.append(previous.ids[position])
            else:
                ids.append(next_id)
                next_id += 1
        return self.model_copy(update={"ids": ids, "next_id": next_id}).revalidated()

    def revalidated(self) -> SegmentModel:
        """The same fields, validated again and with the hot path's arrays rebuilt (what
        `model_copy` skips)."""
        return type(self).model_validate(self.model_dump())

    # -- the hot path -----------------------------------------------------------------------

    @property
    def ids_array(self) -> IntArray:
        """Segment ids by position (int64, read-only view of the cache)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def tiers_array(self) -> IntArray:
        """Value tiers by position (int64, read-only view of the cache)."""
        view = self._tiers.view()
        view.flags.writeable = False
        return view

    @property
    def names_array(self) -> npt.NDArray[np.object_]:
        """Segment names by position (object array of str, read-only view of the cache).

        ``model.names_array[positions]`` names a whole batch without a Python loop.
        """
        view = self._names.view()
        view.flags.writeable = False
        return view

    def transform(self, X_raw: npt.ArrayLike) -> FloatArray:
        """Apply the stored preprocessing to raw rows (business units) -> scaled space."""
        A = as_feature_matrix(X_raw, len(self.feature_names), what="X_raw")
        return scale_rows(A, self._log_index, self._center, self._inv_scale)

    def assign(
        self,
        X_raw: npt.ArrayLike,
        previous_ids: npt.ArrayLike | None = None,
        margin: float = 0.0,
    ) -> tuple[IntArray, npt.NDArray[np.intp], FloatArray]:
        """Segment of each raw feature row: preprocessing, then nearest centre.

        Parameters
        ----------
        X_raw : array-like of shape (n_rows, n_features)
            Feature rows in business units, columns in ``feature_names`` order.
        previous_ids : array-like of int, shape (n_rows,), optional
            Current segment of each row (-1 for none); with ``margin`` > 0 a row keeps it unless
            the nearest centre is closer by that relative margin (hysteresis).
        margin : float, default 0.0

        Returns
        -------
        ids : ndarray of int64
            Stable segment ids.
        positions : ndarray of intp
            Centre positions (index into ``names``, ``tiers``, ``profiles``).
        distances : ndarray of float64
            Euclidean distance to the chosen centre in the scaled space (1 = one
            ``max(IQR, 1.349 * std)`` of the transformed column, `model.preprocessing`).

        Raises
        ------
        InvalidInputError
            Wrong shape, NaN or infinity in ``X_raw``.
        """
        Z = self.transform(X_raw)
        return assign_with_hysteresis(
            Z, self._centers, self._ids, previous_ids, margin, self._center_sq_norms
        )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "model"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return f"invalid segment model: {'; '.join(parts)}{more}"
