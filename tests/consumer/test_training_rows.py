"""The training-sample row format: features plus a user key, read back as each user's newest."""

from __future__ import annotations

import hashlib
import sys

import numpy as np

from consumer.training_rows import decode_rows, keyed_rows, newest_row_per_user, user_key


def _elements(rows: np.ndarray) -> list[bytes]:
    """One list element per row, as LPUSH stores them (newest first when ``rows`` are)."""
    return [row.tobytes() for row in np.ascontiguousarray(rows)]


def test_a_row_is_its_features_then_the_blake2b_64_key_of_the_user() -> None:
    features = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    rows = keyed_rows(features, ["u1", "ü-2"])
    element = _elements(rows)[1]
    assert len(element) == 8 * 3 + 8
    assert element[:24] == features[1].tobytes()
    assert element[24:] == hashlib.blake2b("ü-2".encode(), digest_size=8).digest()
    assert user_key("ü-2") == int.from_bytes(element[24:], sys.byteorder)

    X, keys, keyed = decode_rows(_elements(rows), 3)
    assert np.array_equal(X, features)
    assert list(keys) == [user_key("u1"), user_key("ü-2")]
    assert keyed.all()


def test_each_user_counts_once_at_their_newest_row() -> None:
    """Newest first: a's and b's older rows go; a row without a key (written before keys
    existed) counts as its own user; a non-finite row is skipped, so c's older row is used."""
    keyed = keyed_rows(
        np.array([[1.0, 1], [2, 2], [3, 3], [np.nan, 4], [5, 5], [6, 6]]),
        ["a", "b", "a", "c", "b", "c"],
    )
    plain = np.array([[7.0, 7], [7, 7]])
    raw = [*_elements(keyed[:3]), *_elements(plain), *_elements(keyed[3:]), b"foreign"]
    assert np.array_equal(
        newest_row_per_user(raw, 2), np.array([[1.0, 1], [2, 2], [7, 7], [7, 7], [6, 6]])
    )


def test_no_rows_give_an_empty_table() -> None:
    assert newest_row_per_user([], 4).shape == (0, 4)
    assert keyed_rows(np.empty((0, 4)), []).shape == (0, 5)
