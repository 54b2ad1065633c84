"""The event contract: the JSON schema of an input event and the batch decoder.

A batch of raw Kafka values becomes an `EventBatch` of numpy columns plus a list of
`Rejection`s (index, reason) for the records that cannot be used. Decoding never raises on
bad input: a bad record is data to route, not an exception.

Schema of one event (a JSON object; unknown fields are ignored):

=============  =====================================================================
``event_id``   string or integer, 1-128 characters once written as a string
``user_id``    string or integer, 1-256 characters once written as a string
``type``       string, 1-64 characters; one of view, cart, purchase, refund, review,
               like, share, or an alias configured in the alias map
``ts``         event time: ISO-8601 string **with a zone**, or epoch milliseconds
               (a JSON integer or float; digits in a string are refused, not guessed
               to be seconds or milliseconds). Must lie in [``min_ts_ms``, ``max_ts_ms``)
               and at most ``max_ahead_of_record_ms`` after the Kafka record's timestamp
               (the consumer's clock where that is unknown, and never after it)
``amount``     number in [0, 1e12], in currency units; required for purchase and refund
``currency``   optional string, 1-8 characters (recorded, not converted)
``category``   optional string, 1-128 characters
``item_id``    optional string or integer
``quantity``   optional integer >= 1
``rating``     optional integer 1-5 (reviews)
=============  =====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Annotated, Any, Literal, NotRequired, cast

import msgspec
import numpy as np
import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict


class EventType(IntEnum):
    """Canonical event types; the integer is the code used in numpy columns."""

    VIEW = 0
    CART = 1
    PURCHASE = 2
    REFUND = 3
    REVIEW = 4
    LIKE = 5
    SHARE = 6


CANONICAL_TYPES: dict[str, EventType] = {t.name.lower(): t for t in EventType}

#: Real-world names mapped by default; settings can add or override entries.
DEFAULT_ALIASES: dict[str, str] = {
    "product_view": "view",
    "page_view": "view",
    "add_to_cart": "cart",
    "order_completed": "purchase",
    "checkout_completed": "purchase",
    "order_refunded": "refund",
    "return": "refund",
    "wishlist_add": "like",
    "rating": "review",
}

#: Events of these types carry money and must have ``amount``.
MONEY_TYPES = frozenset({"purchase", "refund"})

#: Largest accepted ``amount`` (currency units).
MAX_AMOUNT = 1e12

_INT64_MAX = 2**63 - 1
# int64: larger integers take the schema path (orjson reads up to uint64, then "not_json").
_FastInt = Annotated[int, msgspec.Meta(ge=-(2**63), le=_INT64_MAX)]


_NUMBER_TEXT = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


def _digits(text: str) -> bool:
    """Whether ``text`` is a number written out (a date-time always holds a ':', so that
    test comes first: the regex runs for almost no real timestamp)."""
    return ":" not in text and _NUMBER_TEXT.fullmatch(text) is not None


def _not_a_number_in_text(value: object) -> object:
    # pydantic reads "1569888016" as a datetime, guessing seconds or milliseconds from its
    # size: the contract's epoch milliseconds are a JSON number, so such a string is refused.
    if isinstance(value, str) and _digits(value):
        raise ValueError("digits in a string are not a time")
    return value


#: An ISO-8601 date-time with a zone (``2024-03-01T10:20:30Z``), given as a JSON string.
IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_not_a_number_in_text)]
#: What a dead letter's detail says when ``ts`` is neither of its two forms.
TS_EXPECTED = (
    "expected epoch milliseconds (a JSON number) or an ISO-8601 string with a zone "
    "(2024-03-01T10:20:30Z)"
)


def _epoch_ms(value: int | float | datetime) -> float:
    if isinstance(value, datetime):
        return value.timestamp() * 1000.0
    return float(value)


# An identifier is a non-empty string or an integer (normalised to its decimal string).
ShortIdentifier = Annotated[
    StrictInt | Annotated[str, StringConstraints(min_length=1, max_length=128)],
    AfterValidator(str),
]
Identifier = Annotated[
    StrictInt | Annotated[str, StringConstraints(min_length=1, max_length=256)],
    AfterValidator(str),
]


class Event(TypedDict):
    """One input event, as documented in the module docstring (and in the README).

    A TypedDict rather than a BaseModel: validating a batch of plain dicts is ~3x faster, and
    the hot path needs columns, not objects. ``ts`` is normalised to epoch milliseconds
    (float); identifiers given as integers are normalised to strings.
    """

    event_id: ShortIdentifier
    user_id: Identifier
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    ts: Annotated[StrictInt | StrictFloat | IsoDatetime, AfterValidator(_epoch_ms)]
    # strict: a JSON true or "12.5" is not an amount (lax mode would read 1.0 and 12.5).
    # The upper bound keeps decayed sums and model profiles far from float overflow.
    amount: NotRequired[
        Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False, strict=True)] | None
    ]
    currency: NotRequired[Annotated[str, StringConstraints(min_length=1, max_length=8)] | None]
    category: NotRequired[Annotated[str, StringConstraints(min_length=1, max_length=128)] | None]
    item_id: NotRequired[Identifier | None]
    quantity: NotRequired[Annotated[int, Field(ge=1, strict=True)] | None]
    rating: NotRequired[Annotated[int, Field(ge=1, le=5, strict=True)] | None]


#: JSON Schema of one event, for producers in other languages.
EVENT_JSON_SCHEMA: dict[str, Any] = TypeAdapter(Event).json_schema()

_EVENT_LIST = TypeAdapter(list[Event])

RejectReason = Literal[
    "oversize",
    "empty",
    "not_json",
    "not_object",
    "invalid_field",
    "ts_out_of_range",
    "key_mismatch",
]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that cannot be used: its index in the input batch, a reason code, a detail."""

    index: int
    reason: RejectReason
    detail: str


@dataclass(slots=True)
class EventBatch:
    """Decoded events as parallel columns (numpy where numeric).

    ``index`` maps each row back to the record's position in the input batch. ``type_code``
    holds `EventType` values; ``amount`` is 0 where absent; ``category`` is None where absent.
    """

    index: np.ndarray  # int64
    user_id: list[str]
    event_id: list[str]
    type_code: np.ndarray  # int8
    ts_ms: np.ndarray  # float64, epoch milliseconds
    amount: np.ndarray  # float64, currency units
    category: list[str | None]
    ignored: list[int] = field(default_factory=list)  # indexes of valid events of unmapped type
    ignored_types: list[str] = field(default_factory=list)  # their type names, in that order

    def __len__(self) -> int:
        return len(self.user_id)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds applied to every record. Times in epoch milliseconds, sizes in bytes."""

    max_payload_bytes: int = 64 * 1024
    min_ts_ms: float = 946_684_800_000.0  # 2000-01-01T00:00:00Z
    max_ts_ms: float = 4_102_444_800_000.0  # 2100-01-01T00:00:00Z
    #: An event may be at most this far ahead of its Kafka record's timestamp (when known):
    #: one event stamped years ahead would otherwise move the watermark, and with it every
    #: user's recency, for good. 0 = no check.
    max_ahead_of_record_ms: float = 86_400_000.0  # one day


def _ts_within_limits(
    ts_ms: np.ndarray, limits: DecodeLimits, reference_ms: np.ndarray | float
) -> np.ndarray:
    """Which event times ``ts_ms`` (epoch milliseconds) are accepted: in [``min_ts_ms``,
    ``max_ts_ms``) and at most ``max_ahead_of_record_ms`` after ``reference_ms`` (epoch ms:
    the earlier of the record's timestamp and the consumer's clock; infinity when neither is
    known)."""
    within = (ts_ms >= limits.min_ts_ms) & (ts_ms < limits.max_ts_ms)
    if limits.max_ahead_of_record_ms > 0:
        within &= ts_ms <= reference_ms + limits.max_ahead_of_record_ms
    return within


def ts_out_of_range_detail(ts_ms: float, limits: DecodeLimits) -> str:
    """The dead-letter detail of an event time that `ts_within_limits` refuses: the value,
    and why when that is not plain (ahead of its record, or epoch seconds for milliseconds)."""
    detail = f"ts={ts_ms:.0f} ms"
    if limits.min_ts_ms <= ts_ms < limits.max_ts_ms:
        return detail + (
            f", more than {limits.max_ahead_of_record_ms:.0f} ms after the record's "
            "timestamp (or the consumer's clock)"
        )
    if limits.min_ts_ms <= ts_ms * 1000.0 < limits.max_ts_ms:
        return detail + (
            ", looks like epoch seconds; ts is epoch milliseconds (produce --ts-unit s converts)"
        )
    return detail


def resolve_type_map(aliases: Mapping[str, str]) -> dict[str, EventType]:
    """Build the name -> `EventType` map from the canonical names plus ``aliases``.

    Raises ValueError naming an alias whose target is not a canonical type.
    """
    table = dict(CANONICAL_TYPES)
    for name, target in aliases.items():
        if target not in CANONICAL_TYPES:
            raise ValueError(
                f"alias {name!r} -> {target!r}: target must be one of {sorted(CANONICAL_TYPES)}"
            )
        table[name] = CANONICAL_TYPES[target]
    return table


def decode_events(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    *,
    type_map: Mapping[str, EventType],
    limits: DecodeLimits = DecodeLimits(),
    record_ts_ms: np.ndarray | None = None,
    now_ms: float | None = None,
    accelerated: bool = True,
) -> tuple[EventBatch, list[Rejection]]:
    """Decode and validate a batch of raw JSON values.

    Every input index ends in exactly one place: a row of the batch, ``batch.ignored`` (valid
    event of a type absent from ``type_map``) or the returned rejections. When ``keys`` is
    given, a non-empty key that differs from the UTF-8 ``user_id`` is rejected (``key_mismatch``).
    An event more than ``limits.max_ahead_of_record_ms`` ahead of its reference time is
    ``ts_out_of_range``: the earlier of its Kafka record's timestamp (``record_ts_ms``, epoch
    ms; values before ``limits.min_ts_ms`` count as unknown: a producer may set 0 or 1) and
    ``now_ms`` (the consumer's clock), whichever are known. Without the clock, a record
    stamped 1 would let an event of 2096 through, and its watermark would age every user.

    The `Event` schema decides. With ``accelerated`` (the default), a stricter msgspec decoder
    (`_FastEvent`) reads the common case first; it accepts a subset of what `Event` accepts,
    with the same values, and every record it refuses goes through `Event` for the verdict
    and the error message. ``accelerated=False`` uses `Event` alone (for differential tests).
    """
    rejections: list[Rejection] = []
    candidates: list[int] = []
    for i, raw in enumerate(values):
        if not raw:
            rejections.append(Rejection(i, "empty", "empty value"))
        elif len(raw) > limits.max_payload_bytes:
            rejections.append(
                Rejection(i, "oversize", f"{len(raw)} bytes > {limits.max_payload_bytes}")
            )
        else:
            candidates.append(i)

    columns = _Columns()
    rest = columns.add_fast(values, candidates) if accelerated else candidates
    if rest:
        columns.add_validated(values, rest, rejections)
        columns.sort_by_index()
    return _check_columns(columns, keys, type_map, limits, record_ts_ms, now_ms, rejections)


class _FastEvent(msgspec.Struct, gc=False):
    """The common shape of an `Event`, for msgspec: stricter, never looser.

    Integers are bounded to int64 (orjson, the schema path's parser, reads no further) and
    ``ts`` strings are parsed by the schema's own validator, so a record accepted here is
    accepted by `Event` with the same values. One exception, on purpose: unknown fields are
    skipped unread here, so a number beyond float range or invalid UTF-8 in an unknown field
    passes, where orjson calls the whole record ``not_json``.
    """

    event_id: _FastInt | Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    user_id: _FastInt | Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ts: _FastInt | float | str  # strings are parsed by the schema's own datetime validator
    amount: Annotated[float, msgspec.Meta(ge=0, le=MAX_AMOUNT)] | None = None
    currency: Annotated[str, msgspec.Meta(min_length=1, max_length=8)] | None = None
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    item_id: _FastInt | Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    quantity: Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)] | None = None
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None


_FAST_DECODER = msgspec.json.Decoder(_FastEvent)
_FAST_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)
# Without IsoDatetime's Python validator (3x the cost of a string): the digits it refuses are
# found first, by a test that a date-time never passes (it always holds a ':').
_AWARE_DATETIMES = TypeAdapter(list[AwareDatetime])


_AWARE_DATETIME = TypeAdapter(AwareDatetime)


def is_ts_text(text: str) -> bool:
    """Whether a ``ts`` given as this string is accepted: ISO-8601 with a zone, not digits."""
    if _digits(text):
        return False
    try:
        _AWARE_DATETIME.validate_python(text)
    except ValidationError:
        return False
    return True


def _iso_stamps_to_epoch_ms(stamps: list[Any]) -> set[int]:
    """Replace the strings in ``stamps`` by epoch ms, parsed as `Event` parses ``ts``.

    Returns the positions of strings that are no valid zoned datetime (left unchanged).
    """
    texts = [p for p, t in enumerate(stamps) if t.__class__ is str]
    if not texts:
        return set()
    bad = {p for p in texts if _digits(stamps[p])}
    texts = [p for p in texts if p not in bad] if bad else texts
    try:
        moments = _AWARE_DATETIMES.validate_python([stamps[p] for p in texts])
    except ValidationError as exc:
        bad |= {texts[cast(int, err["loc"][0])] for err in exc.errors(include_url=False)}
        texts = [p for p in texts if p not in bad]
        moments = _AWARE_DATETIMES.validate_python([stamps[p] for p in texts])
    for p, moment in zip(texts, moments, strict=True):
        stamps[p] = _epoch_ms(moment)
    return bad


@dataclass(slots=True)
class _Columns:
    """Schema-valid events as parallel lists, before the batch-wide checks."""

    index: list[int] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    event_id: list[str] = field(default_factory=list)
    type_name: list[str] = field(default_factory=list)
    ts_ms: list[float] = field(default_factory=list)
    amount: list[float | None] = field(default_factory=list)
    category: list[str | None] = field(default_factory=list)

    def add_fast(self, values: Sequence[bytes | None], candidates: list[int]) -> list[int]:
        """Decode ``candidates`` with `_FastEvent`; return the indexes it refused."""
        decode = _FAST_DECODER.decode
        events: list[_FastEvent] = []
        index: list[int] = []
        refused: list[int] = []
        for i in candidates:
            try:
                events.append(decode(values[i]))  # type: ignore[arg-type]
            except _FAST_ERRORS:
                refused.append(i)
                continue
            index.append(i)
        stamps: list[Any] = [e.ts for e in events]
        bad = _iso_stamps_to_epoch_ms(stamps)
        if bad:  # the schema path gives the verdict and the message
            refused += [index[p] for p in bad]
            keep = [p for p in range(len(events)) if p not in bad]
            index = [index[p] for p in keep]
            events = [events[p] for p in keep]
            stamps = [stamps[p] for p in keep]
        self.index += index
        self.user_id += [u if u.__class__ is str else str(u) for u in (e.user_id for e in events)]
        self.event_id += [v if v.__class__ is str else str(v) for v in (e.event_id for e in events)]
        self.type_name += [e.type for e in events]
        self.ts_ms += stamps
        self.amount += [e.amount for e in events]
        self.category += [e.category for e in events]
        return refused

    def add_validated(
        self, values: Sequence[bytes | None], candidates: list[int], rejections: list[Rejection]
    ) -> None:
        """Parse ``candidates`` with orjson and validate them with the `Event` schema."""
        parsed: list[Any] = []
        parsed_index: list[int] = []
        for i in candidates:
            try:
                obj = orjson.loads(values[i])  # type: ignore[arg-type]
            except orjson.JSONDecodeError as exc:
                rejections.append(Rejection(i, "not_json", str(exc)[:200]))
                continue
            if not isinstance(obj, dict):
                rejections.append(Rejection(i, "not_object", f"JSON {type(obj).__name__}"))
                continue
            parsed.append(obj)
            parsed_index.append(i)
        events, field_errors = _validate(parsed)
        for pos, detail in field_errors.items():
            rejections.append(Rejection(parsed_index[pos], "invalid_field", detail))
        for pos, ev in enumerate(events):
            if ev is None:
                continue
            self.index.append(parsed_index[pos])
            # Identifier's validator already made these strings; the TypedDict only knows int | str.
            self.user_id.append(cast(str, ev["user_id"]))
            self.event_id.append(cast(str, ev["event_id"]))
            self.type_name.append(ev["type"])
            self.ts_ms.append(cast(float, ev["ts"]))
            self.amount.append(ev.get("amount"))
            self.category.append(ev.get("category"))

    def sort_by_index(self) -> None:
        order = sorted(range(len(self.index)), key=self.index.__getitem__)
        for name in self.__slots__:
            column = getattr(self, name)
            setattr(self, name, [column[j] for j in order])


def _check_columns(
    columns: _Columns,
    keys: Sequence[bytes | None] | None,
    type_map: Mapping[str, EventType],
    limits: DecodeLimits,
    record_ts_ms: np.ndarray | None,
    now_ms: float | None,
    rejections: list[Rejection],
) -> tuple[EventBatch, list[Rejection]]:
    """Batch-wide checks as numpy masks (time range, key, type, amount), then the batch."""
    n = len(columns.index)
    index = np.asarray(columns.index, dtype=np.int64)
    ts = np.asarray(columns.ts_ms, dtype=np.float64)
    user_ids = columns.user_id
    get_code = type_map.get
    codes = np.fromiter((get_code(t, -1) for t in columns.type_name), dtype=np.int8, count=n)
    amounts = columns.amount

    # Each check as a mask over all rows; a row fails at its first failing check.
    reference: np.ndarray | float = np.inf if now_ms is None else now_ms
    if limits.max_ahead_of_record_ms > 0 and record_ts_ms is not None:
        record_ts = np.asarray(record_ts_ms, dtype=np.float64)[index]
        # A record timestamp before min_ts_ms is no clock reading (unset, or a producer's
        # 0/1): the consumer's clock bounds that record alone.
        known = record_ts >= limits.min_ts_ms
        reference = np.where(known, np.minimum(record_ts, reference), reference)
    bad_ts = ~_ts_within_limits(ts, limits, reference)
    if keys is None:
        bad_key = np.zeros(n, dtype=bool)
    else:
        pairs = zip(columns.index, user_ids, strict=True)
        bad_key = np.fromiter(
            (bool(keys[i]) and keys[i] != u.encode() for i, u in pairs), dtype=bool, count=n
        )
    bad_key &= ~bad_ts
    unmapped = (codes == -1) & ~bad_ts & ~bad_key
    no_amount = np.fromiter((a is None for a in amounts), dtype=bool, count=n)
    money = (codes == int(EventType.PURCHASE)) | (codes == int(EventType.REFUND))
    bad_amount = no_amount & money & ~bad_ts & ~bad_key
    for row in np.flatnonzero(bad_ts).tolist():
        detail = ts_out_of_range_detail(float(ts[row]), limits)
        rejections.append(Rejection(int(index[row]), "ts_out_of_range", detail))
    for row in np.flatnonzero(bad_key).tolist():
        rejections.append(
            Rejection(int(index[row]), "key_mismatch", "Kafka key differs from user_id")
        )
    for row in np.flatnonzero(bad_amount).tolist():
        detail = f"amount: required for type {columns.type_name[row]!r}"
        rejections.append(Rejection(int(index[row]), "invalid_field", detail))
    ignored = index[unmapped].tolist()
    ignored_types = (
        [columns.type_name[r] for r in np.flatnonzero(unmapped).tolist()] if ignored else []
    )

    rows = np.flatnonzero(~(bad_ts | bad_key | unmapped | bad_amount))
    if len(rows) == n:  # the common case: nothing to drop, no copies
        batch_users, batch_events, batch_amounts, batch_categories = (
            user_ids,
            columns.event_id,
            amounts,
            columns.category,
        )
    else:
        keep = rows.tolist()
        batch_users = [user_ids[r] for r in keep]
        batch_events = [columns.event_id[r] for r in keep]
        batch_amounts = [amounts[r] for r in keep]
        batch_categories = [columns.category[r] for r in keep]
    batch = EventBatch(
        index=index[rows],
        user_id=batch_users,
        event_id=batch_events,
        type_code=codes[rows],
        ts_ms=ts[rows],
        amount=np.asarray([a or 0.0 for a in batch_amounts], dtype=np.float64),
        category=batch_categories,
        ignored=ignored,
        ignored_types=ignored_types,
    )
    rejections.sort(key=lambda r: r.index)
    return batch, rejections


_VALIDATION_CHUNK = 1024


def _lower_first(message: str) -> str:
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _validate(objects: list[Any]) -> tuple[list[Event | None], dict[int, str]]:
    """Validate many objects at once; on failure, keep the good ones and explain the bad.

    Chunks bound the cost of a bad record: only its chunk is validated a second time.
    """
    out: list[Event | None] = []
    errors: dict[int, str] = {}
    for start in range(0, len(objects), _VALIDATION_CHUNK):
        chunk = objects[start : start + _VALIDATION_CHUNK]
        try:
            out.extend(_EVENT_LIST.validate_python(chunk))
            continue
        except ValidationError as exc:
            bad = _details(exc.errors(include_url=False, include_input=False))
        good = iter(_EVENT_LIST.validate_python([o for p, o in enumerate(chunk) if p not in bad]))
        out.extend(None if pos in bad else next(good) for pos in range(len(chunk)))
        errors.update({start + pos: msg for pos, msg in bad.items()})
    return out, errors


def _details(errors: list[ErrorDetails]) -> dict[int, str]:
    """The dead-letter detail of each bad object (by position): its first bad field, why."""
    by_field: dict[int, dict[object, list[ErrorDetails]]] = {}
    for err in errors:
        pos, *where = err["loc"]
        assert isinstance(pos, int)
        by_field.setdefault(pos, {}).setdefault(where[0] if where else None, []).append(err)
    return {pos: _detail(next(iter(fields.values()))) for pos, fields in by_field.items()}


def _detail(errors: list[ErrorDetails]) -> str:
    """``field: message`` for the errors of one field (one per member of a union)."""
    where = errors[0]["loc"][1:]
    if len(where) < 2:  # no union: the field's one error
        return f"{'.'.join(map(str, where)) or 'event'}: {errors[0]['msg']}"
    if where[0] == "ts":  # the date-time member's message says more than int's and float's
        err = next((e for e in errors if e["loc"][2] not in ("int", "float")), errors[-1])
        return f"ts: {TS_EXPECTED}: {_lower_first(err['msg'])}"
    return f"{where[0]}: {_union_message(errors)}"


def _union_message(errors: list[ErrorDetails]) -> str:
    """Why no member of a union took the value. pydantic lists every member's error, and the
    first (``int`` of ``int | str``) is the wrong one for a string that is too long: the
    member of the value's type broke a rule of its own (``string_too_long``), the others
    only name their type (``int_type``). A value of no member's type (1.5, null) is told
    them all: ``Input should be a valid integer or a valid string``."""
    for err in errors:
        if not err["type"].endswith("_type"):
            return err["msg"]
    wanted = [err["msg"].removeprefix("Input should be ") for err in errors]
    return "Input should be " + " or ".join(dict.fromkeys(wanted))
