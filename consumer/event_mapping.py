"""Turn a shop's own export (CSV, TSV or JSON lines with its own field names) into events of
the contract, for ``streamseg produce --map`` / ``--format csv``.

The mapping is applied on the producing side, so the consumer's contract stays strict. For
each contract field (``event_id``, ``user_id``, ``type``, ``ts``, ``amount``, ``currency``,
``category``, ``item_id``, ``quantity``, ``rating``) the value is taken from

1. the source field named by ``--map FIELD=SOURCE``, else
2. a source field of the contract's own name, else
3. the constant of ``--default FIELD=VALUE``;

a missing or empty value leaves the field out. Source fields that are not mapped are not sent.
In a JSON object a SOURCE with dots (``customer.id``) names a nested field when the object has
no field of that exact name, and a number beyond float range (``1e400``) is read as its text.
Text values (every CSV cell) are typed as the contract wants them:

- ``amount``: a decimal number (``12.5``); ``quantity`` and ``rating``: whole numbers;
- ``ts``: with ``--ts-format`` (a `datetime.strptime` format; a time without a zone is UTC)
  epoch milliseconds; otherwise a value of digits only (optionally signed or with a
  fraction) is an epoch number in ``--ts-unit`` (``ms``, or ``s`` for seconds), and any other
  text is left as it is (ISO-8601 with a zone passes);
- everything else is sent as text.

A value that cannot be typed is sent as the value it was: text that is no number, or a number
that orjson cannot write as itself (an integer beyond 64 bits, a ``ts`` that becomes one in
milliseconds, infinity). The consumer dead-letters the record (``invalid_field``) with its
bytes and counts it: nothing is dropped here, and no value stops ``produce`` midway. Such values,
rows without a ``user_id``, ``type`` or ``ts`` (no source value, no default), a ``type`` that
is no text and a purchase or refund without ``amount`` are counted per field in
`MappingProblems` (the first one is logged at once, with its row number). Every other row is
then judged by the consumer's own decoder (`EventMapping.judged`: a ``ts`` out of range, a
value out of the contract's bounds, a type it ignores), so that the producer's summary says
what the consumer will refuse or ignore before it does, by the consumer's rules.

Without an ``event_id`` (mapped, present or defaulted), the record gets
``"h-" + 20 hex digits``: the BLAKE2b-80 hash of the source row (its fields and values, sorted,
as JSON), so the same row always gets the same id. Two identical rows are then one event: the
consumer counts the second in ``duplicates`` when it comes within the user's last
``pipeline.dedupe_window_events`` events. That window is short, so producing a file twice onto
the live topic is not idempotent; replay an import into a fresh topic and namespace instead.

The Kafka key is the event's ``user_id`` as UTF-8 text (none when it has no user id).
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import IO, AnyStr, Literal

import orjson

from consumer.exceptions import ConfigError
from model.events import (
    CANONICAL_TYPES,
    DEFAULT_ALIASES,
    MONEY_TYPES,
    DecodeLimits,
    EventType,
    decode_events,
    is_ts_text,
    resolve_type_map,
)

__all__ = [
    "CONTRACT_FIELDS",
    "EventMapping",
    "MappingProblems",
    "check_dialect",
    "load_json",
    "read_csv_rows",
    "read_json_rows",
]

log = logging.getLogger(__name__)

#: The fields of the event contract (model.events.Event), in the order they are written.
CONTRACT_FIELDS = (
    "event_id",
    "user_id",
    "type",
    "ts",
    "amount",
    "currency",
    "category",
    "item_id",
    "quantity",
    "rating",
)
#: Fields whose text is converted (the others are sent as they are).
_TYPED_FIELDS = frozenset({"ts", "amount", "quantity", "rating"})
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
#: Without these the consumer dead-letters the event (``invalid_field``).
_REQUIRED_FIELDS = ("user_id", "type", "ts")
#: The integers orjson writes (and the consumer reads): beyond them orjson.dumps raises.
_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1
TsUnit = Literal["ms", "s"]
Row = Mapping[str, object]


#: Records judged by the decoder at a time (`EventMapping.judged`).
_JUDGED_CHUNK = 2000
#: How many ignored type names the summary lists.
_IGNORED_TYPES_SHOWN = 5


@dataclass
class MappingProblems:
    """Rows whose event the consumer will refuse, counted per contract field while mapping,
    and rows it will ignore, counted per type name."""

    rows: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)  # field -> the first row's problem
    refused_rows: int = 0  # rows with at least one problem: dead-lettered
    ignored: Counter[str] = field(default_factory=Counter)  # type name -> rows
    _last_refused: int = 0  # the row last counted in refused_rows

    @property
    def refused(self) -> bool:
        """Whether the row being mapped has a problem already."""
        return self._last_refused == self.rows

    @property
    def applied_rows(self) -> int:
        """Rows the consumer will apply (or count as duplicates): neither refused nor ignored."""
        return self.rows - self.refused_rows - self.ignored.total()

    def note(self, name: str, problem: str) -> None:
        """Count a problem of the row being mapped (its field's first one is logged)."""
        if not self.refused:
            self.refused_rows += 1
            self._last_refused = self.rows
        self._count(self.rows, name, problem)

    def note_judged(self, row: int, name: str, problem: str) -> None:
        """Count a row mapped without a problem that the consumer's decoder refuses."""
        self.refused_rows += 1
        self._count(row, name, problem)

    def _count(self, row: int, name: str, problem: str) -> None:
        self.counts[name] += 1
        if name not in self.first:
            self.first[name] = f"row {row:,}: {problem}"
            log.warning(
                "row %s: %s; such rows are sent and dead-lettered by the consumer "
                "(counted in the summary)",
                f"{row:,}",
                problem,
            )

    def ignore(self, row: int, type_name: str) -> None:
        """Count a row of a type the consumer ignores (its first one is logged)."""
        if not self.ignored:
            log.warning(
                "row %s: type %r is %s; such rows are sent and ignored by the consumer "
                "(counted in the summary)",
                f"{row:,}",
                type_name,
                _UNKNOWN_TYPE,
            )
        self.ignored[type_name] += 1

    def summary(self) -> list[str]:
        """One line per field with problems, then one for the ignored types, for the end of
        ``streamseg produce``."""
        lines = [
            f"{name}: {count:,} of {self.rows:,} rows will be dead-lettered (first: "
            f"{self.first[name]})"
            for name, count in sorted(self.counts.items())
        ]
        if self.ignored:
            common = self.ignored.most_common(_IGNORED_TYPES_SHOWN)
            names = ", ".join(f"{name!r} {count:,}" for name, count in common)
            more = ", ..." if len(self.ignored) > len(common) else ""
            lines.append(
                f"type: {self.ignored.total():,} of {self.rows:,} rows will be ignored "
                f"({names}{more}: {_UNKNOWN_TYPE})"
            )
        return lines

    def outcome(self) -> str:
        """What becomes of the rows: ``1 of 6 rows will be applied (5 dead-lettered, 0
        ignored)``."""
        return (
            f"{self.applied_rows:,} of {self.rows:,} rows will be applied "
            f"({self.refused_rows:,} dead-lettered, {self.ignored.total():,} ignored)"
        )


_UNKNOWN_TYPE = f"neither {', '.join(CANONICAL_TYPES)} nor an alias in pipeline.type_aliases"


def _parse_pairs(items: Sequence[str], option: str) -> dict[str, str]:
    """``["FIELD=VALUE", ...]`` as a dict; the error names the option and the bad item."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"{option} {item!r}: expected FIELD=VALUE")
        if name not in CONTRACT_FIELDS:
            raise ConfigError(
                f"{option} {item!r}: {name!r} is not a field of the event contract "
                f"({', '.join(CONTRACT_FIELDS)})"
            )
        if name in pairs:
            raise ConfigError(f"{option} names {name!r} twice")
        pairs[name] = value
    return pairs


@dataclass(frozen=True)
class EventMapping:
    """How one source row becomes one contract event (see the module docstring)."""

    sources: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, str] = field(default_factory=dict)
    ts_format: str | None = None
    ts_unit: TsUnit = "ms"
    #: The consumer's type names (``pipeline.type_aliases`` resolved): the others it ignores.
    type_map: Mapping[str, EventType] = field(
        default_factory=lambda: resolve_type_map(DEFAULT_ALIASES)
    )
    #: The consumer's bounds (``ts`` range, how far ahead of its record an event may be).
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    problems: MappingProblems = field(default_factory=MappingProblems, compare=False)

    @classmethod
    def from_options(
        cls,
        maps: Sequence[str] = (),
        defaults: Sequence[str] = (),
        ts_format: str | None = None,
        ts_unit: TsUnit = "ms",
        type_aliases: Mapping[str, str] | None = None,
        limits: DecodeLimits | None = None,
    ) -> EventMapping:
        """From ``--map`` / ``--default`` items (``FIELD=VALUE``), validated. The
        consumer's ``type_aliases`` (default: `DEFAULT_ALIASES`, as its setting's) and
        ``limits`` (default: `DecodeLimits`'s) say which rows it will ignore or refuse."""
        sources = _parse_pairs(maps, "--map")
        empty = [name for name, source in sources.items() if not source]
        if empty:
            raise ConfigError(f"--map {empty[0]}= names no source field")
        if ts_format is not None:
            _check_time_format(ts_format)
        type_map = resolve_type_map(DEFAULT_ALIASES if type_aliases is None else type_aliases)
        return cls(
            sources,
            _parse_pairs(defaults, "--default"),
            ts_format,
            ts_unit,
            type_map,
            limits or DecodeLimits(),
        )

    @cached_property
    def money_types(self) -> frozenset[str]:
        """Type names whose events need an ``amount`` (purchase, refund and their aliases)."""
        money = {EventType[name.upper()] for name in MONEY_TYPES}
        return frozenset(name for name, code in self.type_map.items() if code in money)

    def check_columns(self, columns: Sequence[str]) -> None:
        """Refuse a CSV header's ``columns`` that lack a ``--map FIELD=SOURCE``'s SOURCE, or
        the column of a required field that is neither mapped nor defaulted: every row would
        lack FIELD, and be dead-lettered one by one. A header in another separator is told
        which ``--delimiter`` reads it."""
        header = ", ".join(columns) or "empty"
        for name, source in self.sources.items():
            if source not in columns:
                raise ConfigError(
                    f"--map {name}={source}: the file has no column {source!r} "
                    f"(its header: {header}){_delimiter_hint(columns, source)}"
                )
        for name in _REQUIRED_FIELDS:
            if name not in self.sources and name not in self.defaults and name not in columns:
                hint = _delimiter_hint(columns, name) or (
                    f"; say --map {name}=COLUMN or --default {name}=VALUE"
                )
                raise ConfigError(
                    f"{name}: the file has no column {name!r} (its header: {header}){hint}"
                )

    @cached_property
    def _plan(self) -> tuple[tuple[str, str, str | None], ...]:
        """(contract field, source field, default or None) for every contract field."""
        return tuple(
            (name, self.sources.get(name, name), self.defaults.get(name) or None)
            for name in CONTRACT_FIELDS
        )

    @cached_property
    def _parse_time(self) -> Callable[[str], int | str | None]:
        """Epoch ms of a text in ``ts_format`` (None when it does not match; the zone name
        when ``%Z`` matched one other than UTC or GMT), cached: exports repeat each second's
        text many times, and strptime is most of a row's cost."""
        fmt = self.ts_format or ""

        names_zone = "%Z" in fmt

        @lru_cache(maxsize=1 << 16)
        def parse(text: str) -> int | str | None:
            try:
                when = datetime.strptime(text, fmt)
            except ValueError:
                return None
            if names_zone:
                # %Z also matches this machine's own zone names (CET, EST...), but strptime
                # keeps no offset for them: read as UTC they would shift silently.
                zone = time.strptime(text, fmt).tm_zone
                if zone is not None and zone.upper() not in _UTC_NAMES:
                    return zone
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return round(when.timestamp() * 1000)

        return parse

    def event(self, row: Row) -> dict[str, object]:
        """The contract event for ``row`` (a CSV row's cells or a JSON object)."""
        self.problems.rows += 1
        out: dict[str, object] = {}
        get = row.get
        for name, source, default in self._plan:
            value = get(source)
            if value is None and "." in source and source not in row:
                value = _nested(row, source)
            if value is None or value == "":
                if default is None:
                    if name in _REQUIRED_FIELDS:
                        self.problems.note(
                            name, f"no {name} (source field {source!r} is missing or empty)"
                        )
                    continue
                value = default
            out[name] = self._typed(name, value) if name in _TYPED_FIELDS else value
        kind = out.get("type")
        if kind is not None and not isinstance(kind, str):
            self.problems.note("type", f"type {kind!r} is not text")
        elif "amount" not in out and kind in self.money_types:
            self.problems.note("amount", f"no amount for type {kind!r}")
        if "event_id" not in out:
            return {"event_id": row_hash(row), **out}
        return out

    def record(self, row: Row) -> tuple[bytes | None, bytes]:
        """The Kafka ``(key, value)`` for ``row``."""
        event = self.event(row)
        user = event.get("user_id")
        key = None if user is None else str(user).encode()
        return key, orjson.dumps(event)

    def as_is(self, record: tuple[bytes | None, bytes]) -> tuple[bytes | None, bytes]:
        """A record sent as it is, not mapped (JSON lines without a mapping; with one, a line
        that is no JSON object, keyless): a row like any other for the counts, judged by the
        consumer's decoder in `judged` (such a line usually as ``not_json`` or
        ``not_object``)."""
        self.problems.rows += 1
        return record

    def judged(
        self, records: Iterable[tuple[bytes | None, bytes]]
    ) -> Iterator[tuple[bytes | None, bytes]]:
        """``records`` (each `record` of the row just mapped) as they are, judged in chunks
        by the consumer's own decoder (`model.events.decode_events`, same type map and
        limits): what it refuses in a row mapped without a problem (a ``ts`` out of range, an
        amount below 0, a rating of 9, a user id over 256 characters) is counted like the
        mapping's own problems, and what it ignores (a type neither canonical nor aliased)
        as ignored. The mapping itself counts only what the decoder cannot see: values it
        could not type, fields missing from the source."""
        chunk: list[tuple[bytes | None, bytes]] = []
        rows: list[int] = []  # the row number of each record of the chunk
        for record in records:
            problems = self.problems
            # A row the mapping refused is counted already; any other, a JSON line sent as it
            # is included, goes as the consumer will read it.
            if not problems.refused:
                chunk.append(record)
                rows.append(problems.rows)
            if len(chunk) >= _JUDGED_CHUNK:
                self._judge(chunk, rows)
                chunk, rows = [], []
            yield record
        self._judge(chunk, rows)

    def _judge(self, chunk: list[tuple[bytes | None, bytes]], rows: list[int]) -> None:
        if not chunk:
            return
        batch, rejections = decode_events(
            [value for _, value in chunk],
            [key for key, _ in chunk],
            type_map=self.type_map,
            limits=self.limits,
            now_ms=time.time() * 1000.0,
        )
        for rejection in rejections:
            name = rejection.detail.split(":", 1)[0]
            if rejection.reason != "invalid_field" or name not in CONTRACT_FIELDS:
                name = "ts" if rejection.reason == "ts_out_of_range" else rejection.reason
            self.problems.note_judged(
                rows[rejection.index], name, f"{rejection.reason}: {rejection.detail}"
            )
        for index, type_name in zip(batch.ignored, batch.ignored_types, strict=True):
            self.problems.ignore(rows[index], type_name)

    def _typed(self, name: str, value: object) -> object:
        if name == "ts":
            return self._timestamp(value)
        if not isinstance(value, str):
            return value
        text = value.strip()
        if name == "amount":
            number: float | None = _float(text)
            problem = "is not a number" if number is None else "is not a finite number"
        else:  # quantity, rating
            number = _int(text)
            problem = "is not a whole number" if number is None else "is beyond 64 bits"
        if number is not None and _fits_json(number):
            return number
        self.problems.note(name, f"{name} {value!r} {problem}")
        return value  # sent as it was, for the consumer to judge

    def _timestamp(self, value: object) -> object:
        scale = 1000 if self.ts_unit == "s" else 1
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self._epoch_ms(value, value * scale)
        if not isinstance(value, str):
            return value
        text = value.strip()
        if self.ts_format is not None:
            ms = self._parse_time(text)
            if isinstance(ms, str):
                self.problems.note(
                    "ts",
                    f"ts {value!r}: the zone {ms!r} has no known offset (%Z reads only UTC "
                    "and GMT; for an offset such as +0100 use %z)",
                )
                return value  # sent as text: the consumer refuses it, nothing shifts
            if ms is not None:
                return ms
        elif _NUMBER.fullmatch(text):
            number = float(text) * scale
            return self._epoch_ms(value, int(number) if number.is_integer() else number)
        if not is_ts_text(value):
            expected = f"--ts-format {self.ts_format!r}" if self.ts_format else "a number"
            self.problems.note("ts", f"ts {value!r} is neither {expected} nor ISO-8601 with a zone")
        return value  # ISO-8601 with a zone passes as it is; the consumer judges the rest

    def _epoch_ms(self, value: object, ms: float) -> object:
        """``ms``, or ``value`` as it was (counted) when JSON cannot carry ``ms``: orjson
        raises on an integer beyond 64 bits and writes null for infinity."""
        if _fits_json(ms):
            return ms
        self.problems.note("ts", f"ts {value!r} is beyond 64 bits as epoch milliseconds")
        return value


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:  # also for more than 4300 digits
        return None


def _fits_json(number: float) -> bool:
    """Whether orjson writes ``number`` as itself: a finite float, a 64-bit integer."""
    if isinstance(number, float):
        return math.isfinite(number)
    return _JSON_INT_MIN <= number <= _JSON_INT_MAX


def _nested(row: Row, path: str) -> object:
    """The value at a dotted ``path`` (``customer.id``) in nested objects, or None."""
    value: object = row
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _check_time_format(fmt: str) -> None:
    """Refuse a ``--ts-format`` that cannot read back a time it wrote (a bad directive, or
    nothing that says when): otherwise every record would be dead-lettered."""
    sample = datetime(2024, 3, 1, 10, 20, 30, tzinfo=UTC)
    try:
        parsed = datetime.strptime(sample.strftime(fmt), fmt)
    except ValueError as exc:
        raise ConfigError(f"--ts-format {fmt!r} cannot be used: {exc}") from None
    if parsed.replace(tzinfo=UTC).date() != sample.date():
        raise ConfigError(f"--ts-format {fmt!r} does not name a date (needs %Y, %m and %d)")


def row_hash(row: Row) -> str:
    """``h-`` and the BLAKE2b-80 hex digest of the row as sorted JSON: a stable event id."""
    canonical = orjson.dumps(
        {str(k): v for k, v in row.items()}, option=orjson.OPT_SORT_KEYS, default=str
    )
    return "h-" + hashlib.blake2b(canonical, digest_size=10).hexdigest()


#: Separators a header read with another one shows inside its column names, and the option
#: that reads them.
_SEPARATORS = {
    ";": ("';'", "--delimiter ';'"),
    "\t": ("tabs", "--format tsv"),
    ",": ("','", "--delimiter ','"),
}


def _delimiter_hint(columns: Sequence[str], missing: str) -> str:
    """What to say when the ``missing`` column is inside a column name of the header, next
    to another separator: the file is separated by that one; "" otherwise."""
    for separator, (name, option) in _SEPARATORS.items():
        if any(missing in column.split(separator) for column in columns if separator in column):
            return f"; its columns look separated by {name}: say {option}"
    return ""


def check_dialect(delimiter: str | None, encoding: str) -> None:
    """Refuse a ``--delimiter`` that is not one character and an unknown ``--encoding``."""
    if delimiter is not None and len(delimiter) != 1:
        raise ConfigError(f"--delimiter {delimiter!r}: expected one character (tab: $'\\t')")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(
            f"--encoding {encoding!r}: unknown encoding (e.g. utf-8, latin-1, cp1252)"
        ) from None


#: The only zone names ``%Z`` reads (strptime also matches the local zone's, without offset).
_UTC_NAMES = frozenset({"UTC", "GMT"})

#: Longest input line ``produce`` reads, in bytes (characters for CSV and TSV). A Kafka
#: broker takes records of about 1 MiB by default, so no sendable line is refused; a file
#: without line breaks (a binary, /dev/zero) is stopped here instead of filling the memory.
MAX_LINE_BYTES = 16 * 2**20


class LineTooLongError(ValueError):
    """An input line longer than `MAX_LINE_BYTES`; the message names the line."""


def bounded_lines(stream: IO[AnyStr], limit: int | None = None) -> Iterator[AnyStr]:
    """The lines of ``stream`` (with their line endings), none longer than ``limit``
    (default `MAX_LINE_BYTES`).

    A UTF-8 byte-order mark before the first line is left out: it marks the file's encoding
    (editors on Windows write one), it is not part of the first record.

    Raises `LineTooLongError` naming the first longer line, having read at most ``limit`` + 1
    of it.
    """
    limit = MAX_LINE_BYTES if limit is None else limit
    empty = stream.read(0)  # b"" or "": the end of the stream
    lines = iter(functools.partial(stream.readline, limit + 1), empty)
    for number, line in enumerate(lines, 1):
        if len(line) > limit:
            unit = "bytes" if isinstance(line, bytes) else "characters"
            raise LineTooLongError(
                f"line {number:,} is longer than {limit:,} {unit} (a file without line breaks?)"
            )
        if number == 1:
            line = _without_bom(line)
        yield line


def _without_bom(line: AnyStr) -> AnyStr:
    if isinstance(line, bytes):
        return line.removeprefix(codecs.BOM_UTF8)
    return line.removeprefix("\ufeff")


def read_csv_rows(
    stream: IO[bytes],
    delimiter: str = ",",
    check_header: Callable[[Sequence[str]], None] | None = None,
    encoding: str = "utf-8",
) -> Iterator[dict[str, object]]:
    """Rows of a CSV (or TSV) byte stream with a header line, as {column: cell}.

    Text in ``encoding`` (UTF-8 by default; a byte-order mark is skipped by `bounded_lines`);
    bytes it cannot decode become U+FFFD, and the first line holding one is logged with a hint
    to ``--encoding``. Cells beyond the header are kept under ``_extra`` (they are in the row's
    hash, not in the event). ``check_header`` sees the header's columns before the first row
    (and may raise).
    """
    text = io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline="")
    # The csv module's own cell limit (128 Ki characters) would stop a file midway on one
    # long cell; lines are bounded anyway, and the consumer dead-letters what is too long.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    reader = csv.DictReader(
        _warn_on_undecodable(bounded_lines(text), encoding), delimiter=delimiter
    )
    header = list(reader.fieldnames or ())  # read now: line numbers count from the header
    if check_header is not None:
        check_header(header)
    line_after, warned = reader.line_num + 1, False
    for row in reader:
        # line_num also passes blank lines, which DictReader skips: only a cell that holds a
        # line break is a row spanning lines.
        spans = reader.line_num > line_after and any(
            "\n" in cell or "\r" in cell for cell in row.values() if isinstance(cell, str)
        )
        if spans and not warned:
            # Legal (a quoted cell may hold line breaks), but usually an unclosed quote
            # that swallowed the rows after it: say where, once.
            warned = True
            log.warning(
                "lines %d-%d are one row: a cell that starts with a quote runs on to the next "
                "closing quote, line breaks included (a cell such as '\"12 inch' without its "
                "closing quote takes the rows after it); check line %d",
                line_after,
                reader.line_num,
                line_after,
            )
        line_after = reader.line_num + 1
        extra = row.pop(None, None)
        cells: dict[str, object] = {k: v for k, v in row.items() if v is not None}
        if extra:
            cells["_extra"] = extra
        yield cells


def _warn_on_undecodable(lines: Iterable[str], encoding: str) -> Iterator[str]:
    """``lines``; the first that holds U+FFFD (bytes the encoding could not decode) is
    logged: a file in another encoding would otherwise be sent with its text garbled."""
    rest = iter(lines)
    for number, line in enumerate(rest, 1):
        yield line
        if "\ufffd" in line:
            log.warning(
                "line %d holds bytes that are not valid %s (sent as U+FFFD); if the file "
                "is in another encoding, say --encoding (e.g. latin-1, cp1252)",
                number,
                codecs.lookup(encoding).name,
            )
            break
    yield from rest  # after the first: no more checks


def read_json_rows(stream: IO[bytes]) -> Iterator[dict[str, object] | bytes]:
    """Objects of a JSON-lines byte stream (read by `load_json`); a line that is not a JSON
    object comes back as its bytes (to be sent as it is, and dead-lettered by the consumer)."""
    for raw in bounded_lines(stream):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            obj = load_json(line)
        except orjson.JSONDecodeError:
            yield line
            continue
        yield obj if isinstance(obj, dict) and _writable(line, obj) else line


#: orjson reads JSON nested up to 1024 levels but writes only 254 (a TypeError).
_WRITABLE_DEPTH = 254


def _writable(line: bytes, obj: object) -> bool:
    """Can orjson write ``obj`` again? Only a line with that many brackets may be too deep,
    so the common case costs two byte counts."""
    if line.count(b"{") + line.count(b"[") < _WRITABLE_DEPTH:
        return True
    try:
        orjson.dumps(obj, default=str)
    except TypeError:
        return False
    return True


def load_json(line: bytes) -> object:
    """``line`` as orjson reads it, except that a number beyond float range (``1e400``),
    which orjson refuses, is read as its JSON text: the rest of the line is still JSON, so
    a mapped field gets that text (counted where it cannot be typed) and a record its key.

    Raises orjson.JSONDecodeError for a line that is no JSON (for orjson).
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if "number is infinity" not in str(exc):
            raise
        refused = exc
    try:
        obj = json.loads(
            line, parse_float=_json_float, parse_int=_json_int, parse_constant=_no_constant
        )
        orjson.dumps(obj)  # what orjson refuses further on (a lone surrogate) stays refused
    except (ValueError, TypeError, RecursionError):
        raise refused from None
    return obj


def _json_float(text: str) -> float | str:
    number = float(text)
    return number if math.isfinite(number) else text


def _json_int(text: str) -> float | str:
    # As orjson reads it: beyond 64 bits a float, and beyond float range the text.
    if len(text) <= 20 and _JSON_INT_MIN <= (number := int(text)) <= _JSON_INT_MAX:
        return number
    return _json_float(text)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: orjson refuses them too
