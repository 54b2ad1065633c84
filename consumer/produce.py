"""Put records on a Kafka topic: the synthetic stream (``streamseg generate``) or a file
(``streamseg produce``), with rate limiting, a progress bar and delivery accounting. A file is
JSON lines sent as they are (below), or a shop's own CSV, TSV or JSON-lines export mapped to
contract events by `consumer.event_mapping`.

JSON-lines format
-----------------
One record per line (UTF-8, ``\\n``-terminated; a trailing ``\\r`` is tolerated; blank lines are
skipped):

- A line that is a JSON object with a wrapper field ``_raw_b64`` stands for a record whose
  value is not a single line of UTF-8 text (or whose key cannot be derived from it):
  ``{"_raw_b64": "<base64 value>", "_key_b64": "<base64 key>" | null}``. The field name
  ``_raw_b64`` is reserved for this.
- Any other line is the record value, byte for byte. Its key is the UTF-8 text of the line's
  ``user_id`` (or ``--key-field``) when the line is a JSON object with a string or integer
  there, and no key otherwise. Lines that are not JSON are still sent (as bad records).

`record_to_line` writes a record verbatim exactly when `record_from_line` gives back the same
key and value, and the wrapper otherwise, so a file written by ``streamseg generate --out``
reproduces the stream byte for byte through ``streamseg produce``.

Delivery
--------
The producer is idempotent (``enable.idempotence``), batches for throughput (``linger.ms`` 10,
``compression.type`` lz4, ``batch.size`` 1 MB) and reports only failed deliveries, which are
counted by error name in `ProduceStats`; nothing is dropped silently. The last flush waits up
to ``flush_timeout`` seconds; records still queued then are counted as undelivered. Ctrl-C
stops reading, flushes what was handed over, and reports.

Checks
------
A mapped file's rows are checked as they are mapped: the summary says how many the consumer
will dead-letter or ignore (`consumer.event_mapping.MappingProblems`). ``--dry-run`` reads,
maps and checks the whole file without connecting to Kafka; without it, a file of which no
row will be applied ends with exit status 1 (its rows were sent by then).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import contextlib
import csv
import dataclasses
import gzip
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, cast

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from consumer.event_mapping import (
    EventMapping,
    LineTooLongError,
    MappingProblems,
    TsUnit,
    bounded_lines,
    check_dialect,
    load_json,
    read_csv_rows,
    read_json_rows,
)
from consumer.exceptions import ConfigError, ServerUnavailableError, StreamsegError
from consumer.kafka_clients import KEY_PARTITIONER
from consumer.logs import librdkafka_log
from consumer.settings import KafkaSettings, Settings
from consumer.times import parse_epoch_ms
from model.events import DecodeLimits

__all__ = [
    "InputFileError",
    "JsonLinesFormatError",
    "ProduceStats",
    "file_records",
    "generate_command",
    "input_format",
    "produce_command",
    "produce_records",
    "producer_config",
    "read_jsonl_records",
    "record_from_line",
    "record_to_line",
]

log = logging.getLogger(__name__)

RAW_FIELD = "_raw_b64"
KEY_FIELD = "_key_b64"
_MAX_ERROR_SAMPLES = 5
_PROGRESS_EVERY = 1024  # records between progress updates and producer polls


class InputFileError(StreamsegError):
    """``streamseg produce`` could not read its input to the end; the message says where."""


class JsonLinesFormatError(StreamsegError):
    """A JSON-lines input has a broken ``_raw_b64`` wrapper; the message names the line."""


# -------------------------------------------------------------------- JSON lines
def record_from_line(line: bytes, key_field: str = "user_id") -> tuple[bytes | None, bytes]:
    """The Kafka record ``(key, value)`` that one JSON-lines line stands for.

    Parameters
    ----------
    line : the line without its line terminator.
    key_field : field of a JSON object whose value (string or integer) becomes the key.

    Raises `JsonLinesFormatError` when a ``_raw_b64`` wrapper does not hold valid base64.
    """
    try:
        obj = load_json(line)  # a number beyond float range elsewhere leaves the key readable
    except orjson.JSONDecodeError:
        return None, line
    if not isinstance(obj, dict):
        return None, line
    if RAW_FIELD in obj:
        raw, raw_key = obj.get(RAW_FIELD), obj.get(KEY_FIELD)
        if not isinstance(raw, str) or not (raw_key is None or isinstance(raw_key, str)):
            raise JsonLinesFormatError(f"{RAW_FIELD} and {KEY_FIELD} must be base64 strings")
        try:
            value = base64.b64decode(raw, validate=True)
            key = None if raw_key is None else base64.b64decode(raw_key, validate=True)
        except binascii.Error as exc:
            raise JsonLinesFormatError(f"invalid base64 in {RAW_FIELD} wrapper: {exc}") from None
        return key, value
    user = obj.get(key_field)
    if isinstance(user, str):
        return user.encode(), line
    if isinstance(user, int) and not isinstance(user, bool):
        return str(user).encode(), line
    return None, line


def record_to_line(key: bytes | None, value: bytes) -> bytes:
    """One JSON-lines line (without terminator) from which `record_from_line` rebuilds
    ``(key, value)`` exactly: the value itself when that works, else the base64 wrapper."""
    if value.strip() and b"\n" not in value and b"\r" not in value:
        try:
            value.decode("utf-8")
            verbatim = record_from_line(value) == (key, value)
        except (UnicodeDecodeError, JsonLinesFormatError):
            verbatim = False
        if verbatim:
            return value
    return orjson.dumps(
        {
            RAW_FIELD: base64.b64encode(value).decode("ascii"),
            KEY_FIELD: None if key is None else base64.b64encode(key).decode("ascii"),
        }
    )


def read_jsonl_records(
    stream: IO[bytes], key_field: str = "user_id"
) -> Iterator[tuple[bytes | None, bytes]]:
    """Records of a JSON-lines byte stream (see the module docstring), in file order.

    Raises `JsonLinesFormatError` naming the line number of a broken wrapper.
    """
    for number, line in enumerate(bounded_lines(stream), start=1):
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue
        try:
            yield record_from_line(line, key_field)
        except JsonLinesFormatError as exc:
            raise JsonLinesFormatError(f"line {number}: {exc}") from None


def _write_jsonl(
    records: Iterable[tuple[bytes | None, bytes]], out: IO[bytes]
) -> Iterator[tuple[bytes | None, bytes]]:
    """Pass records through, writing each one to ``out`` once the next one is asked for
    (so that a record is in the file only when the consumer of this iterator took it)."""
    write = out.write
    for key, value in records:
        yield key, value
        write(record_to_line(key, value) + b"\n")


def _count_lines(path: Path) -> int:
    """Lines of the file (of its content when gzipped: a pass at decompression speed, for the
    progress bar's total and ETA)."""
    count = 0
    last = b"\n"
    with _open_input(path) as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


# -------------------------------------------------------------------- progress
class _RateColumn(ProgressColumn):
    """Records per second over the recent past."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        if task.finished and task.finished_time:
            speed = task.completed / task.finished_time  # the average, once done
        return Text("-- rec/s" if speed is None else f"{speed:,.0f} rec/s", style="cyan")


class _ProgressDisplay:
    """A rich progress bar on stderr, updated at most every ~0.1 s; a no-op when disabled."""

    def __init__(self, enabled: bool, description: str, total: int | None) -> None:
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                refresh_per_second=8,
            )
            self._task = self._progress.add_task(description, total=total)
        self._last = 0.0

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(
        self, completed: int, *, force: bool = False, description: str | None = None
    ) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if force or now - self._last >= 0.1:
            self._last = now
            self._progress.update(self._task, completed=completed, description=description)

    def finish(self, completed: int) -> None:
        """Set the total to what was done (totals may be estimates) and draw a last time."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=completed)


# -------------------------------------------------------------------- producing
@dataclass(slots=True)
class ProduceStats:
    """What happened to the records handed to `produce_records`.

    ``sent`` records were handed to the producer (``value_bytes`` bytes of values); of these
    ``failed`` got a delivery error (counted by error name in ``errors``, with the first few
    messages in ``error_samples``) and ``undelivered`` were still queued when the final flush
    gave up. ``seconds`` is wall time from the first record to the end of the flush.
    """

    topic: str = ""
    sent: int = 0
    failed: int = 0
    undelivered: int = 0
    value_bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> int:
        """Records acknowledged by the broker."""
        return self.sent - self.failed - self.undelivered

    @property
    def rate(self) -> float:
        """Records sent per second (0 before any time elapsed)."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Every record handed over was delivered and nothing was interrupted."""
        return self.failed == 0 and self.undelivered == 0 and not self.interrupted

    def summary(self) -> str:
        """One human line, e.g. for the end of a command."""
        text = (
            f"produced {self.sent:,} records ({self.value_bytes / 1e6:,.1f} MB) to "
            f"{self.topic!r} in {self.seconds:,.1f} s ({self.rate:,.0f} records/s): "
            f"{self.delivered:,} delivered, {self.failed:,} failed, "
            f"{self.undelivered:,} undelivered"
        )
        if self.errors:
            text += " [" + ", ".join(f"{k}: {v:,}" for k, v in self.errors.most_common()) + "]"
        if self.interrupted:
            text += " (interrupted)"
        return text

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # Called only for failures (delivery.report.only.error).
        if err is None:
            return
        self.failed += 1
        self.errors[err.name()] += 1
        if len(self.error_samples) < _MAX_ERROR_SAMPLES:
            self.error_samples.append(str(err))

    def _on_local_error(self, exc: KafkaException | BufferError) -> None:
        self.failed += 1
        name = exc.args[0].name() if exc.args and isinstance(exc.args[0], KafkaError) else "local"
        self.errors[name] += 1
        if len(self.error_samples) < _MAX_ERROR_SAMPLES:
            self.error_samples.append(str(exc))


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka producer properties: throughput defaults, then the settings (which win:
    ``kafka.*``, ``kafka.extra``, then ``kafka.producer_extra``)."""
    config: dict[str, Any] = {
        "enable.idempotence": True,
        "linger.ms": 10,
        "compression.type": "lz4",
        "partitioner": KEY_PARTITIONER,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
    }
    config.update(kafka.client_config())
    config.update(kafka.producer_extra)
    return config


class _TokenBucket:
    """At most ``rate`` takes per second on average, bursts of up to ~0.1 s worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 10.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> float:
        """Take one token; returns the seconds the caller must wait before using it."""
        wait = 0.0
        if self.tokens < 1.0:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1.0:
                wait = (1.0 - self.tokens) / self.rate
                self.tokens += wait * self.rate
                self.stamp += wait
        self.tokens -= 1.0
        return wait


def produce_records(
    records: Iterable[tuple[bytes | None, bytes]],
    kafka: KafkaSettings,
    topic: str,
    rate: float | None = None,
    progress: bool = False,
    *,
    total: int | None = None,
    description: str = "producing",
    flush_timeout: float = 60.0,
    connect_timeout: float = 15.0,
) -> ProduceStats:
    """Send ``(key, value)`` records to ``topic`` and account for every one of them.

    Parameters
    ----------
    records : Kafka records in send order; keys may be None.
    kafka : connection settings (`KafkaSettings.extra` overrides the producer defaults).
    topic : destination topic.
    rate : records per second at most (token bucket); None or 0 for as fast as possible.
    progress : show a progress bar on stderr.
    total : number of records expected (may be an estimate), for the bar and its ETA.
    description : label of the progress bar.
    flush_timeout : seconds to wait for the final deliveries.
    connect_timeout : seconds to wait for the broker's metadata before giving up.

    Returns
    -------
    ProduceStats : counts of sent, failed and undelivered records, errors by name.

    Raises `ServerUnavailableError` when the broker cannot be reached at start. A Ctrl-C
    stops reading, flushes and returns with ``interrupted`` set.
    """
    stats = ProduceStats(topic=topic)
    config = producer_config(kafka)
    config["delivery.report.only.error"] = True
    config["on_delivery"] = stats._on_delivery
    config["error_cb"] = _log_client_error
    config["logger"] = librdkafka_log
    producer = Producer(config)
    try:
        producer.list_topics(timeout=connect_timeout)
    except KafkaException as exc:
        del producer  # not kept alive (and retrying) by the traceback
        raise ServerUnavailableError(
            f"cannot reach Kafka at {kafka.bootstrap_servers} (kafka.bootstrap_servers): {exc}"
        ) from None

    bucket = _TokenBucket(rate) if rate else None
    produce, poll = producer.produce, producer.poll
    sent = value_bytes = 0
    started = time.monotonic()
    with _ProgressDisplay(progress, description, total) as bar:
        try:
            for key, value in records:
                if bucket is not None and (wait := bucket.take()) > 0:
                    # Serve delivery reports while waiting (poll may return early).
                    until = time.monotonic() + wait
                    while (left := until - time.monotonic()) > 0:
                        poll(left)
                try:
                    produce(topic, value, key)
                    refused = False
                except (BufferError, KafkaException):
                    refused = True
                if refused:  # retried outside the handler: see _produce_slowly
                    _produce_slowly(producer, topic, key, value, stats)
                sent += 1
                value_bytes += len(value)
                if not sent % _PROGRESS_EVERY:
                    poll(0)
                    bar.update(sent)
        except KeyboardInterrupt:
            stats.interrupted = True
            log.warning("interrupted: flushing %d records handed to the producer", len(producer))
        finally:
            # Also on a failing input: what was handed over is delivered before raising.
            stats.sent, stats.value_bytes = sent, value_bytes
            bar.update(sent, force=True, description=f"{description} (flushing)")
            stats.undelivered = producer.flush(flush_timeout)
            stats.seconds = time.monotonic() - started
            bar.update(sent, force=True, description=description)
            bar.finish(sent)
    if stats.failed or stats.undelivered:
        log.error("%s; first errors: %s", stats.summary(), "; ".join(stats.error_samples))
    return stats


def _produce_slowly(
    producer: Producer, topic: str, key: bytes | None, value: bytes, stats: ProduceStats
) -> None:
    """The rare path of a produce call: wait while the local queue is full; count a record
    that librdkafka refuses outright (e.g. larger than ``message.max.bytes``) as failed.

    Never call it inside an ``except`` block: when confluent-kafka's (2.16) produce raises
    while another exception is being handled, that other exception is never freed, and its
    traceback keeps the caller's frame, and so the producer, alive for the rest of the process.
    """
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.05)  # local queue full: let deliveries drain
        except KafkaException as exc:
            stats._on_local_error(exc)
            return


def _log_client_error(err: KafkaError) -> None:
    # Client-level problems (broker down, authentication): deliveries are retried meanwhile.
    log.warning("kafka: %s", err)


# -------------------------------------------------------------------- command handlers
#: Options of ``streamseg generate`` that map 1:1 onto `GeneratorConfig` fields (None = default).
_GENERATOR_OPTIONS = {
    "users": "users",
    "days": "days",
    "seed": "seed",
    "activity": "activity",
    "malformed_share": "malformed_share",
    "out_of_order_share": "out_of_order_share",
    "late_share": "late_share",
    "alias_share": "alias_share",
    "iso_ts_share": "iso_ts_share",
    "hostile_id_share": "hostile_id_share",
    "drift": "drift_type",
    "drift_at": "drift_at",
    "drift_to": "drift_to",
}


def _show_progress(args: argparse.Namespace) -> bool:
    choice: bool | None = getattr(args, "progress", None)
    return sys.stderr.isatty() if choice is None else choice


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[IO[bytes] | None]:
    if path is None:
        yield None
    elif path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        with open(path, "wb", buffering=1 << 20) as fh:
            yield fh


def generate_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg generate``: simulate the stream, send it to Kafka and/or write JSON lines."""
    from consumer.synthetic import EventGenerator, GeneratorConfig

    given = {
        field_name: value
        for option, field_name in _GENERATOR_OPTIONS.items()
        if (value := getattr(args, option, None)) is not None
    }
    config = GeneratorConfig(**given, valid_only=args.valid_only)
    if args.end_now:
        config.start_ms = round(time.time() * 1000 - config.days * 86_400_000)
    elif args.start is not None:
        config.start_ms = parse_epoch_ms(args.start, option="--start")
    config.__post_init__()  # check the span again
    if args.events_per_user:
        natural = EventGenerator(config).expected_valid_events() / config.users
        config = dataclasses.replace(
            config, activity=config.activity * args.events_per_user / natural
        )
    generator = EventGenerator(config)
    if args.planted:
        generator.write_planted_types(args.planted)
    if args.no_kafka and not args.out:
        raise ConfigError("--no-kafka needs --out FILE (where the events go instead)")

    topic = args.topic or settings.kafka.events_topic
    total = generator.expected_records()
    show = _show_progress(args)
    code = 0
    with _open_output(args.out) as out:
        records: Iterable[tuple[bytes | None, bytes]] = generator.records()
        if out is not None:
            records = _write_jsonl(records, out)
        if args.no_kafka:
            _, interrupted = _drain(records, show, total, "generate -> file")
            code = 130 if interrupted else 0
        else:
            stats = produce_records(
                records,
                settings.kafka,
                topic,
                rate=args.rate or None,
                progress=show,
                total=total,
                description=f"generate -> {topic}",
            )
            print(stats.summary(), file=sys.stderr)
            code = 0 if stats.ok else (130 if stats.interrupted else 1)
    gen = generator.stats
    by_type = ", ".join(f"{name} {count:,}" for name, count in gen.by_type.most_common())
    print(
        f"generated {gen.records:,} records for {gen.users:,} of {config.users:,} users (the "
        f"others did not act) over {config.days:g} days "
        f"(seed {config.seed}): {gen.valid:,} valid ({by_type}); "
        f"{sum(gen.malformed.values()):,} malformed; {gen.out_of_order:,} out of order; "
        f"{gen.late:,} late"
        + (f"; JSON lines in {args.out}" if args.out and args.out != "-" else "")
        + (f"; planted types in {args.planted}" if args.planted else ""),
        file=sys.stderr,
    )
    return code


def _drain(
    records: Iterable[tuple[bytes | None, bytes]], show: bool, total: int | None, description: str
) -> tuple[int, bool]:
    """Read ``records`` to the end without sending them: how many, and whether Ctrl-C
    stopped the reading."""
    count = 0
    interrupted = False
    with _ProgressDisplay(show, description, total) as bar:
        try:
            for _ in records:
                count += 1
                if count % _PROGRESS_EVERY == 0:
                    bar.update(count)
        except KeyboardInterrupt:
            interrupted = True
        bar.finish(count)
    return count, interrupted


#: --format choice -> CSV delimiter (None = JSON lines).
_DELIMITERS: dict[str, str | None] = {"jsonl": None, "csv": ",", "tsv": "\t"}


def input_format(choice: str, file: str) -> str:
    """``choice``, or for ``auto`` the format the file name says (``.csv``, ``.tsv``, either
    with ``.gz``); JSON lines otherwise and for stdin."""
    if choice != "auto":
        return choice
    suffixes = [s.lower() for s in Path(file).suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    return {".csv": "csv", ".tsv": "tsv"}.get(suffixes[-1] if suffixes else "", "jsonl")


def _mapping(args: argparse.Namespace, fmt: str, settings: Settings) -> EventMapping | None:
    """The mapping the options ask for; None to send JSON lines as they are."""
    options = (args.map, args.default, args.ts_format, args.ts_unit)
    if fmt == "jsonl" and not any(options):
        return None
    return _consumer_view(settings, args.map, args.default, args.ts_format, args.ts_unit)


def _consumer_view(
    settings: Settings,
    maps: Sequence[str] | None = None,
    defaults: Sequence[str] | None = None,
    ts_format: str | None = None,
    ts_unit: TsUnit | None = None,
) -> EventMapping:
    """A mapping that judges rows as the consumer will (its aliases and limits)."""
    pipeline = settings.pipeline
    return EventMapping.from_options(
        maps or (),
        defaults or (),
        ts_format,
        ts_unit or "ms",
        type_aliases=pipeline.type_aliases,
        limits=DecodeLimits(  # as the consumer's (consumer.pipeline)
            max_payload_bytes=pipeline.max_payload_bytes,
            max_ahead_of_record_ms=pipeline.max_event_ahead_seconds * 1000.0,
        ),
    )


def file_records(
    source: IO[bytes],
    fmt: str,
    mapping: EventMapping | None,
    key_field: str = "user_id",
    *,
    guessed: bool = False,
    delimiter: str | None = None,
    encoding: str = "utf-8",
) -> Iterator[tuple[bytes | None, bytes]]:
    """The Kafka records of an input stream: JSON lines as they are without a mapping,
    otherwise each CSV/TSV row or JSON object mapped to a contract event. With ``guessed``
    (JSON lines assumed, not asked for) a mapped input whose first line is no JSON object is
    refused: it is most likely a CSV on stdin or in a file not named ``.csv``. ``delimiter``
    (instead of the format's own) and ``encoding`` apply to CSV and TSV."""
    if mapping is None:
        yield from read_jsonl_records(source, key_field)
        return
    if _DELIMITERS[fmt] is not None:
        rows = read_csv_rows(
            source,
            delimiter or _DELIMITERS[fmt] or ",",
            check_header=mapping.check_columns,
            encoding=encoding,
        )
        yield from mapping.judged(mapping.record(row) for row in rows)
        return
    yield from mapping.judged(_json_records(source, mapping, guessed))


def _json_records(
    source: IO[bytes], mapping: EventMapping, guessed: bool
) -> Iterator[tuple[bytes | None, bytes]]:
    """Each JSON object of ``source`` mapped; lines that are none sent as they are."""
    for item in read_json_rows(source):
        if guessed:
            if isinstance(item, bytes):
                raise ConfigError(
                    f"--map: the first line is not a JSON object ({item[:60]!r}); "
                    "for CSV or TSV say --format csv or --format tsv (--format jsonl "
                    "sends lines that are not JSON as they are)"
                )
            guessed = False
        yield mapping.as_is((None, item)) if isinstance(item, bytes) else mapping.record(item)


def _reading(
    records: Iterable[tuple[bytes | None, bytes]], name: str
) -> Iterator[tuple[bytes | None, bytes]]:
    """``records``, with a broken input (truncated gzip, a CSV field over the csv module's
    limit, a read error) turned into an error that names the file and how far it got."""
    count = 0
    try:
        for record in records:
            yield record
            count += 1
    except (OSError, EOFError, csv.Error, LineTooLongError) as exc:
        raise InputFileError(f"cannot read {name} after {count:,} records: {exc}") from None


def _open_input(path: Path) -> IO[bytes]:
    if path.suffix.lower() == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb", buffering=1 << 20)


def produce_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg produce``: send a JSON-lines, CSV or TSV file (or stdin) to a topic, or
    with ``--dry-run`` only read and check it. Exit status 1 when a record was not delivered,
    or when the consumer will apply none of a mapped file's rows."""
    dry_run: bool = getattr(args, "dry_run", False)
    topic = args.topic or settings.kafka.events_topic
    fmt = input_format(args.format, args.file)
    mapping = _mapping(args, fmt, settings)
    check_dialect(args.delimiter, args.encoding)
    utf8 = codecs.lookup(args.encoding).name == "utf-8"
    if fmt == "jsonl" and (args.delimiter is not None or not utf8):
        raise ConfigError(
            "--delimiter and --encoding apply to CSV and TSV input: add --format csv (or tsv)"
        )
    show = _show_progress(args)
    total: int | None = None
    if args.file == "-":
        source: IO[bytes] = sys.stdin.buffer
        name = "stdin"
    else:
        path = Path(args.file)
        try:
            source = _open_input(path)
            if show and path.is_file():
                total = _count_lines(path) - (fmt != "jsonl")  # not the header line
        except OSError as exc:
            raise InputFileError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        name = path.name
    # Lines sent as they are to the events topic are judged too: a CSV on stdin was sent
    # line by line as junk, with nothing said and status 0. Another topic may hold anything.
    checker = mapping or _consumer_view(settings)
    judge_as_is = mapping is None and topic == settings.kafka.events_topic
    with contextlib.closing(source) if source is not sys.stdin.buffer else contextlib.nullcontext():
        read_records = file_records(
            source,
            fmt,
            mapping,
            args.key_field,
            guessed=args.format == "auto",
            delimiter=args.delimiter,
            encoding=args.encoding,
        )
        if judge_as_is:
            read_records = checker.judged(checker.as_is(r) for r in read_records)
        records = _reading(read_records, name)
        if dry_run:
            read, interrupted = _drain(records, show, total, f"{name} (dry run)")
            delivered = True
            print(
                f"dry run: read {read:,} record{'' if read == 1 else 's'} of {name}; nothing was "
                f"sent to {topic!r}",
                file=sys.stderr,
            )
        else:
            stats = produce_records(
                records,
                settings.kafka,
                topic,
                rate=args.rate or None,
                progress=show,
                total=total,
                description=f"{name} -> {topic}",
            )
            read, interrupted, delivered = stats.sent, stats.interrupted, stats.ok
            print(stats.summary(), file=sys.stderr)
    for line in checker.problems.summary():
        print(line, file=sys.stderr)
    if checker.problems.rows:
        print(checker.problems.outcome(), file=sys.stderr)
    if interrupted:
        return 130
    if doomed := _none_applied(checker.problems, read, dry_run):
        # Status 1 for a dry run too: a script can gate the real run on it.
        log.error("%s", doomed if dry_run else f"{doomed}; check a file with --dry-run first")
        if mapping is None and checker.problems.counts["not_json"] == read:
            log.error(
                "no line is JSON: for a CSV or TSV file say --format csv (or tsv) and --map its "
                "columns (see produce --help)"
            )
        return 1
    return 0 if dry_run or delivered else 1


def _none_applied(problems: MappingProblems, records: int, dry_run: bool) -> str | None:
    """What to say when the consumer will apply none of the ``records`` read, each a mapped
    row (lines passed through unmapped may be events it takes); None otherwise."""
    if not records or records != problems.rows or problems.applied_rows:
        return None
    sent = "would be sent" if dry_run else "were sent"
    if not problems.ignored:
        return f"all {records:,} rows {sent} and will be dead-lettered by the consumer"
    return (
        f"all {records:,} rows {sent} and none will be applied: "
        f"{problems.refused_rows:,} will be dead-lettered and {problems.ignored.total():,} "
        "ignored by the consumer"
    )
