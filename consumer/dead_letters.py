"""``streamseg dead-letters``: what the dead-letter topic holds, and sending records back.

Reads ``kafka.dead_letter_topic`` from its oldest record to its end as it stands when the
command starts (every partition; no consumer group, nothing committed), and prints one line per
reason: how many, and the first and last record's source position and detail, then the newest
``--examples`` records per reason with the head of their bytes.

``--resend`` sends the selected dead letters (``--reason``, default all) back to
``kafka.events_topic``, to the partition they were read from: the original key, value and
headers as they were (without the ``streamseg.*`` ones), plus ``streamseg.resent_from`` =
``<dead-letter topic>[partition]@offset``. Worth it after a
setting that refused them changed (``pipeline.max_event_ahead_seconds`` for
``ts_out_of_range``, ``pipeline.max_payload_bytes`` for ``oversize``); a record that is still
bad is dead-lettered again. A dead letter cut to fit (a ``streamseg.truncated_from_bytes`` or
``streamseg.key_truncated_from_bytes`` header) no longer holds the original and is not sent.
Sending twice sends twice: the consumer drops a repeat only within a user's last
``pipeline.dedupe_window_events`` events.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import get_args

import orjson
from confluent_kafka import Consumer, Message, TopicPartition

from consumer.exceptions import ConfigError, ServerUnavailableError
from consumer.kafka_clients import Headers, consumer_config, readable_headers
from consumer.logs import librdkafka_log
from consumer.outputs import OutputTopics
from consumer.settings import KafkaSettings, Settings
from model.events import RejectReason

#: Bytes of a dead letter's value an example shows.
_HEAD_BYTES = 120
_CUT = ("streamseg.truncated_from_bytes", "streamseg.key_truncated_from_bytes")
_HEADERS_GONE = ("streamseg.headers_dropped", "streamseg.headers_dropped_bytes")


@dataclass(frozen=True)
class Sighting:
    """One dead letter as the summary shows it: where it was read from, and why or what."""

    position: str  # ``topic[partition]@offset`` of the record in the events topic
    text: str  # the reason's detail (first, last), or the head of the value (examples)
    value_bytes: int  # the size of the dead letter's value


@dataclass
class ReasonSummary:
    """The dead letters of one reason."""

    count: int = 0
    first: Sighting | None = None  # the oldest, with its detail
    last: Sighting | None = None  # and the newest
    examples: list[Sighting] = field(default_factory=list)  # newest last, heads of values


def read_dead_letters(kafka: KafkaSettings, *, timeout: float = 30.0) -> Iterator[Message]:
    """Every record of the dead-letter topic up to its end when called, partition by
    partition in offset order."""
    topic = kafka.dead_letter_topic
    # A group id is required; this one is never joined (assign(), not subscribe()) nor
    # committed to.
    config = consumer_config(kafka, group_id="streamseg-dead-letters")
    consumer = Consumer({**config, "enable.auto.commit": False}, logger=librdkafka_log)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ConfigError(f"kafka.dead_letter_topic {topic!r}: no such topic")
        # Every partition's end first: records dead-lettered while this runs (a --resend
        # that is refused again) are not read, nor sent back twice.
        ends = [
            (partition, *consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout))
            for partition in sorted(metadata.partitions)
        ]
        for partition, low, high in ends:
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            position = low
            while position < high:
                # No more than remain: consume() waits for as many as it is asked for.
                batch = consumer.consume(min(1000, high - position), timeout)
                for message in batch:
                    offset = message.offset()
                    if message.error() is not None or offset is None or offset >= high:
                        continue
                    yield message
                # By the consumer's position, not the last offset seen: transaction markers
                # leave gaps that no message fills.
                (now,) = consumer.position([TopicPartition(topic, partition)])
                if now.offset > position:
                    position = now.offset
                elif not batch:
                    raise ServerUnavailableError(
                        f"Kafka (kafka.bootstrap_servers) sent nothing of {topic}[{partition}] "
                        f"after offset {position} in {timeout:.0f} s (end: {high})"
                    )
            consumer.unassign()
    finally:
        consumer.close()


def header_map(pairs: Headers) -> dict[str, bytes]:
    """Headers by name (the last of a repeated name), for reading ours."""
    return {k: v if isinstance(v, bytes) else (v or "").encode() for k, v in pairs}


def _position(headers: dict[str, bytes]) -> str:
    """Where the record was read: ``topic[partition]@offset``."""
    source = headers.get("streamseg.source.topic", b"?").decode(errors="replace")
    partition = headers.get("streamseg.source.partition", b"?").decode(errors="replace")
    offset = headers.get("streamseg.source.offset", b"?").decode(errors="replace")
    return f"{source}[{partition}]@{offset}"


class DeadLetterPass:
    """One pass over the dead letters: counts and examples per reason, and with ``outputs``,
    the selected ones sent back to the events topic as they are read."""

    def __init__(
        self,
        kafka: KafkaSettings,
        reasons: set[str] | None,
        examples: int,
        outputs: OutputTopics | None = None,
    ) -> None:
        self.kafka = kafka
        self.reasons = reasons
        self.examples = examples
        self.outputs = outputs
        self.total = 0
        self.summaries: dict[str, ReasonSummary] = {}
        self.sent: Counter[str] = Counter()
        self.cut = 0  # selected, but cut to fit: not sent
        self.without_headers = 0  # sent, but their own headers were dropped when dead-lettered
        self._partitions: int | None = None  # of the events topic, once asked

    def add(self, message: Message) -> None:
        self.total += 1
        pairs = readable_headers(message) or []  # once per message (kafka_clients says why)
        headers = header_map(pairs)
        reason = headers.get("streamseg.reason", b"unknown").decode(errors="replace")
        if self.reasons is not None and reason not in self.reasons:
            return
        summary = self.summaries.setdefault(reason, ReasonSummary())
        summary.count += 1
        position = _position(headers)
        detail = headers.get("streamseg.detail", b"").decode(errors="replace")
        value = message.value() or b""
        summary.first = summary.first or Sighting(position, detail, len(value))
        summary.last = Sighting(position, detail, len(value))
        if self.examples:
            head = Sighting(position, value[:_HEAD_BYTES].decode(errors="replace"), len(value))
            summary.examples = [*summary.examples, head][-self.examples :]
        if self.outputs is not None:
            self._send_back(message, pairs, headers, reason)

    def _send_back(
        self, message: Message, pairs: Headers, headers: dict[str, bytes], reason: str
    ) -> None:
        assert self.outputs is not None
        if any(name in headers for name in _CUT):
            self.cut += 1
            return
        if any(name in headers for name in _HEADERS_GONE):
            self.without_headers += 1  # the event is whole; its own headers were not kept
        # The record's own headers as they were (order, repeats, null values).
        own = [(k, v) for k, v in pairs if not k.startswith("streamseg.")]
        origin = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        own.append(("streamseg.resent_from", origin.encode()))
        # Its own partition: a partitioner other than the shop's producer's (murmur2 in Java
        # clients) could put the user's events on two partitions.
        self.outputs.send(
            self.kafka.events_topic,
            message.key(),
            message.value(),
            own,
            partition=self._source_partition(headers),
        )
        self.sent[reason] += 1

    def _source_partition(self, headers: dict[str, bytes]) -> int | None:
        """The partition of the events topic the record was read from, if it still exists."""
        topic = headers.get("streamseg.source.topic", b"").decode(errors="replace")
        raw = headers.get("streamseg.source.partition", b"")
        if topic != self.kafka.events_topic or not raw.isdigit():
            return None
        if self._partitions is None:
            assert self.outputs is not None
            found = self.outputs.producer.list_topics(topic, timeout=30).topics.get(topic)
            self._partitions = len(found.partitions) if found and not found.error else 0
        partition = int(raw)
        return partition if partition < self._partitions else None

    def finish(self) -> None:
        """Wait for what was sent back; raise when Kafka did not take all of it."""
        if self.outputs is not None:
            self.outputs.deliver()

    def report(self) -> list[str]:
        chosen = self.reasons
        shown = sum(s.count for s in self.summaries.values())
        lines = [
            f"{shown:,} dead letters in {self.kafka.dead_letter_topic!r}"
            + (f" of reasons {', '.join(sorted(chosen))} ({self.total:,} in all)" if chosen else "")
        ]
        for reason, summary in self._by_count():
            assert summary.first is not None and summary.last is not None
            lines.append(f"  {reason}: {summary.count:,}")
            lines.append(f"    first: {summary.first.position}: {summary.first.text}")
            if summary.count > 1:
                lines.append(f"    last:  {summary.last.position}: {summary.last.text}")
            for example in summary.examples:
                more = (
                    f" ... ({example.value_bytes:,} bytes)"
                    if example.value_bytes > _HEAD_BYTES
                    else ""
                )
                lines.append(f"    e.g. {example.position}: {example.text!r}{more}")
        if self.outputs is not None:
            sent = ", ".join(f"{r} {n:,}" for r, n in self.sent.most_common()) or "none"
            line = f"sent {sum(self.sent.values()):,} back to {self.kafka.events_topic!r} ({sent})"
            if self.cut:
                line += f"; {self.cut:,} cut to fit are no longer the original and were not sent"
            if self.without_headers:
                line += (
                    f"; {self.without_headers:,} went without their own headers (dropped when "
                    "they were dead-lettered)"
                )
            lines.append(line)
        return lines

    def _by_count(self) -> list[tuple[str, ReasonSummary]]:
        """The reasons seen, most frequent first."""
        return sorted(self.summaries.items(), key=lambda item: -item[1].count)

    def as_json(self) -> dict[str, object]:
        """``dead-letters --json``: what `report` says, as one object."""
        answer: dict[str, object] = {
            "topic": self.kafka.dead_letter_topic,
            "read": self.total,
            "selected": sum(s.count for s in self.summaries.values()),
            "reasons": {
                reason: {
                    "count": summary.count,
                    "first": asdict(summary.first) if summary.first else None,
                    "last": asdict(summary.last) if summary.last else None,
                    "examples": [asdict(e) for e in summary.examples],
                }
                for reason, summary in self._by_count()
            },
        }
        if self.outputs is not None:
            answer["resent"] = {
                "to": self.kafka.events_topic,
                "by_reason": dict(self.sent.most_common()),
                "cut_not_sent": self.cut,
                "sent_without_own_headers": self.without_headers,
            }
        return answer


#: The reasons a setting decides, and the setting: what a --resend can be worth.
SETTLED_BY_SETTING = {
    "ts_out_of_range": "pipeline.max_event_ahead_seconds",
    "oversize": "pipeline.max_payload_bytes",
}


def dead_letters_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg dead-letters [--reason R]... [--examples N] [--resend [--force]]``.

    ``--resend`` sends only reasons a setting decides (`SETTLED_BY_SETTING`): without
    ``--reason`` it selects those, and another reason named needs ``--force`` (a review sent
    543 empty records back, and every one was dead-lettered again)."""
    kafka = settings.kafka
    reasons = set(args.reason) if args.reason else None
    if args.force and not args.resend:
        raise ConfigError("--force goes with --resend (it lets --resend send any reason)")
    # A misspelt reason selected nothing and said "0 dead letters": refused, as with --resend.
    if unknown := sorted((reasons or set()) - {*get_args(RejectReason), "unknown"}):
        raise ConfigError(
            f"--reason {', '.join(unknown)}: no such reason (reasons: "
            f"{', '.join(get_args(RejectReason))}; unknown for a record without the header)"
        )
    if args.resend and not args.force:
        if reasons is None:
            reasons = set(SETTLED_BY_SETTING)
        elif unsettled := sorted(reasons - SETTLED_BY_SETTING.keys()):
            raise ConfigError(
                f"--resend of {', '.join(unsettled)}: no setting changes how the consumer "
                "judges them, so they would be dead-lettered again (only "
                + ", ".join(f"{r} ({s})" for r, s in SETTLED_BY_SETTING.items())
                + " are); add --force to send them anyway, e.g. after an upgrade that reads them"
            )
    outputs = OutputTopics(kafka) if args.resend else None
    dead = DeadLetterPass(kafka, reasons, args.examples, outputs)
    for message in read_dead_letters(kafka):
        dead.add(message)
    dead.finish()
    if args.json:
        print(orjson.dumps(dead.as_json()).decode())
    else:
        print("\n".join(dead.report()))
    return 0
