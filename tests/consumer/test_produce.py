"""Producing: the JSON-lines format round-trips any record byte for byte, and `streamseg generate`
/ `streamseg produce` put exactly the expected records on a real topic, accounting for failures."""

from __future__ import annotations

import gc
import gzip
import io
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.cli import main
from consumer.exceptions import ServerUnavailableError
from consumer.produce import (
    JsonLinesFormatError,
    produce_records,
    read_jsonl_records,
    record_to_line,
)
from consumer.redis_keys import KeyLayout
from consumer.settings import KafkaSettings
from consumer.state_store import StateStore
from consumer.synthetic import EventGenerator, GeneratorConfig
from tests.consumer.pipeline_support import drain, read_state, settings_for

Record = tuple[bytes | None, bytes]


def jsonl(records: list[Record]) -> bytes:
    return b"".join(record_to_line(k, v) + b"\n" for k, v in records)


def read_back(data: bytes, key_field: str = "user_id") -> list[Record]:
    return list(read_jsonl_records(io.BytesIO(data), key_field))


# -------------------------------------------------------------------- JSON lines, no server
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.none() | st.binary(max_size=40), st.binary(max_size=200)), max_size=8))
def test_any_records_round_trip_through_json_lines(records: list[Record]) -> None:
    assert read_back(jsonl(records)) == records


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.none() | st.text(max_size=20), st.text(max_size=100)), max_size=8))
def test_any_text_records_round_trip_through_json_lines(
    records: list[tuple[str | None, str]],
) -> None:
    as_bytes = [(None if k is None else k.encode(), v.encode()) for k, v in records]
    assert read_back(jsonl(as_bytes)) == as_bytes


def test_generated_stream_round_trips_and_valid_events_are_written_as_themselves() -> None:
    gen = EventGenerator(
        GeneratorConfig(users=100, days=7, seed=8, malformed_share=0.2, hostile_id_share=0.3)
    )
    records = list(gen.records())
    lines = jsonl(records).splitlines()
    assert read_back(b"\n".join(lines)) == records
    verbatim = sum(line == value for line, (_, value) in zip(lines, records, strict=True))
    # Valid events and the malformed records that are single UTF-8 lines keyed by their user
    # id are written as themselves; the rest (raw bytes, wrong keys) are wrapped.
    assert gen.stats.valid <= verbatim < len(records)


def test_a_hand_written_file_is_keyed_by_its_user_id_or_key_field() -> None:
    data = (
        b'{"user_id": "alice", "type": "view"}\r\n'
        b"\n"
        b'{"user_id": 42, "customer": "c-1"}\n'
        b"not json at all\n"
        b'["an", "array"]\n'
        b'{"customer": "c-2"}'  # no final newline
    )
    assert read_back(data) == [
        (b"alice", b'{"user_id": "alice", "type": "view"}'),
        (b"42", b'{"user_id": 42, "customer": "c-1"}'),
        (None, b"not json at all"),
        (None, b'["an", "array"]'),
        (None, b'{"customer": "c-2"}'),
    ]
    assert [k for k, _ in read_back(data, key_field="customer")] == [
        None, b"c-1", None, None, b"c-2"
    ]  # fmt: skip


def test_a_number_beyond_float_range_leaves_the_key_readable() -> None:
    """orjson refuses 1e400, so the line went without its key; the consumer skips such a
    number in a field it does not know and applies the event, on whatever partition."""
    line = b'{"user_id": "alice", "type": "view", "ts": 1700000000000, "score": 1e400}'
    huge = b'{"user_id": "bob", "ts": 99999999999999999999999999}'  # read as a float
    assert read_back(line + b"\n" + huge) == [(b"alice", line), (b"bob", huge)]
    assert record_to_line(b"alice", line) == line


def test_a_broken_raw_wrapper_names_its_line() -> None:
    data = b'{"user_id": "a"}\n{"_raw_b64": "not base64!", "_key_b64": null}\n'
    with pytest.raises(JsonLinesFormatError, match="line 2"):
        read_back(data)


def test_an_unreachable_broker_is_a_clear_error() -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    with pytest.raises(ServerUnavailableError, match=r"127\.0\.0\.1:9"):
        produce_records([(None, b"x")], kafka, "t", connect_timeout=1.0)


# -------------------------------------------------------------------- against the real broker
def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Record]:
    """Every record of partition 0 of ``topic``, in order; waits for ``expected`` of them and
    then a little longer, so that extra records would be seen too."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 50 * 1024 * 1024,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10_000, timeout=0.5)
            for msg in batch:
                assert msg.error() is None, msg.error()
                value = msg.value()
                out.append((msg.key(), b"" if value is None else value))
            if len(out) >= expected:
                quiet_until = quiet_until or time.monotonic() + 1.0
                if time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close()
    return out


@pytest.mark.kafka
def test_generate_puts_the_stream_on_the_topic_and_in_the_file(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    topic = new_topic()
    out, planted = tmp_path / "events.jsonl", tmp_path / "planted.json"
    code = main(
        [
            "generate", "--users", "150", "--days", "10", "--seed", "4",
            "--malformed-share", "0.05", "--topic", topic, "--out", str(out),
            "--planted", str(planted), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    expected = list(
        EventGenerator(GeneratorConfig(users=150, days=10, seed=4, malformed_share=0.05)).records()
    )
    assert len(expected) > 3000
    assert consume_all(kafka_bootstrap, topic, len(expected)) == expected
    assert read_back(out.read_bytes()) == expected
    assert planted.exists()
    assert f"produced {len(expected):,} records" in capsys.readouterr().err


@pytest.mark.kafka
def test_produce_replays_a_generated_file_byte_for_byte(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    out = tmp_path / "events.jsonl"
    args = ["generate", "--users", "80", "--days", "7", "--seed", "9", "--no-progress"]
    assert main([*args, "--malformed-share", "0.15", "--out", str(out), "--no-kafka"]) == 0
    expected = read_back(out.read_bytes())
    assert any(k is None for k, _ in expected)  # unkeyed malformed records are there too

    topic = new_topic()
    assert main(["produce", str(out), "--topic", topic, "--no-progress"]) == 0
    assert consume_all(kafka_bootstrap, topic, len(expected)) == expected


@pytest.mark.kafka
def test_produce_reads_stdin_and_keys_by_the_chosen_field(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    lines = [b'{"customer": "c-%d", "n": %d}' % (i % 3, i) for i in range(50)]
    stdin = io.TextIOWrapper(io.BytesIO(b"\n".join(lines) + b"\n"))
    monkeypatch.setattr("sys.stdin", stdin)
    topic = new_topic()
    assert main(["produce", "-", "--topic", topic, "--key-field", "customer", "--no-progress"]) == 0
    got = consume_all(kafka_bootstrap, topic, 50)
    assert got == [(b"c-%d" % (i % 3), line) for i, line in enumerate(lines)]


@pytest.mark.kafka
def test_delivery_failures_are_counted_not_dropped(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic()
    records: list[Record] = [(b"k", b"small-%d" % i) for i in range(20)]
    records.insert(7, (b"k", b"x" * 3_000_000))  # larger than the producer's message.max.bytes
    stats = produce_records(records, KafkaSettings(bootstrap_servers=kafka_bootstrap), topic)
    assert stats.sent == 21
    assert stats.failed == 1 and stats.delivered == 20 and not stats.ok
    assert stats.errors == {"MSG_SIZE_TOO_LARGE": 1}
    assert "1 failed" in stats.summary()
    assert consume_all(kafka_bootstrap, topic, 20) == [r for r in records if len(r[1]) < 100]


def live_producers() -> int:
    gc.collect()
    return sum(isinstance(o, Producer) for o in gc.get_objects())


@pytest.mark.kafka
def test_a_refused_record_leaves_no_producer_behind(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """A producer kept alive past its run (here by an exception confluent-kafka never frees)
    keeps connecting to the broker for the rest of the process, and logs when it is gone."""
    topic = new_topic()
    records: list[Record] = [(b"k", b"x" * 3_000_000), (b"k", b"small")]
    before = live_producers()
    stats = produce_records(records, KafkaSettings(bootstrap_servers=kafka_bootstrap), topic)
    assert stats.failed == 1 and stats.delivered == 1
    assert live_producers() == before


@pytest.mark.kafka
def test_rate_limit_spreads_records_over_time(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic()
    records: list[Record] = [(None, b"%d" % i) for i in range(600)]
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    started = time.monotonic()
    stats = produce_records(records, kafka, topic, rate=1000.0)
    elapsed = time.monotonic() - started
    assert stats.ok and stats.delivered == 600
    # 600 records at 1000/s, of which a burst of 100 goes at once: at least 0.5 s.
    assert 0.45 < elapsed < 10.0


@pytest.mark.kafka
@pytest.mark.redis
def test_a_csv_export_is_mapped_produced_and_accounted_for_by_the_consumer(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store's own CSV (gzipped, its own column names and time format) through `produce
    --map` and the real pipeline: every row ends applied, duplicate, ignored or dead-lettered."""
    header = "event_time,event_type,product_id,category_code,price,user_id,user_session"
    rows = [
        "2019-10-01 00:00:00 UTC,view,44600062,,35.79,541312140,s1",
        "2019-10-01 00:01:00 UTC,cart,3900821,appliances.kettle,33.20,554748717,s2",
        "2019-10-01 00:02:00 UTC,purchase,3900821,appliances.kettle,33.20,554748717,s2",
        "2019-10-01 00:02:00 UTC,purchase,3900821,appliances.kettle,33.20,554748717,s2",  # twice
        "2019-10-01 00:03:00 UTC,remove_from_cart,17200506,furniture.sofa,543.10,519107250,s3",
        "2019-10-01 00:04:00 UTC,purchase,17200506,furniture.sofa,not-a-price,519107250,s3",
        "01/10/2019,view,17200506,furniture.sofa,543.10,519107250,s3",  # another time format
        "1899-12-31 23:59:59 UTC,view,17200506,furniture.sofa,543.10,519107250,s3",
        "2099-10-01 00:00:00 UTC,view,17200506,furniture.sofa,543.10,519107250,s3",  # ahead
    ]
    path = tmp_path / "2019-Oct.csv.gz"
    path.write_bytes(gzip.compress("\n".join([header, *rows, ""]).encode()))
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    topic = new_topic()
    mapping = [
        "--map", "ts=event_time", "--map", "type=event_type", "--map", "amount=price",
        "--map", "category=category_code", "--map", "item_id=product_id",
        "--ts-format", "%Y-%m-%d %H:%M:%S %Z",
    ]  # fmt: skip
    assert main(["produce", str(path), "--topic", topic, "--no-progress", *mapping]) == 0
    said = capsys.readouterr().err
    # what produce says the consumer will do, it does (the counters below)
    assert "amount: 1 of 9 rows will be dead-lettered (first: row 6: amount 'not-a-price'" in said
    assert "ts: 3 of 9 rows will be dead-lettered (first: row 7: ts '01/10/2019'" in said
    assert "type: 1 of 9 rows will be ignored ('remove_from_cart' 1: neither view," in said

    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    pipeline_log = logging.getLogger("consumer.pipeline")
    pipeline_log.addHandler(caplog.handler)  # main() above replaced the root's handlers
    try:
        drain(settings, expected_records=len(rows))
    finally:
        pipeline_log.removeHandler(caplog.handler)
    # the export's own type is named once, with the setting that would map it
    assert [r.getMessage() for r in caplog.records if "ignoring events" in r.getMessage()] == [
        "ignoring events of type 'remove_from_cart': neither view, cart, purchase, refund, "
        "review, like, share nor an alias in pipeline.type_aliases (counted as ignored)"
    ]
    counters = StateStore(redis_client, KeyLayout(namespace)).read_counters()
    assert counters["records"] == 9
    assert (counters["applied"], counters["duplicates"], counters["ignored"]) == (3, 1, 1)
    assert counters["dead_lettered"] == 4
    assert counters["dead_letter.invalid_field"] == counters["dead_letter.ts_out_of_range"] == 2
    state = read_state(redis_client, namespace, ["554748717"])["554748717"]
    assert state["purchases"] == pytest.approx(1.0, rel=1e-3)  # the repeated row counted once


EPOCH_SECONDS_CSV = "user_id,type,ts\n" + "".join(
    f"u{i},view,{1_700_000_000 + i}\n" for i in range(3)
)


def test_a_dry_run_reads_and_checks_every_row_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """There was no way to see what the consumer will refuse but to send the file."""
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")  # nobody there
    path = tmp_path / "export.csv"
    path.write_text(EPOCH_SECONDS_CSV)
    # Status 1: the consumer would apply none of them (a script can gate the real run on it).
    assert main(["produce", str(path), "--dry-run", "--no-progress"]) == 1
    said = capsys.readouterr().err
    assert "all 3 rows would be sent and will be dead-lettered by the consumer" in said
    assert "dry run: read 3 records of export.csv; nothing was sent to 'events'" in said
    assert (
        "ts: 3 of 3 rows will be dead-lettered (first: row 1: ts_out_of_range: "
        "ts=1700000000 ms, looks like epoch seconds; ts is epoch milliseconds "
        "(produce --ts-unit s converts))"
    ) in said
    assert "0 of 3 rows will be applied (3 dead-lettered, 0 ignored)" in said
    assert main(["produce", str(path), "--dry-run", "--no-progress", "--ts-unit", "s"]) == 0
    said = capsys.readouterr().err
    assert "dead-lettered (first" not in said
    assert "3 of 3 rows will be applied (0 dead-lettered, 0 ignored)" in said


def test_a_dry_run_counts_values_out_of_the_contracts_range_as_the_consumer_judges_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Values that map cleanly but that the contract refuses (an amount below 0, a rating of
    9, a user id over 256 characters) passed the dry run as clean, and the consumer then
    dead-lettered every row. A row of an ignored type that is refused counts as refused."""
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")  # nobody there
    path = tmp_path / "export.csv"
    long_user = "u" * 300
    path.write_text(
        "user_id,type,ts,amount,quantity,rating\n"
        "u1,purchase,2026-11-01T10:00:00Z,-5,1,\n"
        "u2,purchase,2026-11-01T10:00:00Z,2e12,1,\n"
        "u3,purchase,2026-11-01T10:00:00Z,10,0,\n"
        "u4,review,2026-11-01T10:00:00Z,,,9\n"
        f"{long_user},view,2026-11-01T10:00:00Z,,,\n"
        "u6,wishlist,2026-11-01T10:00:00Z,-3,,\n"
        "u7,wishlist,2026-11-01T10:00:00Z,,,\n"
        "u8,view,2026-11-01T10:00:00Z,,,\n"
    )
    assert main(["produce", str(path), "--dry-run", "--no-progress"]) == 0
    said = capsys.readouterr().err
    assert (
        "amount: 3 of 8 rows will be dead-lettered (first: row 1: invalid_field: amount: "
        "Input should be greater than or equal to 0)"
    ) in said
    assert "quantity: 1 of 8 rows will be dead-lettered (first: row 3: invalid_field" in said
    assert "rating: 1 of 8 rows will be dead-lettered (first: row 4: invalid_field" in said
    assert "user_id: 1 of 8 rows will be dead-lettered (first: row 5: invalid_field" in said
    assert "type: 1 of 8 rows will be ignored ('wishlist' 1:" in said
    assert "1 of 8 rows will be applied (6 dead-lettered, 1 ignored)" in said


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("rows", "said"),
    [
        (
            EPOCH_SECONDS_CSV,
            "all 3 rows were sent and will be dead-lettered by the consumer",
        ),
        (
            "user_id,type,ts\nu1,transaction,1700000000000\nu2,view,1\n",
            "all 2 rows were sent and none will be applied: 1 will be dead-lettered and 1 "
            "ignored by the consumer",
        ),
    ],
)
def test_produce_fails_when_no_row_it_sent_will_be_applied(
    rows: str,
    said: str,
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every row of a file in epoch seconds went to the live topic, with exit status 0."""
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    path = tmp_path / "export.csv"
    path.write_text(rows)
    topic = new_topic()
    assert main(["produce", str(path), "--topic", topic, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert said in err
    assert "check a file with --dry-run first" in err
    assert len(consume_all(kafka_bootstrap, topic, rows.count("\n") - 1)) == rows.count("\n") - 1


@pytest.mark.kafka
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_line_longer_than_any_record_stops_the_file_after_what_was_sent(
    fmt: str,
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file without line breaks was read whole into memory (4.7 GB in 6 s of /dev/zero)."""
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setattr("consumer.event_mapping.MAX_LINE_BYTES", 1000)
    good = [f'{{"user_id":"u{i}","type":"view","ts":{1_700_000_000_000 + i}}}' for i in range(3)]
    if fmt == "csv":
        good = ["user_id,type,ts", *(f"u{i},view,{1_700_000_000_000 + i}" for i in range(3))]
    path = tmp_path / f"export.{fmt}"
    path.write_text("\n".join([*good, "x" * 5000, *good[-2:]]) + "\n")
    topic = new_topic()
    assert main(["produce", str(path), "--topic", topic, "--no-progress"]) == 2
    err = capsys.readouterr().err
    line = len(good) + 1
    assert f"cannot read export.{fmt} after 3 records: line {line} is longer than 1,000" in err
    assert len(consume_all(kafka_bootstrap, topic, 3)) == 3


@pytest.mark.kafka
def test_a_truncated_gzip_file_is_an_error_naming_it_after_what_was_sent(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    rows = "".join(f"u{i},view,{1_700_000_000_000 + i}\n" for i in range(20_000))
    whole = gzip.compress(("user_id,type,ts\n" + rows).encode())
    path = tmp_path / "export.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    topic = new_topic()
    assert main(["produce", str(path), "--topic", topic, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "streamseg: error: cannot read export.csv.gz after " in err
    sent = int(err.split(" after ")[1].split(" records")[0].replace(",", ""))
    assert 0 < sent < 20_000
    assert len(consume_all(kafka_bootstrap, topic, sent)) == sent  # what was read, was sent


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["generate", "--activity", "nan"],
            "argument --activity: 'nan' must be a finite number > 0",
        ),
        (["generate", "--events-per-user", "inf"], "argument --events-per-user: 'inf' must be"),
        (["tune-k", "--sample", "-5"], "argument --sample: '-5' must be >= 1"),
        (["run", "--max-events", "-5"], "argument --max-events: '-5' must be >= 0"),
        (["run", "--idle-exit-seconds", "nan"], "argument --idle-exit-seconds: 'nan' must be"),
        (["train", "--max-seconds", "-1"], "argument --max-seconds: '-1' must be >= 0"),
        (["run", "--metrics-port", "70000"], "argument --metrics-port: '70000' must be 0-65535"),
        (["generate", "--seed", "-1"], "argument --seed: '-1' must be 0..4294967295"),
        (["replay", "--seed", str(2**32)], "argument --seed: '4294967296' must be 0..4294967295"),
        (["replay", "--max-events", "-1"], "argument --max-events: '-1' must be >= 0"),
    ],
)
def test_a_size_that_is_not_one_is_refused_by_the_parser(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """These reached the code as NaN, infinity or a negative count and ended in a traceback."""
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("command", ["produce", "generate"])
@pytest.mark.parametrize("rate", ["-1", "nan"])
def test_a_rate_that_is_not_a_limit_is_refused(
    command: str, rate: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [command, "-"] if command == "produce" else [command]
    with pytest.raises(SystemExit) as caught:
        main([*args, "--rate", rate])
    assert caught.value.code == 2
    assert f"argument --rate: {rate!r} must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--delimiter", ";"], "--delimiter and --encoding apply to CSV and TSV input"),
        (["--format", "csv", "--encoding", "latin-9x"], "--encoding 'latin-9x': unknown"),
    ],
)
def test_a_dialect_that_cannot_apply_is_refused_before_reading(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["produce", "-", *options]) == 2
    assert f"streamseg: error: {message}" in capsys.readouterr().err


def test_lines_sent_as_they_are_to_the_events_topic_are_judged_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV piped in without --format csv went out line by line as junk, with status 0 and
    nothing said; every line was dead-lettered by the consumer."""
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")  # nobody there
    csv_text = "user_id,type,ts\nu1,view,1700000000000\nu2,view,1700000000000\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(csv_text.encode())))
    assert main(["produce", "-", "--dry-run", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "not_json: 3 of 3 rows will be dead-lettered (first: row 1: not_json" in err
    assert "no line is JSON: for a CSV or TSV file say --format csv" in err

    event = b'{"event_id":"e1","user_id":"u1","type":"view","ts":1700000000000}'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(event + b"\n[1]\n")))
    assert main(["produce", "-", "--dry-run", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 of 2 rows will be applied (1 dead-lettered, 0 ignored)" in err
