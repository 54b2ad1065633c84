"""SegmentModel: JSON round trip, strict validation, and the consumer's assignment path."""

import json
from collections.abc import Callable
from datetime import UTC
from typing import Any

import numpy as np
import orjson
import pytest

from model.exceptions import InvalidInputError, ModelFormatError
from model.labels import label_segments
from model.model_format import FORMAT_VERSION, MAX_MODEL_BYTES, SegmentModel
from model.preprocessing import Preprocessor
from model.segmenter import StreamingSegmenter
from tests.model.model_support import FEATURES, HEAVY, raw_users


def test_json_round_trip_is_exact(fitted: Any) -> None:
    model, _, _, X = fitted
    data = model.to_json()
    doc = orjson.loads(data)  # plain JSON any language can read
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["created_at"] == "2024-05-01T12:00:00Z"  # normalised to UTC
    assert len(doc["centers"]) == 5 and len(doc["centers"][0]) == len(FEATURES)
    back = SegmentModel.from_json(data)
    assert back == model
    assert back.to_json() == data
    for got, want in zip(back.assign(X), model.assign(X), strict=True):
        np.testing.assert_array_equal(got, want)


def test_assign_equals_preprocessing_then_segmenter(fitted: Any) -> None:
    model, seg, pre, X = fitted
    ids, positions, distances = model.assign(X)
    want_ids, want_dist = seg.assign(pre.transform(X))
    assert ids.dtype == np.int64 and distances.dtype == np.float64
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(model.ids_array[positions], ids)
    assert model.names_array[positions].tolist() == [model.names[p] for p in positions]
    assert model.tiers_array[positions].tolist() == [model.tiers[p] for p in positions]
    np.testing.assert_allclose(distances, want_dist, rtol=1e-12)


def test_assign_with_hysteresis_and_bad_rows(fitted: Any) -> None:
    model, _, _, X = fitted
    ids, _, _ = model.assign(X[:100])
    kept, _, _ = model.assign(X[:100], previous_ids=ids, margin=0.3)
    np.testing.assert_array_equal(kept, ids)
    bad = X[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match="1 row"):
        model.assign(bad)
    with pytest.raises(InvalidInputError, match="shape"):
        model.assign(X[:3, :5])


def test_a_loaded_model_keeps_learning_with_its_ids(fitted: Any) -> None:
    model, seg, _, X = fitted
    trainer = SegmentModel.from_json(model.to_json()).to_segmenter()
    assert trainer.get_params()["half_life_batches"] == seg.half_life_batches
    assert trainer.next_id_ == model.next_id and trainer.version_ == model.model_version
    trainer.partial_fit(model.to_preprocessor().transform(X[:1000]))
    assert trainer.version_ == model.model_version + 1
    assert trainer.ids_.tolist() == model.ids


# -- rejection ----------------------------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[int(last) if last.isdigit() else last] = value

    return edit


BAD_DOCUMENTS: dict[str, tuple[Edit, str]] = {
    "centre with a missing column": (lambda d: d["centers"][1].pop(), "centers must be"),
    "counts of the wrong length": (lambda d: d["counts"].pop(), "counts has 4 entries"),
    "duplicate ids": (_set("ids.1", 0), "ids must be unique"),
    "next_id already used": (_set("next_id", 2), "next_id"),
    "negative count": (_set("counts.0", -1.0), "counts must be finite and >= 0"),
    "feature names disagree": (_set("preprocessing.feature_names.0", "x"), "differ"),
    "zero scale": (_set("preprocessing.scale.3", 0.0), "scale within"),
    "unknown format": (_set("format_version", 99), "unsupported format_version 99"),
    "missing field": (lambda d: d.pop("ids"), "ids"),
    "unknown field": (_set("pickle", "nope"), "pickle"),
    "naive timestamp": (_set("created_at", "2024-05-01T12:00:00"), "created_at"),
    "duplicate names": (lambda d: d["names"].__setitem__(1, d["names"][0]), "names must be"),
    "scale so small its reciprocal overflows": (_set("preprocessing.scale.0", 1e-308), "scale"),
    "centre whose square overflows": (_set("centers.0.0", 1e200), "beyond"),
    "preprocessing centre out of range": (_set("preprocessing.center.1", -1e300), "center"),
    "tier beyond K": (_set("tiers.0", 6), "tiers run from 1 to at most K=5"),
    "name longer than a record should carry": (_set("names.0", "x" * 201), "at most 200"),
    "negative profile size": (_set("profiles.0.size", -1), "profiles.0.size"),
    "unknown segmenter parameter": (_set("segmenter_params.evil", 1), "unknown \\['evil'\\]"),
    "negative half-life": (_set("segmenter_params.half_life_batches", -5), "half_life_batches"),
    "no k-means++ inits": (_set("segmenter_params.n_init", 0), "n_init"),
    "dying share of one": (_set("segmenter_params.dying_share", 1.0), "dying_share"),
    "too many centres": (lambda d: d["centers"].extend([d["centers"][0]] * 1020), "centers"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_malformed_models_are_rejected_with_a_clear_error(fitted: Any, case: str) -> None:
    edit, message = BAD_DOCUMENTS[case]
    doc = orjson.loads(fitted[0].to_json())
    edit(doc)
    with pytest.raises(ModelFormatError, match=message):
        SegmentModel.from_json(orjson.dumps(doc))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"null"])
def test_non_finite_centres_are_rejected(fitted: Any, literal: bytes) -> None:
    doc = orjson.loads(fitted[0].to_json())
    doc["centers"][2][4] = 12345.678
    data = orjson.dumps(doc).replace(b"12345.678", literal)
    with pytest.raises(ModelFormatError, match="centers"):
        SegmentModel.from_json(data)


@pytest.mark.parametrize("field", ["ids.0", "next_id", "tiers.0", "model_version"])
def test_an_integer_beyond_what_json_readers_keep_exactly_is_refused(
    fitted: Any, field: str
) -> None:
    doc = orjson.loads(fitted[0].to_json())
    _set(field, 2**70)(doc)  # beyond int64 too: numpy would raise OverflowError, not refuse
    with pytest.raises(ModelFormatError, match="9007199254740991"):
        SegmentModel.from_json(json.dumps(doc))


def test_a_non_finite_profile_or_metric_is_refused(fitted: Any) -> None:
    # Accepted, it would be written back as null and the export would not load again.
    data = fitted[0].to_json()
    doc = orjson.loads(data)
    doc["metrics"]["extra"] = {"ratio": 12345.678}
    with pytest.raises(ModelFormatError, match=r"metrics\.extra\.ratio"):
        SegmentModel.from_json(orjson.dumps(doc).replace(b"12345.678", b"Infinity"))
    doc = orjson.loads(data)
    doc["profiles"][0]["mean_views"] = 12345.678
    with pytest.raises(ModelFormatError, match=r"profiles\.0\.mean_views"):
        SegmentModel.from_json(orjson.dumps(doc).replace(b"12345.678", b"NaN"))


def test_a_document_larger_than_any_model_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(ModelFormatError, match="more than the 16,777,216 a model may have"):
        SegmentModel.from_json(b" " * (MAX_MODEL_BYTES + 1))


def test_garbage_is_a_model_format_error() -> None:
    for data in (b"", b"{", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(ModelFormatError):
            SegmentModel.from_json(data)


def test_from_fitted_refuses_inconsistent_parts(fitted: Any) -> None:
    model, seg, pre, X = fitted
    labels = label_segments(
        pre.inverse_transform(seg.cluster_centers_[:4]), X[:10], np.zeros(10, int), FEATURES
    )
    with pytest.raises(ModelFormatError, match="names has 4 entries"):
        SegmentModel.from_fitted(seg, pre, labels)
    assert model.created_at.tzinfo == UTC


def test_an_imported_model_takes_the_ids_of_the_segments_it_matches(fitted: Any) -> None:
    """A model made elsewhere numbers its segments its own way: matched to the current
    model's centres it gets their ids back; an unmatched centre gets a new id, never one
    used before, and a model of other features matches nothing."""
    model, _, _, X = fitted
    k = len(model.ids)
    order = list(reversed(range(k)))
    elsewhere = SegmentModel.model_validate(
        {
            **model.model_dump(),
            "centers": [model.centers[i] for i in order],
            "counts": [model.counts[i] for i in order],
            "ids": [100 + i for i in range(k)],  # ids of another namespace
            "next_id": 100 + k,
            "names": [model.names[i] for i in order],
            "tiers": [model.tiers[i] for i in order],
            "profiles": [model.profiles[i] for i in order],
        }
    )
    matched = elsewhere.with_ids_of(model, max_distance=1.0)
    assert matched.ids == [model.ids[i] for i in order]
    assert matched.next_id == model.next_id
    assert (matched.assign(X)[0] == model.assign(X)[0]).all()  # the ids live in the cache too

    moved = SegmentModel.model_validate(
        {
            **elsewhere.model_dump(),
            "centers": [[c + 50.0 for c in elsewhere.centers[0]], *elsewhere.centers[1:]],
        }
    )
    matched = moved.with_ids_of(model, max_distance=1.0)
    assert matched.ids == [model.next_id] + [model.ids[i] for i in order[1:]]
    assert matched.next_id == model.next_id + 1

    renamed = elsewhere.model_dump()
    names = ["other_" + n for n in model.feature_names]
    renamed["feature_names"] = renamed["preprocessing"]["feature_names"] = names
    renamed["preprocessing"]["log_columns"] = [
        "other_" + n for n in model.preprocessing.log_columns
    ]
    matched = SegmentModel.model_validate(renamed).with_ids_of(model, max_distance=1.0)
    assert matched.ids == list(range(model.next_id, model.next_id + k))


def test_ids_are_matched_in_business_units_across_scalings(fitted: Any) -> None:
    """Two fits of the same population scale it differently: their centres are compared
    after both are taken to one scaled space, not coordinate by coordinate."""
    model, _, _, X = fitted
    rng = np.random.default_rng(7)
    other_rows = raw_users(rng, 6000) * np.where(np.isin(FEATURES, HEAVY), 3.0, 1.0)
    pre = Preprocessor(FEATURES, log_columns=HEAVY).fit(other_rows)
    # The same centres in business units, expressed in the other scaling.
    centres = pre.transform(model.to_preprocessor().inverse_transform(np.array(model.centers)))
    seg = StreamingSegmenter.from_state(
        centres, model.counts, np.arange(len(model.ids)) + 50, next_id=60, version=1
    )
    labels = label_segments(pre.inverse_transform(centres), X, model.assign(X)[1], FEATURES)
    elsewhere = SegmentModel.from_fitted(seg, pre, labels, created_at=model.created_at, n_rows=1)
    assert not np.allclose(elsewhere.centers, model.centers)  # other coordinates
    assert elsewhere.with_ids_of(model, max_distance=1e-6).ids == model.ids
