"""Preprocessing: the documented formula, degenerate columns, inverse, serialisation, remap."""

import doctest
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model.exceptions import InvalidInputError, ModelFormatError, NotFittedError
from model.preprocessing import Preprocessor, remap_centers, signed_expm1, signed_log1p

NAMES = ["spend", "days", "ratio"]


def test_formula_matches_the_docstring() -> None:
    X = np.array([[-3.0, 10.0, 0.1], [0.0, 20.0, 0.2], [5.0, 30.0, 0.3], [100.0, 40.0, 0.4]])
    p = Preprocessor(NAMES, log_columns=["spend"]).fit(X)
    t = X.copy()
    t[:, 0] = np.sign(X[:, 0]) * np.log1p(np.abs(X[:, 0]))
    q25, med, q75 = np.percentile(t, [25, 50, 75], axis=0)
    spread = np.maximum(q75 - q25, 1.349 * t.std(axis=0))
    np.testing.assert_allclose(p.center_, med)
    np.testing.assert_allclose(p.scale_, spread)
    np.testing.assert_allclose(p.transform(X), (t - med) / spread, rtol=1e-12)


def test_a_column_with_a_far_minority_does_not_dominate_the_distance() -> None:
    # Recency of the last purchase: most users bought within ~2 weeks (tight IQR), a third
    # never did and sit at the 365-day cap. Scaled by the IQR alone that third would land
    # ~30 units away and the recency column alone would decide every clustering.
    rng = np.random.default_rng(3)
    n = 3000
    never = rng.random(n) < 0.3
    recency = np.where(never, 365.0, rng.exponential(5.0, n))
    spend = rng.lognormal(4.0, 1.0, n)
    days = rng.uniform(0.0, 90.0, n)
    X = np.column_stack([spend, recency, days])
    Z = Preprocessor(["spend", "recency", "days"], log_columns=["spend"]).fit_transform(X)
    assert np.all(Z.std(axis=0) <= 1 / 1.349 + 1e-9)
    # The well-behaved columns keep their IQR scaling.
    q25, q75 = np.percentile(days, [25, 75])
    assert Z[:, 2].std() == pytest.approx(days.std() / (q75 - q25))


def test_stale_for_judges_fresh_rows_the_way_fit_scales_them() -> None:
    rng = np.random.default_rng(4)

    def users(n: int, recency_scale: float = 5.0, spend_mean: float = 4.0) -> np.ndarray:
        never = rng.random(n) < 0.2  # the recency cap: scaled by the std, not the IQR
        recency = np.where(never, 365.0, rng.exponential(recency_scale, n))
        return np.column_stack([rng.lognormal(spend_mean, 1.0, n), recency])

    pre = Preprocessor(["spend", "recency"], log_columns=["spend"]).fit(users(3000))
    same = users(1000)
    # The scaled recency's IQR is far below 1, so the old check said "stretched" every time.
    q25, q75 = np.percentile(pre.transform(same)[:, 1], [25, 75])
    assert q75 - q25 < 1 / 1.5
    assert not pre.stale_for(same, tolerance=0.5)
    assert pre.stale_for(
        users(1000, spend_mean=5.0), tolerance=0.5
    )  # median moved 1 / 1.349 scale units
    wider = users(1000)
    wider[:, 1] *= 2.0  # the cap at 730 days: the std-based scale doubles
    assert pre.stale_for(wider, tolerance=0.5)
    assert not pre.stale_for(wider, tolerance=1.5)


def test_degenerate_columns_neither_divide_by_zero_nor_dominate() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    constant = np.full(n, 7.0)
    mostly_zero = np.where(rng.random(n) < 0.9, 0.0, rng.exponential(50.0, n))  # IQR = 0
    normal = rng.normal(0.0, 1.0, n)
    X = np.column_stack([constant, mostly_zero, normal])
    p = Preprocessor(["constant", "refunds", "normal"], log_columns=["refunds"]).fit(X)
    Z = p.transform(X)
    assert np.isfinite(Z).all()
    assert p.scale_[0] == 1.0 and np.all(Z[:, 0] == 0.0)
    # The std fallback keeps the rare non-zero refunds on the scale of the other columns.
    logs = np.log1p(mostly_zero)
    assert p.scale_[1] == pytest.approx(1.349 * logs.std())
    assert np.abs(Z[:, 1]).max() < 10.0


def test_signed_log_keeps_sign_and_order_of_negative_amounts() -> None:
    x = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0])
    y = signed_log1p(x)
    assert np.all(np.diff(y) > 0)
    np.testing.assert_allclose(y, -y[::-1])
    np.testing.assert_allclose(signed_expm1(y), x)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(4, 30), st.just(3)),
        elements=st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False),
    )
)
def test_inverse_transform_undoes_transform(X: np.ndarray) -> None:
    p = Preprocessor(NAMES, log_columns=["spend", "ratio"]).fit(X)
    back = p.inverse_transform(p.transform(X))
    # Floating point allows an error relative to the value, or to the column's magnitude for
    # a value near 0 in a column of large values (it went through (x - center) / scale).
    tolerance = 1e-9 * np.abs(X) + 1e-12 * np.abs(X).max(axis=0) + 1e-12
    assert np.all(np.abs(back - X) <= tolerance)


def test_round_trip_through_json_gives_the_same_transform() -> None:
    rng = np.random.default_rng(1)
    X = rng.lognormal(2.0, 1.5, (500, 3))
    p = Preprocessor(NAMES, log_columns=["spend"]).fit(X)
    q = Preprocessor.from_dict(json.loads(json.dumps(p.to_dict())))
    np.testing.assert_array_equal(q.transform(X), p.transform(X))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"center": [0.0, 1.0]}, "3 values"),
        ({"scale": [1.0, 0.0, 1.0]}, "> 0"),
        ({"center": [0.0, float("nan"), 1.0]}, "NaN"),
        ({"log_columns": ["nope"]}, "not in feature_names"),
    ],
)
def test_from_dict_rejects_bad_parameters(change: dict[str, object], message: str) -> None:
    p = Preprocessor(NAMES).fit(np.random.default_rng(0).normal(size=(50, 3)))
    with pytest.raises(ModelFormatError, match=message):
        Preprocessor.from_dict({**p.to_dict(), **change})
    bad = p.to_dict()
    del bad["scale"]
    with pytest.raises(ModelFormatError):
        Preprocessor.from_dict(bad)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(NotFittedError):
        Preprocessor(NAMES).transform(np.zeros((1, 3)))
    p = Preprocessor(NAMES).fit(np.random.default_rng(0).normal(size=(50, 3)))
    with pytest.raises(InvalidInputError, match="shape"):
        p.transform(np.zeros((2, 4)))
    with pytest.raises(InvalidInputError, match="1 row"):
        p.transform(np.array([[0.0, np.nan, 1.0], [0.0, 0.0, 0.0]]))


def test_remapped_centres_keep_their_business_meaning() -> None:
    rng = np.random.default_rng(2)
    old_data = np.column_stack(
        [rng.lognormal(3, 1, 2000), rng.uniform(0, 365, 2000), rng.random(2000)]
    )
    # Behaviour shifts: spend doubles and recency shrinks, so the refitted scaling moves.
    new_data = old_data * [2.0, 0.5, 1.0]
    old = Preprocessor(NAMES, log_columns=["spend"]).fit(old_data)
    new = Preprocessor(NAMES, log_columns=["spend"]).fit(new_data)
    centres_old = old.transform(old_data[:5])
    centres_new = remap_centers(centres_old, old, new)
    assert not np.allclose(centres_new, centres_old)
    np.testing.assert_allclose(new.inverse_transform(centres_new), old_data[:5], rtol=1e-9)


def test_docstring_examples_run() -> None:
    import model.preprocessing

    result = doctest.testmod(model.preprocessing)
    assert result.attempted > 0 and result.failed == 0
