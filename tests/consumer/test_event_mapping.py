"""Mapping a shop's own export to contract events (`consumer.event_mapping`): pure, no servers."""

from __future__ import annotations

import codecs
import io
import logging
import re
import time
from collections.abc import Iterator

import orjson
import pytest

from consumer.event_mapping import (
    EventMapping,
    check_dialect,
    read_csv_rows,
    read_json_rows,
    row_hash,
)
from consumer.exceptions import ConfigError
from consumer.produce import file_records, input_format
from model.events import DEFAULT_ALIASES, decode_events, resolve_type_map

# The column layout of a public multi-category store's export (event_time ... user_session).
STORE_CSV = (
    b"\xef\xbb\xbf"
    + "\n".join(
        [
            "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
            "user_session",
            "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,"
            "541312140,72d7",
            "2019-10-01 00:00:04 UTC,purchase,3900821,2053013552326770905,appliances.water_heater,"
            "aqua,33.20,554748717,9333",
            "2019-10-01 00:00:04 UTC,purchase,3900821,2053013552326770905,appliances.water_heater,"
            "aqua,33.20,554748717,9333",
            "2019-10-01 00:00:05 UTC,remove_from_cart,17200506,2053013559792632471,furniture.sofa,,"
            "543.10,519107250,5665",
            "",
        ]
    ).encode()
)
STORE_MAP = [
    "ts=event_time",
    "type=event_type",
    "amount=price",
    "category=category_code",
    "item_id=product_id",
]
STORE_TS = "%Y-%m-%d %H:%M:%S %Z"
TYPE_MAP = resolve_type_map(DEFAULT_ALIASES)


def _events(mapping: EventMapping, data: bytes) -> list[dict[str, object]]:
    return [orjson.loads(value) for _, value in file_records(io.BytesIO(data), "csv", mapping)]


def test_a_store_export_becomes_contract_events_keyed_by_user() -> None:
    mapping = EventMapping.from_options(STORE_MAP, ts_format=STORE_TS)
    records = list(file_records(io.BytesIO(STORE_CSV), "csv", mapping))
    assert [key for key, _ in records] == [b"541312140", b"554748717", b"554748717", b"519107250"]
    view, purchase, again, removal = (orjson.loads(value) for _, value in records)
    assert view == {
        "event_id": view["event_id"],
        "user_id": "541312140",
        "type": "view",
        "ts": 1_569_888_000_000,  # 2019-10-01T00:00:00Z
        "amount": 35.79,
        "item_id": "44600062",  # an empty category_code leaves category out
    }
    assert purchase["amount"] == 33.2 and purchase["category"] == "appliances.water_heater"
    assert purchase["ts"] == 1_569_888_004_000
    assert again["event_id"] == purchase["event_id"] != view["event_id"]  # identical rows
    assert removal["type"] == "remove_from_cart"  # the consumer ignores (or aliases) it
    # What the consumer's decoder makes of them: three events, one valid of an unmapped type.
    keys, values = [k for k, _ in records], [v for _, v in records]
    batch, rejections = decode_events(values, keys, type_map=TYPE_MAP)
    assert len(batch) == 3 and batch.ignored == [3] and rejections == []


def test_derived_event_ids_are_stable_and_depend_on_every_column() -> None:
    mapping = EventMapping.from_options(STORE_MAP, ts_format=STORE_TS)
    first, second = _events(mapping, STORE_CSV), _events(mapping, STORE_CSV)
    assert [e["event_id"] for e in first] == [e["event_id"] for e in second]
    row = {"user_id": "u1", "type": "view", "ts": "1", "user_session": "a"}
    assert row_hash(row) != row_hash({**row, "user_session": "b"})  # not a contract field
    assert row_hash(row) == row_hash(dict(reversed(row.items())))  # not the column order
    assert row_hash(row).startswith("h-") and len(row_hash(row)) == 22


def test_a_mapped_or_present_event_id_is_kept() -> None:
    rows = b"id,user_id,type,ts\n7,u1,view,1700000000000\n"
    (event,) = _events(EventMapping.from_options(["event_id=id"]), rows)
    assert event == {"event_id": "7", "user_id": "u1", "type": "view", "ts": 1_700_000_000_000}


@pytest.mark.parametrize(
    ("unit", "cell", "ts"),
    [
        ("ms", "1700000000123", 1_700_000_000_123),
        ("s", "1700000000", 1_700_000_000_000),
        ("s", "1700000000.5", 1_700_000_000_500),
        ("ms", "2024-03-01T10:00:00+01:00", "2024-03-01T10:00:00+01:00"),  # ISO passes as text
    ],
)
def test_timestamps_are_typed_by_unit(unit: str, cell: str, ts: object) -> None:
    mapping = EventMapping.from_options(ts_unit=unit)  # type: ignore[arg-type]
    (event,) = _events(mapping, f"user_id,type,ts\nu1,view,{cell}\n".encode())
    assert event["ts"] == ts


def test_a_naive_formatted_time_is_utc_and_an_offset_is_honoured() -> None:
    naive = EventMapping.from_options(ts_format="%d/%m/%Y %H:%M")
    (event,) = _events(naive, b"user_id,type,ts\nu1,view,01/10/2019 02:00\n")
    assert event["ts"] == 1_569_895_200_000
    zoned = EventMapping.from_options(ts_format="%Y-%m-%d %H:%M%z")
    (event,) = _events(zoned, b"user_id,type,ts\nu1,view,2019-10-01 04:00+0200\n")
    assert event["ts"] == 1_569_895_200_000


def test_values_that_cannot_be_typed_are_sent_as_text_for_the_consumer_to_reject() -> None:
    mapping = EventMapping.from_options(["amount=price"], ts_format=STORE_TS)
    data = (
        b"user_id,type,ts,price,quantity\n"
        b"u1,purchase,yesterday,abc,two\n"
        b"u2,purchase,2019-10-01 00:00:00 UTC,nan,1\n"
    )
    bad_ts, bad_amount = _events(mapping, data)
    assert (bad_ts["ts"], bad_ts["amount"], bad_ts["quantity"]) == ("yesterday", "abc", "two")
    assert bad_amount["amount"] == "nan" and bad_amount["quantity"] == 1
    batch, rejections = decode_events(
        [orjson.dumps(e) for e in (bad_ts, bad_amount)], type_map=TYPE_MAP
    )
    assert len(batch) == 0 and [r.reason for r in rejections] == ["invalid_field"] * 2
    # ... and counted, so that the producer says so before the consumer refuses them
    assert mapping.problems.counts == {"ts": 1, "amount": 2, "quantity": 1}
    assert mapping.problems.summary()[2] == (
        "ts: 1 of 2 rows will be dead-lettered (first: row 1: ts 'yesterday' is neither "
        "--ts-format '%Y-%m-%d %H:%M:%S %Z' nor ISO-8601 with a zone)"
    )


BEYOND_64_BITS = "99999999999999999999999999"


@pytest.mark.parametrize(
    ("column", "problem"),
    [
        ("ts", "is beyond 64 bits as epoch milliseconds"),
        ("quantity", "is beyond 64 bits"),
        ("rating", "is beyond 64 bits"),
    ],
)
def test_an_integer_beyond_64_bits_is_sent_as_text_and_counted(column: str, problem: str) -> None:
    """orjson cannot write such an int: produce stopped at that row with a TypeError."""
    mapping = EventMapping.from_options()
    big = {"user_id": "u1", "type": "review", "ts": "1700000000000", column: BEYOND_64_BITS}
    good = {**big, "user_id": "u2", column: "1700000000000" if column == "ts" else "5"}
    data = "".join(",".join(row) + "\n" for row in (big.keys(), big.values(), good.values()))
    records = list(file_records(io.BytesIO(data.encode()), "csv", mapping))
    assert [key for key, _ in records] == [b"u1", b"u2"]  # the rows after it are sent too
    assert orjson.loads(records[0][1])[column] == BEYOND_64_BITS
    assert mapping.problems.counts == {column: 1}
    assert mapping.problems.first[column] == f"row 1: {column} {BEYOND_64_BITS!r} {problem}"
    _, rejections = decode_events([records[0][1]], type_map=TYPE_MAP)
    assert [r.reason for r in rejections] == ["invalid_field"]


@pytest.mark.parametrize(
    ("unit", "ts"),
    [
        ("ms", "9" * 400),  # a float of it is infinity, which orjson writes as null
        ("s", "20000000000000000"),  # fits 64 bits in seconds, not in milliseconds
        ("ms", "-99999999999999999999"),
    ],
)
def test_an_epoch_number_json_cannot_carry_is_sent_as_text_and_counted(unit: str, ts: str) -> None:
    mapping = EventMapping.from_options(ts_unit=unit)  # type: ignore[arg-type]
    (event,) = _events(mapping, f"user_id,type,ts\nu1,view,{ts}\n".encode())
    assert event["ts"] == ts
    assert mapping.problems.counts == {"ts": 1}


def test_json_numbers_beyond_range_are_counted_and_the_line_is_still_mapped() -> None:
    """orjson refuses 1e400: the line was sent unmapped (or, first, taken for a CSV), and a
    JSON integer in seconds beyond 64 bits as milliseconds stopped produce."""
    data = (
        b'{"uid": "u1", "kind": "purchase", "when": 1700000000, "price": 1e400, "x": -1e999}\n'
        b'{"uid": "u2", "kind": "view", "when": 18446744073709551615}\n'
        b'{"uid": "u3", "kind": "view", "when": 1e306}\n'
        b'{"uid": "u4", "kind": "view", "when": 1700000000, "n": 18446744073709551616}\n'
    )
    mapping = EventMapping.from_options(
        ["user_id=uid", "type=kind", "ts=when", "amount=price"], ts_unit="s"
    )
    records = list(file_records(io.BytesIO(data), "jsonl", mapping, guessed=True))
    assert [key for key, _ in records] == [b"u1", b"u2", b"u3", b"u4"]
    first, second, third, fourth = (orjson.loads(value) for _, value in records)
    assert (first["amount"], first["ts"]) == ("1e400", 1_700_000_000_000)
    assert (second["ts"], third["ts"], fourth["ts"]) == (2**64 - 1, 1e306, 1_700_000_000_000)
    assert mapping.problems.counts == {"amount": 1, "ts": 2}


def test_json_lines_that_orjson_refuses_for_more_than_a_number_stay_unread() -> None:
    lines = [b'{"a": 1e400, "b": "\\ud800"}', b'{"a": 1e400, "b": NaN}', b'{"a": 1e400']
    assert list(read_json_rows(io.BytesIO(b"\n".join(lines)))) == lines


def test_a_json_line_nested_deeper_than_orjson_writes_passes_through_as_it_is() -> None:
    """300 levels: orjson reads it but cannot write it again, and produce --map stopped with
    'TypeError: Recursion limit reached' midway through the file."""
    deep = b'{"user_id": "u1", "type": "view", "ts": 1, "x": ' + b"[" * 300 + b"]" * 300 + b"}"
    fine = b'{"user_id": "u2", "type": "view", "ts": 2, "x": ' + b"[" * 10 + b"]" * 10 + b"}"
    mapping = EventMapping.from_options(["user_id=user_id"])
    records = list(file_records(io.BytesIO(deep + b"\n" + fine), "jsonl", mapping))
    assert records[0] == (None, deep)
    assert records[1][0] == b"u2"


def test_a_time_the_format_misses_is_counted_unless_the_consumer_reads_it_as_it_is() -> None:
    mapping = EventMapping.from_options(ts_format="%Y-%m-%d %H:%M:%S")  # no " %Z"
    data = (
        b"user_id,type,ts\n"
        b"u1,view,2019-10-01 00:00:00 UTC\n"  # the export's form: the format misses it
        b"u2,view,2019-10-01T00:00:00Z\n"  # ISO-8601 with a zone: sent, and accepted
        b"u3,view,1569888000\n"  # digits the format misses: refused as a string
    )
    events = _events(mapping, data)
    assert [e["ts"] for e in events] == [
        "2019-10-01 00:00:00 UTC",
        "2019-10-01T00:00:00Z",
        "1569888000",
    ]
    assert mapping.problems.counts == {"ts": 2}
    batch, _ = decode_events([orjson.dumps(e) for e in events], type_map=TYPE_MAP)
    assert batch.user_id == ["u2"]


def test_rows_without_a_required_field_are_counted() -> None:
    mapping = EventMapping.from_options(["user_id=customer"], defaults=["type=purchase"])
    data = b"customer,ts,amount\nc1,1700000000001,5\n,1700000000002,5\n,1700000000003,5\n"
    _events(mapping, data)
    assert mapping.problems.counts == {"user_id": 2}
    assert mapping.problems.first["user_id"] == (
        "row 2: no user_id (source field 'customer' is missing or empty)"
    )


def test_defaults_fill_missing_and_empty_values_only() -> None:
    mapping = EventMapping.from_options(defaults=["currency=EUR", "type=view"])
    data = b"user_id,type,ts,currency\nu1,,1,\nu2,cart,2,USD\n"
    first, second = _events(mapping, data)
    assert (first["type"], first["currency"]) == ("view", "EUR")
    assert (second["type"], second["currency"]) == ("cart", "USD")


def test_tsv_and_ragged_rows() -> None:
    rows = list(
        read_csv_rows(io.BytesIO(b"user_id\ttype\tts\nu1\tview\t1\textra\nu2\tview\n"), "\t")
    )
    assert rows == [
        {"user_id": "u1", "type": "view", "ts": "1", "_extra": ["extra"]},
        {"user_id": "u2", "type": "view"},  # a short row: the missing cells are left out
    ]


def test_a_mapped_column_the_header_lacks_is_named_before_any_row() -> None:
    mapping = EventMapping.from_options([*STORE_MAP[1:], "ts=event_tme"], ts_format=STORE_TS)
    with pytest.raises(ConfigError) as caught:
        _events(mapping, STORE_CSV)
    assert str(caught.value).startswith(
        "--map ts=event_tme: the file has no column 'event_tme' (its header: event_time,"
    )


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("csv", b"user_id,type,ts\nu1,view,1700000000\n"),
        ("jsonl", b'{"user_id": "u1", "type": "view", "ts": 1700000000}\n'),
    ],
)
def test_epoch_seconds_taken_for_milliseconds_are_counted_with_a_hint(
    fmt: str, data: bytes
) -> None:
    """Sent without --ts-unit s, every row was dead-lettered and produce said nothing."""
    mapping = EventMapping.from_options()
    list(file_records(io.BytesIO(data), fmt, mapping))
    assert mapping.problems.summary() == [
        "ts: 1 of 1 rows will be dead-lettered (first: row 1: ts_out_of_range: "
        "ts=1700000000 ms, looks like epoch seconds; ts is epoch milliseconds "
        "(produce --ts-unit s converts))"
    ]
    seconds = EventMapping.from_options(ts_unit="s")
    list(file_records(io.BytesIO(data), fmt, seconds))
    assert seconds.problems.summary() == []


def test_times_the_consumer_refuses_are_counted_as_it_judges_them() -> None:
    """Rows of 1899 and of 2099 were sent uncounted: the consumer dead-letters both (2099
    is more than a day ahead of the record's timestamp, which is when it is sent)."""
    mapping = EventMapping.from_options(ts_format="%Y-%m-%d %H:%M:%S")
    data = (
        b"user_id,type,ts\n"
        b"u1,view,2019-10-01 00:00:00\n"
        b"u2,view,1899-12-31 23:59:59\n"
        b"u3,view,2099-01-01 00:00:00\n"
        b"u4,view,1899-12-31T23:59:59Z\n"  # ISO-8601 text is sent as it is, and judged
        b"u5,view,2099-01-01T00:00:00+01:00\n"
        b"u6,view,2019-10-01T00:00:00Z\n"
    )
    records = list(file_records(io.BytesIO(data), "csv", mapping))
    batch, rejections = decode_events(
        [v for _, v in records],
        [k for k, _ in records],
        type_map=TYPE_MAP,
        now_ms=time.time() * 1000,
    )
    assert batch.user_id == ["u1", "u6"]
    assert [r.reason for r in rejections] == ["ts_out_of_range"] * 4
    assert mapping.problems.counts == {"ts": 4}
    assert mapping.problems.first["ts"] == ("row 2: ts_out_of_range: ts=-2208988801000 ms")


def test_types_the_consumer_ignores_are_counted_with_the_same_aliases() -> None:
    aliases = {"addtocart": "cart"}
    mapping = EventMapping.from_options(type_aliases=aliases)
    data = (
        b"user_id,type,ts\n"
        b"u1,view,1700000000000\n"
        b"u2,transaction,1700000000000\n"
        b"u3,addtocart,1700000000000\n"  # aliased: applied
        b"u4,transaction,1700000000000\n"
        b"u5,Purchase,1700000000000\n"
        b"u6,transaction,\n"  # no ts: dead-lettered before its type is looked at
    )
    records = list(file_records(io.BytesIO(data), "csv", mapping))
    batch, rejections = decode_events([v for _, v in records], type_map=resolve_type_map(aliases))
    assert (len(batch), len(batch.ignored), len(rejections)) == (2, 3, 1)
    assert mapping.problems.summary() == [
        "ts: 1 of 6 rows will be dead-lettered (first: row 6: no ts (source field 'ts' is "
        "missing or empty))",
        "type: 3 of 6 rows will be ignored ('transaction' 2, 'Purchase' 1: neither view, "
        "cart, purchase, refund, review, like, share nor an alias in pipeline.type_aliases)",
    ]


def test_a_type_that_is_no_text_is_counted_not_a_crash() -> None:
    """A JSON type of a list stopped produce with 'unhashable type'."""
    data = (
        b'{"user_id": "u1", "type": ["purchase"], "ts": 1700000000000}\n'
        b'{"user_id": "u2", "type": 2, "ts": 1700000000000}\n'
    )
    mapping = EventMapping.from_options()
    records = list(file_records(io.BytesIO(data), "jsonl", mapping))
    _, rejections = decode_events([v for _, v in records], type_map=TYPE_MAP)
    assert [r.reason for r in rejections] == ["invalid_field"] * 2
    assert mapping.problems.counts == {"type": 2}
    assert mapping.problems.first["type"] == "row 1: type ['purchase'] is not text"


@pytest.mark.parametrize(
    ("fmt", "header", "maps", "message"),
    [
        (
            "csv",
            "event_time;user_id;type",
            ["ts=event_time"],
            "--map ts=event_time: the file has no column 'event_time' (its header: "
            "event_time;user_id;type); its columns look separated by ';': say --delimiter ';'",
        ),
        (
            "csv",
            "user_id;type;ts",
            [],
            "user_id: the file has no column 'user_id' (its header: user_id;type;ts); its "
            "columns look separated by ';': say --delimiter ';'",
        ),
        (
            "csv",
            "user_id\ttype\tts",
            [],
            "user_id: the file has no column 'user_id' (its header: user_id\ttype\tts); its "
            "columns look separated by tabs: say --format tsv",
        ),
        (
            "tsv",
            "user_id,type,ts",
            [],
            "user_id: the file has no column 'user_id' (its header: user_id,type,ts); its "
            "columns look separated by ',': say --delimiter ','",
        ),
        (
            "csv",
            "customer;ts;type",  # ';' in the header, but not between the missing names
            [],
            "user_id: the file has no column 'user_id' (its header: customer;ts;type); say "
            "--map user_id=COLUMN or --default user_id=VALUE",
        ),
    ],
)
def test_a_header_that_lacks_a_column_is_refused_with_a_delimiter_hint(
    fmt: str, header: str, maps: list[str], message: str
) -> None:
    """A semicolon-separated export is one column when read with ','. Without --map every
    row lacked user_id, type and ts, and was sent to be dead-lettered."""
    mapping = EventMapping.from_options(maps)
    data = f"{header}\n{header.replace('_', '')}\n".encode()
    with pytest.raises(ConfigError) as caught:
        list(file_records(io.BytesIO(data), fmt, mapping))
    assert str(caught.value) == message


def test_json_lines_are_mapped_and_non_objects_pass_through() -> None:
    data = b'{"uid": 5, "kind": "view", "when": 1700000000}\n[1, 2]\nnot json\n\n'
    assert list(read_json_rows(io.BytesIO(data)))[1:] == [b"[1, 2]", b"not json"]
    mapping = EventMapping.from_options(["user_id=uid", "type=kind", "ts=when"], ts_unit="s")
    records = list(file_records(io.BytesIO(data), "jsonl", mapping))
    key, value = records[0]
    assert key == b"5"
    assert orjson.loads(value) == {
        "event_id": orjson.loads(value)["event_id"],
        "user_id": 5,
        "type": "view",
        "ts": 1_700_000_000_000,
    }
    assert records[1:] == [(None, b"[1, 2]"), (None, b"not json")]
    # They were sent unannounced and the summary said every row would be applied.
    problems = mapping.problems
    assert problems.rows == 3 and problems.refused_rows == 2
    assert problems.counts == {"not_object": 1, "not_json": 1}
    assert problems.first["not_json"].startswith("row 3: not_json")


def test_a_purchase_without_amount_is_counted_aliases_included() -> None:
    """What the consumer refuses most often in a dataset without prices."""
    mapping = EventMapping.from_options(type_aliases={"transaction": "purchase"})
    data = (
        b"user_id,type,ts,amount\n"
        b"u1,transaction,1700000000001,\n"
        b"u2,purchase,1700000000002,5\n"
        b"u3,view,1700000000003,\n"
    )
    _events(mapping, data)
    assert mapping.problems.counts == {"amount": 1}
    assert mapping.problems.first["amount"] == "row 1: no amount for type 'transaction'"


def test_dotted_sources_reach_into_nested_json_objects() -> None:
    data = (
        b'{"id": "e1", "customer": {"id": 7}, "event": {"name": "purchase"}, '
        b'"occurred_at": "2024-03-01T10:00:00Z", "order": {"total": {"amount": "12.5"}}, '
        b'"a.b": "literal"}\n'
        b'{"id": "e2", "customer": 7, "event": {"name": "view"}, "occurred_at": 1700000000000}\n'
    )
    mapping = EventMapping.from_options(
        [
            "event_id=id",
            "user_id=customer.id",
            "type=event.name",
            "ts=occurred_at",
            "amount=order.total.amount",
            "category=a.b",  # a field of that exact name comes first
        ]
    )
    first, second = (orjson.loads(v) for _, v in file_records(io.BytesIO(data), "jsonl", mapping))
    assert first == {
        "event_id": "e1",
        "user_id": 7,
        "type": "purchase",
        "ts": "2024-03-01T10:00:00Z",
        "amount": 12.5,
        "category": "literal",
    }
    assert "user_id" not in second  # "customer" is no object: no customer.id
    assert mapping.problems.counts == {"user_id": 1}


def test_a_csv_taken_for_json_lines_is_refused_when_mapped() -> None:
    """stdin (or a file not named .csv) is JSON lines unless --format says otherwise: with
    --map, a first line that is no JSON object is a CSV header, not a bad record."""
    mapping = EventMapping.from_options(["ts=event_time"])
    with pytest.raises(ConfigError, match=r"first line is not a JSON object.*--format csv"):
        list(file_records(io.BytesIO(STORE_CSV), "jsonl", mapping, guessed=True))
    data = b'not json\n{"user_id": "u1", "type": "view", "event_time": 1}\n'
    assert len(list(file_records(io.BytesIO(data), "jsonl", mapping))) == 2  # asked for


def test_a_semicolon_latin_1_export_is_read_with_its_dialect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = "user_id;type;ts;category\nu1;view;1700000000000;CR\u00c8ME BR\u00dbL\u00c9E\n".encode(
        "latin-1"
    )
    mapping = EventMapping.from_options()
    (event,) = (
        orjson.loads(v)
        for _, v in file_records(
            io.BytesIO(data), "csv", mapping, delimiter=";", encoding="latin-1"
        )
    )
    assert event["category"] == "CR\u00c8ME BR\u00dbL\u00c9E"
    assert not caplog.records
    # read as UTF-8 (the default) it is garbled: said once, with the line and the option
    with caplog.at_level(logging.WARNING, logger="consumer.event_mapping"):
        (garbled,) = (
            orjson.loads(v)
            for _, v in file_records(io.BytesIO(data), "csv", mapping, delimiter=";")
        )
    assert "\ufffd" in garbled["category"]
    assert [r.getMessage() for r in caplog.records] == [
        "line 2 holds bytes that are not valid utf-8 (sent as U+FFFD); if the file is in "
        "another encoding, say --encoding (e.g. latin-1, cp1252)"
    ]


@pytest.mark.parametrize(
    ("delimiter", "encoding", "message"),
    [
        (";;", "utf-8", "--delimiter ';;': expected one character"),
        (None, "latin-9x", "--encoding 'latin-9x': unknown encoding"),
    ],
)
def test_a_bad_dialect_is_named(delimiter: str | None, encoding: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_dialect(delimiter, encoding)


@pytest.mark.parametrize(
    ("maps", "defaults", "message"),
    [
        (
            ["price=amount"],
            [],
            "--map 'price=amount': 'price' is not a field of the event contract",
        ),
        (["ts"], [], "--map 'ts': expected FIELD=VALUE"),
        (["ts="], [], "--map ts= names no source field"),
        (["ts=a", "ts=b"], [], "--map names 'ts' twice"),
        ([], ["colour=red"], "--default 'colour=red': 'colour' is not a field"),
    ],
)
def test_a_bad_option_is_named(maps: list[str], defaults: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        EventMapping.from_options(maps, defaults)


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%Y-%m-%d %Q", "--ts-format '%Y-%m-%d %Q' cannot be used: 'Q' is a bad directive"),
        ("%H:%M:%S", "--ts-format '%H:%M:%S' does not name a date"),
    ],
)
def test_a_time_format_that_cannot_work_is_refused(fmt: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        EventMapping.from_options(ts_format=fmt)
    for usable in ("%Y-%m-%d %H:%M:%S %Z", "%d/%m/%Y", "%Y-%m-%dT%H:%M:%S%z"):
        EventMapping.from_options(ts_format=usable)


@pytest.mark.parametrize(
    ("choice", "file", "fmt"),
    [
        ("auto", "2019-Oct.csv", "csv"),
        ("auto", "export.CSV.gz", "csv"),
        ("auto", "events.tsv", "tsv"),
        ("auto", "events.jsonl", "jsonl"),
        ("auto", "-", "jsonl"),
        ("csv", "-", "csv"),
    ],
)
def test_the_format_follows_the_file_name(choice: str, file: str, fmt: str) -> None:
    assert input_format(choice, file) == fmt


@pytest.fixture
def berlin_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process in a zone whose names strptime's %Z matches (CET, CEST)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_local_zone_name_is_counted_and_sent_as_text_not_read_as_utc(berlin_time: None) -> None:
    """strptime's %Z matches the machine's own zone names but keeps no offset: 00:00 CET was
    sent as 00:00 UTC, an hour off, without a word."""
    mapping = EventMapping.from_options(ts_format=STORE_TS)
    cet, utc = _events(
        mapping,
        b"user_id,type,ts\nu1,view,2024-01-01 00:00:00 CET\nu1,view,2024-01-01 00:00:00 UTC\n",
    )
    assert cet["ts"] == "2024-01-01 00:00:00 CET"
    assert utc["ts"] == 1_704_067_200_000
    assert "the zone 'CET' has no known offset" in mapping.problems.first["ts"]
    assert mapping.problems.counts["ts"] == 1


def test_a_byte_order_mark_before_json_lines_is_left_out() -> None:
    line = b'{"event_id":"j1","user_id":"u1","type":"view","ts":1700000000000}'
    data = codecs.BOM_UTF8 + line + b"\n" + codecs.BOM_UTF8 + line + b"\n"
    # Only before the first line: elsewhere the bytes are the record's own.
    assert list(file_records(io.BytesIO(data), "jsonl", None)) == [
        (b"u1", line),
        (None, codecs.BOM_UTF8 + line),
    ]
    mapping = EventMapping.from_options([])
    records = list(file_records(io.BytesIO(data), "jsonl", mapping, guessed=True))
    assert orjson.loads(records[0][1])["event_id"] == "j1"


def test_a_cell_longer_than_the_csv_modules_limit_is_read() -> None:
    long = "y" * 140_000  # the csv module stops at 131,072 characters by default
    data = f"user_id,type,ts,category\nu1,view,1,x\nu2,view,1,{long}\nu3,view,1,z\n".encode()
    rows = list(read_csv_rows(io.BytesIO(data)))
    assert [row["category"] for row in rows] == ["x", long, "z"]


def test_a_row_that_spans_lines_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    """An unclosed quote takes the rows after it into its cell: legal CSV, so the rows are
    read as the format says, but the lines it took are logged."""
    data = (
        b"user_id,type,ts,category\n"
        b'u1,view,1,"12 inch tablets\n'
        b"u2,view,1,books\n"
        b'u3,view,1,24" monitors\n'
        b"u4,view,1,toys\n"
        b'u5,view,1,"two\nlines"\n'
    )
    with caplog.at_level(logging.WARNING, logger="consumer.event_mapping"):
        rows = list(read_csv_rows(io.BytesIO(data)))
    assert [row["user_id"] for row in rows] == ["u1", "u4", "u5"]
    assert rows[0]["category"] == "12 inch tablets\nu2,view,1,books\nu3,view,1,24 monitors"
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("lines 2-4 are one row") and warning.endswith("check line 2")


def test_blank_lines_between_csv_rows_are_no_row_spanning_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = b"user_id,type,ts\nu1,view,1\n\n\nu2,view,1\n"
    with caplog.at_level(logging.WARNING, logger="consumer.event_mapping"):
        rows = list(read_csv_rows(io.BytesIO(data)))
    assert [row["user_id"] for row in rows] == ["u1", "u2"]
    assert not caplog.records
