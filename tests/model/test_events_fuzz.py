"""The decoder under hostile input: it never raises, accounts for every record exactly once,
and gives the documented reason code for each kind of bad record.

Property tests run derandomized (the same examples every run) so the suite is deterministic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.events import (
    DEFAULT_ALIASES,
    TS_EXPECTED,
    DecodeLimits,
    EventBatch,
    Rejection,
    decode_events,
    is_ts_text,
    resolve_type_map,
)

TYPE_MAP = resolve_type_map(DEFAULT_ALIASES)
LIMITS = DecodeLimits(max_payload_bytes=4096)
TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms
FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def decode(
    values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
) -> tuple[EventBatch, list[Rejection]]:
    """Decode and check the accounting: rows, ignored and rejections partition the input."""
    batch, rejections = decode_events(values, keys, type_map=TYPE_MAP, limits=LIMITS)
    rows = batch.index.tolist()
    rejected = [r.index for r in rejections]
    places = rows + list(batch.ignored) + rejected
    assert sorted(places) == list(range(len(values))), "an index is lost or counted twice"
    n = len(batch)
    assert len(rows) == n == len(batch.event_id) == len(batch.category)
    assert batch.type_code.shape == batch.ts_ms.shape == batch.amount.shape == (n,)
    assert np.isfinite(batch.ts_ms).all() and np.isfinite(batch.amount).all()
    assert (batch.amount >= 0).all()
    assert ((batch.ts_ms >= LIMITS.min_ts_ms) & (batch.ts_ms < LIMITS.max_ts_ms)).all()
    assert all(isinstance(u, str) and 1 <= len(u) <= 256 for u in batch.user_id)
    assert all(isinstance(e, str) and 1 <= len(e) <= 128 for e in batch.event_id)
    return batch, rejections


def outcome(value: bytes | None, key: bytes | None = None) -> str:
    """Where one record ends: "row", "ignored" or its rejection reason."""
    batch, rejections = decode([value], [key])
    if len(batch):
        return "row"
    if batch.ignored:
        return "ignored"
    return rejections[0].reason


def event(**fields: Any) -> dict[str, Any]:
    """A valid view event with ``fields`` replaced (a value of `...` removes the field)."""
    base: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "type": "view", "ts": TS}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def dumps(obj: Any) -> bytes:
    """JSON as other producers write it: NaN and Infinity become the non-standard tokens."""
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode()


# -- strategies --------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile_ids = st.one_of(
    st.text(min_size=1, max_size=300),
    st.sampled_from(["", " ", "{", "}", "{u}", ":", "a:b", "%", "%7B", "ü ñ 😀", "\x00", "a b"]),
    # orjson reads integers outside [-2**63, 2**64) as floats, which are not identifiers.
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
fields = st.sampled_from(
    ["event_id", "user_id", "type", "ts", "amount", "currency", "category", "item_id",
     "quantity", "rating"]
)  # fmt: skip
timestamps = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.datetimes().map(lambda d: d.isoformat()),  # no zone: invalid
    st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999+00:00"]),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-02-30T0Z"]),
)


# -- properties --------------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=30))
def test_arbitrary_bytes_never_raise_and_every_index_is_accounted_for(
    values: list[bytes | None],
) -> None:
    decode(values, [None] * len(values))


@FUZZ
@given(st.lists(json_values, max_size=20))
def test_arbitrary_json_values_never_raise(values: list[Any]) -> None:
    _, rejections = decode([dumps(v) for v in values])
    for r in rejections:
        if not isinstance(values[r.index], dict):
            # NaN/Infinity tokens (and numbers outside float64) are not JSON to orjson.
            assert r.reason in ("not_object", "not_json", "empty")


@FUZZ
@given(st.lists(st.tuples(fields, json_values), min_size=1, max_size=4), st.booleans())
def test_any_value_in_any_field_never_raises(
    replacements: list[tuple[str, Any]], truncate: bool
) -> None:
    raw = dumps(event(**{"type": "purchase", "amount": 3.5, **dict(replacements)}))
    decode([raw, raw[: len(raw) // 2] if truncate else raw, b"", None])


@FUZZ
@given(st.lists(st.tuples(hostile_ids, st.sampled_from(["same", "none", "empty", "other"]))))
def test_hostile_user_ids_and_keys(cases: list[tuple[str | int, str]]) -> None:
    values = [dumps(event(user_id=u)) for u, _ in cases]
    keys: list[bytes | None] = []
    for user, how in cases:
        as_text = str(user)
        keys.append(
            {
                "same": as_text.encode(),
                "none": None,
                "empty": b"",
                "other": b"x" + as_text.encode(),
            }[how]
        )
    batch, rejections = decode(values, keys)
    reasons = {r.index: r.reason for r in rejections}
    rows = dict(zip(batch.index.tolist(), batch.user_id, strict=True))
    for i, (user, how) in enumerate(cases):
        text = str(user)
        valid = isinstance(user, int) or 1 <= len(text) <= 256
        if not valid:
            assert reasons[i] == "invalid_field"
        elif how == "other":
            assert reasons[i] == "key_mismatch"
        else:
            assert rows[i] == text  # integers become their decimal string


@FUZZ
@given(timestamps)
def test_any_timestamp_is_a_row_or_a_documented_reason(ts: Any) -> None:
    result = outcome(dumps(event(ts=ts)))
    assert result in ("row", "invalid_field", "ts_out_of_range", "not_json")
    if isinstance(ts, int) and not isinstance(ts, bool):
        in_range = LIMITS.min_ts_ms <= ts < LIMITS.max_ts_ms
        assert result == ("row" if in_range else "ts_out_of_range")


@FUZZ
@given(
    st.one_of(
        timestamps.filter(lambda t: isinstance(t, str)),
        st.integers().map(str),
        st.text(alphabet="0123456789:.+-eEZT ", max_size=30),
        st.text(max_size=30),
    )
)
def test_is_ts_text_says_what_the_decoder_accepts(ts: str) -> None:
    """`streamseg produce` counts the ts texts the consumer will refuse with it."""
    accepted = outcome(dumps(event(ts=ts))) in ("row", "ts_out_of_range")
    assert is_ts_text(ts) == accepted


# -- constructed cases: the reason for each kind of bad record -------------------------------

NESTED = b"[" * 10_000
CASES: list[tuple[str, bytes | None, bytes | None, str]] = [
    ("none value", None, None, "empty"),
    ("empty value", b"", b"u1", "empty"),
    ("oversize", b" " * (LIMITS.max_payload_bytes + 1), None, "oversize"),
    ("binary", b"\x00\xff\xfe garbage", None, "not_json"),
    ("invalid utf-8 in a string", b'{"event_id": "\xff"}', None, "not_json"),
    ("truncated", dumps(event())[:-1], None, "not_json"),
    ("10k levels of [", NESTED[: LIMITS.max_payload_bytes], None, "not_json"),
    ("1k levels inside a field", dumps(event(category=None))[:-1] + b',"x":' + b"[" * 1000
     + b"]" * 1000 + b"}", None, "row"),
    ("NaN token amount", dumps(event(type="purchase", amount=math.nan)), None, "not_json"),
    ("Infinity token amount", dumps(event(type="purchase", amount=math.inf)), None, "not_json"),
    ("1e400 amount", dumps(event(type="purchase", amount=1))[:-1].replace(b"1}", b"")
     + b"1e400}", None, "not_json"),
    ("lone surrogate", b'{"event_id": "e", "user_id": "\\ud800", "type": "view", "ts": 1}',
     None, "not_json"),
    ("array", b"[1, 2]", None, "not_object"),
    ("string", b'"event"', None, "not_object"),
    ("null", b"null", None, "not_object"),
    ("number", b"12", None, "not_object"),
    ("missing event_id", dumps(event(event_id=...)), None, "invalid_field"),
    ("empty event_id", dumps(event(event_id="")), None, "invalid_field"),
    ("event_id 129 chars", dumps(event(event_id="e" * 129)), None, "invalid_field"),
    ("float event_id", dumps(event(event_id=1.5)), None, "invalid_field"),
    ("bool event_id", dumps(event(event_id=True)), None, "invalid_field"),
    ("null user_id", dumps(event(user_id=None)), None, "invalid_field"),
    ("empty user_id", dumps(event(user_id="")), None, "invalid_field"),
    ("bool user_id", dumps(event(user_id=False)), None, "invalid_field"),
    ("object user_id", dumps(event(user_id={"id": 1})), None, "invalid_field"),
    ("type not a string", dumps(event(type=2)), None, "invalid_field"),
    ("bool ts", dumps(event(ts=True)), None, "invalid_field"),
    ("null ts", dumps(event(ts=None)), None, "invalid_field"),
    ("ISO ts without zone", dumps(event(ts="2026-01-01T00:00:00")), None, "invalid_field"),
    ("ts not a date", dumps(event(ts="yesterday")), None, "invalid_field"),
    ("epoch ms in a string", dumps(event(ts=str(TS))), None, "invalid_field"),
    ("epoch seconds in a string", dumps(event(ts=str(TS // 1000))), None, "invalid_field"),
    ("year 1 ISO", dumps(event(ts="0001-01-01T00:00:00Z")), None, "ts_out_of_range"),
    ("year 1 ISO east of UTC", dumps(event(ts="0001-01-01T00:00:00+14:00")), None,
     "ts_out_of_range"),
    ("year 9999 ISO", dumps(event(ts="9999-12-31T23:59:59Z")), None, "ts_out_of_range"),
    ("year 9999 ISO west of UTC", dumps(event(ts="9999-12-31T23:59:59-14:00")), None,
     "ts_out_of_range"),
    ("year 1 epoch ms", dumps(event(ts=-62_135_596_800_000)), None, "ts_out_of_range"),
    ("year 9999 epoch ms", dumps(event(ts=253_402_300_799_000)), None, "ts_out_of_range"),
    ("epoch seconds", dumps(event(ts=TS // 1000)), None, "ts_out_of_range"),
    ("ts 1e20", dumps(event(ts=10**20)), None, "ts_out_of_range"),
    ("ts 2**64-1", dumps(event(ts=2**64 - 1)), None, "ts_out_of_range"),
    ("ts -2**63", dumps(event(ts=-(2**63))), None, "ts_out_of_range"),
    ("purchase without amount", dumps(event(type="purchase")), None, "invalid_field"),
    ("refund with null amount", dumps(event(type="refund", amount=None)), None, "invalid_field"),
    ("negative amount", dumps(event(type="purchase", amount=-1)), None, "invalid_field"),
    ("bool amount", dumps(event(type="purchase", amount=True)), None, "invalid_field"),
    ("string amount", dumps(event(type="purchase", amount="12.5")), None, "invalid_field"),
    ("huge amount", dumps(event(type="purchase", amount=1e308)), None, "invalid_field"),
    ("largest amount", dumps(event(type="purchase", amount=1e12)), None, "row"),
    ("bool quantity", dumps(event(quantity=True)), None, "invalid_field"),
    ("zero quantity", dumps(event(quantity=0)), None, "invalid_field"),
    ("bool rating", dumps(event(type="review", rating=True)), None, "invalid_field"),
    ("rating 6", dumps(event(type="review", rating=6)), None, "invalid_field"),
    ("empty category", dumps(event(category="")), None, "invalid_field"),
    ("list category", dumps(event(category=["a"])), None, "invalid_field"),
    ("currency too long", dumps(event(currency="EURO-DOLLAR")), None, "invalid_field"),
    ("null optionals", dumps(event(amount=None, category=None, item_id=None, quantity=None,
                                   rating=None, currency=None)), None, "row"),
    ("unknown fields", dumps(event(extra={"deep": [1, 2]})), None, "row"),
    ("duplicated keys: the last wins", b'{"event_id": "e", "user_id": "u1", "type": "nope", '
     b'"type": "view", "ts": 1767225600000}', None, "row"),
    ("unmapped type", dumps(event(type="search")), None, "ignored"),
    ("alias", dumps(event(type="add_to_cart")), None, "row"),
    ("integer ids", dumps(event(event_id=7, user_id=42)), b"42", "row"),
    ("key differs from user_id", dumps(event()), b"u2", "key_mismatch"),
    ("key of an integer user_id differs", dumps(event(user_id=42)), b"042", "key_mismatch"),
    ("null key", dumps(event()), None, "row"),
    ("empty key", dumps(event()), b"", "row"),
    ("hostile user id", dumps(event(user_id="{a}: %7B ü")), "{a}: %7B ü".encode(), "row"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "key", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_reason_of_each_constructed_case(
    value: bytes | None, key: bytes | None, expected: str
) -> None:
    assert outcome(value, key) == expected


def test_all_constructed_cases_in_one_batch_keep_their_reasons() -> None:
    """A bad record costs its chunk a second validation, never its neighbours' outcome."""
    values = [c[1] for c in CASES]
    batch, rejections = decode(values, [c[2] for c in CASES])
    got: dict[int, str] = {r.index: r.reason for r in rejections}
    got.update({i: "row" for i in batch.index.tolist()})
    got.update({i: "ignored" for i in batch.ignored})
    assert [got[i] for i in range(len(CASES))] == [c[3] for c in CASES]
    assert batch.ignored_types == [json.loads(CASES[i][1] or b"")["type"] for i in batch.ignored]


def _decoded(batch: EventBatch, rejections: list[Rejection]) -> tuple[Any, ...]:
    return (
        batch.index.tolist(),
        batch.user_id,
        batch.event_id,
        batch.type_code.tolist(),
        batch.ts_ms.tolist(),
        batch.amount.tolist(),
        batch.category,
        batch.ignored,
        [(r.index, r.reason, r.detail) for r in rejections],
    )


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(fields, json_values | timestamps | hostile_ids), max_size=3),
            st.sampled_from(["purchase", "view", "unknown_type", "add_to_cart"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_fast_decoder_agrees_with_the_schema(
    cases: list[tuple[list[tuple[str, Any]], str, bool]],
) -> None:
    """msgspec reads the common case first; the outcome must be the schema's, value for value."""
    values: list[bytes | None] = []
    for replacements, kind, truncate in cases:
        raw = dumps(event(**{"type": kind, "amount": 3.5, **dict(replacements)}))
        values.append(raw[: len(raw) // 2] if truncate else raw)
    keys: list[bytes | None] = [b"u1"] * len(values)
    fast = decode_events(values, keys, type_map=TYPE_MAP, limits=LIMITS)
    schema_only = decode_events(values, keys, type_map=TYPE_MAP, limits=LIMITS, accelerated=False)
    assert _decoded(*fast) == _decoded(*schema_only)


@pytest.mark.parametrize(
    "ts",
    [
        "2026-01-01T00:00:00.1234567891Z",  # more digits than microseconds: truncated
        "2026-01-01t00:00:00z",
        "2026-01-01 00:00:00+05:30",
        "2026-01-01T00:00:00+0530",
        "2026-01-01T23:59:60Z",
        "2026-01-01T00:00:00+24:00",
        "1767225600000",
    ],
)
def test_the_fast_decoder_reads_iso_timestamps_as_the_schema_does(ts: str) -> None:
    values: list[bytes | None] = [dumps(event(ts=ts))]
    fast = decode_events(values, type_map=TYPE_MAP, limits=LIMITS)
    schema_only = decode_events(values, type_map=TYPE_MAP, limits=LIMITS, accelerated=False)
    assert _decoded(*fast) == _decoded(*schema_only)


@pytest.mark.parametrize(
    ("ts", "why"),
    [
        ("2026-01-01T00:00:00", "input should have timezone info"),
        ("2019-10-01 00:00:02 CET", "unexpected extra characters"),
        ("1569888016", "digits in a string are not a time"),
        (None, "input should be a valid datetime"),
    ],
)
def test_a_bad_ts_detail_says_what_the_contract_expects(ts: Any, why: str) -> None:
    _, rejections = decode([dumps(event(ts=ts))], [None])
    assert [r.reason for r in rejections] == ["invalid_field"]
    assert rejections[0].detail.startswith(f"ts: {TS_EXPECTED}: ")
    assert why in rejections[0].detail


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"user_id": ""}, "user_id: String should have at least 1 character"),
        ({"user_id": "u" * 257}, "user_id: String should have at most 256 characters"),
        ({"event_id": "e" * 129}, "event_id: String should have at most 128 characters"),
        ({"item_id": ""}, "item_id: String should have at least 1 character"),
        ({"event_id": 1.5}, "event_id: Input should be a valid integer or a valid string"),
        ({"user_id": None}, "user_id: Input should be a valid integer or a valid string"),
        ({"item_id": [7]}, "item_id: Input should be a valid integer or a valid string"),
        ({"user_id": "", "ts": None}, "user_id: String should have at least 1 character"),
    ],
)
def test_a_bad_identifier_detail_is_that_of_the_member_of_its_type(
    fields: dict[str, Any], detail: str
) -> None:
    """An identifier is ``int | str``: pydantic lists the int member's error first, which
    for a string said ``user_id.int: Input should be a valid integer``."""
    _, rejections = decode([dumps(event(**fields))], [None])
    assert [(r.reason, r.detail) for r in rejections] == [("invalid_field", detail)]


@FUZZ
@given(st.sampled_from(["event_id", "user_id", "item_id"]), json_values | hostile_ids)
def test_a_bad_identifier_detail_names_the_field_not_a_member_of_its_union(
    name: str, value: Any
) -> None:
    _, rejections = decode([dumps(event(**{name: value}))], [None])
    for rejection in rejections:
        if rejection.reason == "invalid_field":
            assert rejection.detail.startswith(f"{name}: ")


def test_an_event_far_ahead_of_its_kafka_record_is_out_of_range() -> None:
    """One clock years ahead must not move the watermark: ts is checked against the record."""
    day = 86_400_000
    values: list[bytes | None] = [
        dumps(event(ts=TS)),
        dumps(event(ts=TS + 2 * day)),  # two days ahead of its record
        dumps(event(ts=TS + 2 * day)),  # record timestamp unknown: only the fixed range applies
        dumps(event(ts=TS - 300 * day)),  # late is fine
    ]
    record_ts = np.array([TS, TS, -1, TS], dtype=np.int64)
    batch, rejections = decode_events(
        values, type_map=TYPE_MAP, limits=LIMITS, record_ts_ms=record_ts
    )
    assert batch.index.tolist() == [0, 2, 3]
    assert [(r.index, r.reason) for r in rejections] == [(1, "ts_out_of_range")]
    assert "after the record" in rejections[0].detail
    off = DecodeLimits(max_payload_bytes=4096, max_ahead_of_record_ms=0)
    batch, _ = decode_events(values, type_map=TYPE_MAP, limits=off, record_ts_ms=record_ts)
    assert batch.index.tolist() == [0, 1, 2, 3]


def test_without_a_record_time_the_consumer_clock_bounds_an_event() -> None:
    """A producer that stamps its records 1 (or 0) let an event of 2096 through: its
    watermark aged every user by 70 years at the next re-score. The consumer's clock bounds
    records without a time, and records stamped after it."""
    day = 86_400_000
    now = TS + 10 * day
    values: list[bytes | None] = [
        dumps(event(ts=4_000_000_000_000)),  # 2096, record stamped 1
        dumps(event(ts=now + 2 * day)),  # record stamped 3 days ahead of the clock
        dumps(event(ts=now - day)),  # record stamped 1: fine against the clock
        dumps(event(ts=now + 2 * day)),  # record stamped now + 2 days: it is bounded by now
    ]
    record_ts = np.array([1, now + 3 * day, 1, now + 2 * day], dtype=np.int64)
    batch, rejections = decode_events(
        values, type_map=TYPE_MAP, limits=LIMITS, record_ts_ms=record_ts, now_ms=now
    )
    assert batch.index.tolist() == [2]
    assert [(r.index, r.reason) for r in rejections] == [
        (0, "ts_out_of_range"),
        (1, "ts_out_of_range"),
        (3, "ts_out_of_range"),
    ]
    assert "or the consumer's clock" in rejections[0].detail
