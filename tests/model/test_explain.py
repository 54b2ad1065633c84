"""`model.explain`: the margin between the nearest and the next segment, feature by feature."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model.explain import explain_assignment
from model.model_format import SegmentModel


def test_the_terms_add_up_to_the_margin_and_the_nearest_is_the_assignment(
    fitted: Any,
) -> None:
    model, _, _, X = fitted
    for row in X[:50]:
        e = explain_assignment(model, row)
        ids, _, distances = model.assign(row.reshape(1, -1))
        assert e.ranked_ids[0] == ids[0]
        assert e.distances[0] == pytest.approx(distances[0])
        assert (np.diff(e.distances) >= 0).all()
        assert sorted(e.ranked_ids) == sorted(model.ids)
        assert e.margins.sum() == pytest.approx(e.distances[1] ** 2 - e.distances[0] ** 2)
        assert e.margins.sum() >= 0
        assert np.array_equal(e.values, row)


def test_centres_are_shown_in_business_units(fitted: Any) -> None:
    model, _, _, X = fitted
    e = explain_assignment(model, X[0])
    units = model.to_preprocessor().inverse_transform(np.asarray(model.centers))
    assert np.allclose(e.assigned_centre, units[model.ids.index(e.ranked_ids[0])])
    assert e.runner_up_centre is not None
    assert np.allclose(e.runner_up_centre, units[model.ids.index(e.ranked_ids[1])])


def test_a_model_of_one_segment_has_no_runner_up(fitted: Any) -> None:
    model, _, _, X = fitted
    one = SegmentModel.model_validate(
        {
            **model.model_dump(),
            "centers": model.centers[:1],
            "counts": model.counts[:1],
            "ids": model.ids[:1],
            "names": model.names[:1],
            "tiers": [1],
            "profiles": model.profiles[:1],
        }
    )
    e = explain_assignment(one, X[0])
    assert e.runner_up_centre is None and not e.margins.any()
    assert e.ranked_ids == one.ids
