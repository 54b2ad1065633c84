"""The malformed records `EventGenerator` mixes into a stream on purpose, one builder per kind.

Each builder takes a valid event (a copy it may change), its record key, another user's key and
a random generator, and returns the bad ``(key, value)``: JSON cut short, text that is not
JSON, invalid UTF-8, a BOM, an array or a scalar instead of an object, a missing, empty or
nested user id, impossible amounts, timestamps and ratings, an oversize value, and a key that
names another user. What the consumer must do with each (dead-letter it, with the reason) is
tested in ``tests/consumer/test_synthetic.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

__all__ = ["MALFORMED_KINDS", "MalformedBuilder"]

_Ev = dict[str, Any]
_Rec = tuple[bytes | None, bytes]
_Rng = np.random.Generator
#: Builds a malformed ``(key, value)`` from a valid event (a copy), its key, another user's
#: key and the random generator of malformed records.
MalformedBuilder = Callable[[_Ev, bytes, bytes, _Rng], _Rec]


def _as_purchase(event: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    event["type"] = "order_completed" if rng.random() < 0.3 else "purchase"
    event.setdefault("amount", round(float(rng.lognormal(3.5, 0.7)), 2))
    event.setdefault("currency", "EUR")
    event.pop("rating", None)
    return event


def _bad_not_json(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    raw = orjson.dumps(e)
    return key, raw[: max(1, int(len(raw) * rng.uniform(0.2, 0.9)))]


def _bad_text(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    texts = (
        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        b"user_id=" + key + b"&type=view",
        b"{'user_id': '" + key + b"', 'type': 'view'}",
    )
    return key, texts[int(rng.integers(len(texts)))]


def _bad_utf8(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    return key, orjson.dumps(e).replace(b'"category":"', b'"category":"\xff\xfe', 1)


def _bad_bom(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    return key, b"\xef\xbb\xbf" + orjson.dumps(e)


def _bad_array(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    return key, orjson.dumps([e])


def _bad_scalar(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    return key, (b"null", b"42", b'"view"', b"true")[int(rng.integers(4))]


def _bad_empty(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    return key, b""


def _bad_missing_user(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    del e["user_id"]
    return (None if rng.random() < 0.5 else key), orjson.dumps(e)


def _bad_empty_user(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e["user_id"] = ""
    return None, orjson.dumps(e)


def _bad_user_object(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e["user_id"] = {"id": e["user_id"]}
    return key, orjson.dumps(e)


def _bad_negative_amount(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e = _as_purchase(e, rng)
    e["amount"] = -abs(e["amount"]) - 0.01
    return key, orjson.dumps(e)


def _bad_nan_amount(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e = _as_purchase(e, rng)
    e["amount"] = ("NaN", "nan", "Infinity", "-inf")[int(rng.integers(4))]
    return key, orjson.dumps(e)


def _bad_garbage_amount(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e = _as_purchase(e, rng)
    e["amount"] = f"{e['amount']:.2f} €".replace(".", ",")
    return key, orjson.dumps(e)


def _bad_purchase_without_amount(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e = _as_purchase(e, rng)
    del e["amount"]
    return key, orjson.dumps(e)


def _bad_ts_year_1(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e["ts"] = "0001-01-01T00:00:00Z"
    return key, orjson.dumps(e)


def _bad_ts_year_9999(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e["ts"] = "9999-12-31T23:59:59.999+00:00" if rng.random() < 0.5 else 253_402_300_799_000
    return key, orjson.dumps(e)


def _bad_ts_seconds(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    ts = e["ts"]
    e["ts"] = (ts // 1000) if isinstance(ts, int) else 1_704_067_200
    return key, orjson.dumps(e)


def _bad_ts_without_zone(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e["ts"] = "2024-03-01T10:15:00"
    return key, orjson.dumps(e)


def _bad_type_not_string(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e["type"] = int(rng.integers(0, 7))
    return key, orjson.dumps(e)


def _bad_rating(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e["type"] = "review"
    e["rating"] = (0, 6, 10, -1)[int(rng.integers(4))]
    return key, orjson.dumps(e)


def _bad_quantity(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    e["type"] = "cart"
    e["quantity"] = (0, -2)[int(rng.integers(2))]
    return key, orjson.dumps(e)


def _bad_oversize(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    # Well above the default 64 KiB limit, well below Kafka's default 1 MB message size.
    e["debug_payload"] = "x" * 100_000
    return key, orjson.dumps(e)


def _bad_key_mismatch(e: _Ev, key: bytes, other: bytes, rng: _Rng) -> _Rec:
    return other, orjson.dumps(e)


#: Kinds of malformed records, by name; each builds ``(key, value)`` from a valid event.
MALFORMED_KINDS: dict[str, MalformedBuilder] = {
    "truncated_json": _bad_not_json,
    "not_json_text": _bad_text,
    "invalid_utf8": _bad_utf8,
    "utf8_bom": _bad_bom,
    "json_array": _bad_array,
    "json_scalar": _bad_scalar,
    "empty_value": _bad_empty,
    "missing_user_id": _bad_missing_user,
    "empty_user_id": _bad_empty_user,
    "user_id_object": _bad_user_object,
    "negative_amount": _bad_negative_amount,
    "nan_amount": _bad_nan_amount,
    "garbage_amount": _bad_garbage_amount,
    "purchase_without_amount": _bad_purchase_without_amount,
    "ts_year_1": _bad_ts_year_1,
    "ts_year_9999": _bad_ts_year_9999,
    "ts_in_seconds": _bad_ts_seconds,
    "ts_without_zone": _bad_ts_without_zone,
    "type_not_string": _bad_type_not_string,
    "rating_out_of_range": _bad_rating,
    "quantity_not_positive": _bad_quantity,
    "oversize": _bad_oversize,
    "key_mismatch": _bad_key_mismatch,
}
