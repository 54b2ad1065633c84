"""Why a user is in their segment: the distances to every centre, feature by feature.

A user is assigned to the nearest centre in the model's scaled space (`model.preprocessing`):
``d2(c) = sum_j (z_j - c_j)^2`` with ``z`` the user's scaled features. Against the runner-up
centre ``r`` (the second nearest), the margin ``d2(r) - d2(a) >= 0`` of the assigned centre
``a`` splits into one term per feature::

    margin_j = (z_j - r_j)^2 - (z_j - a_j)^2

A positive term pulls the user towards ``a`` (the user is closer to ``a`` on that feature), a
negative one towards ``r``; the terms add up to the margin. The largest terms are the features
that decide the segment. Centres are also shown in business units (the inverse of the
preprocessing), next to the user's own values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.model_format import SegmentModel

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Explanation:
    """One user's assignment, taken apart (see the module docstring)."""

    feature_names: list[str]
    values: FloatArray  # the user's features, business units
    ranked_ids: list[int]  # segment ids, nearest first
    ranked_names: list[str]
    distances: FloatArray  # Euclidean, scaled space, nearest first
    assigned_centre: FloatArray  # business units
    runner_up_centre: FloatArray | None  # business units; None with a single segment
    margins: FloatArray  # margin_j per feature (zeros with a single segment)


def explain_assignment(model: SegmentModel, features: npt.ArrayLike) -> Explanation:
    """Explain the assignment of one raw feature row (business units, the model's columns)."""
    x = np.asarray(features, dtype=np.float64).reshape(1, -1)
    z = model.transform(x)[0]
    centres = np.asarray(model.centers, dtype=np.float64)
    d2 = ((centres - z) ** 2).sum(axis=1)
    order = np.argsort(d2, kind="stable")
    in_units = model.to_preprocessor().inverse_transform(centres)
    assigned = int(order[0])
    runner_up = int(order[1]) if len(order) > 1 else None
    margins = np.zeros(len(z))
    if runner_up is not None:
        margins = (z - centres[runner_up]) ** 2 - (z - centres[assigned]) ** 2
    return Explanation(
        feature_names=list(model.feature_names),
        values=x[0],
        ranked_ids=[model.ids[i] for i in order],
        ranked_names=[model.names[i] for i in order],
        distances=np.sqrt(d2[order]),
        assigned_centre=in_units[assigned],
        runner_up_centre=None if runner_up is None else in_units[runner_up],
        margins=margins,
    )
