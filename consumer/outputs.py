"""What the pipeline writes to Kafka: dead letters and segment-change events.

Both are queued while a batch is processed and waited for (`OutputTopics.deliver`) before the
batch's Redis write: a crash can repeat them, never lose them (at least once). The commands that
write Kafka records of their own (`forget`'s tombstones, `dead-letters --resend`) send them
through `OutputTopics.send` too, so every producer of the project checks deliveries one way.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.exceptions import ServerUnavailableError
from consumer.kafka_clients import create_producer, dead_letter_headers, dead_letter_message
from consumer.settings import KafkaSettings
from model.events import Rejection

log = logging.getLogger(__name__)

#: librdkafka's RD_KAFKA_PARTITION_UA, the default of ``produce(partition=)``: the partitioner
#: chooses.
_UNASSIGNED = -1


class OutputTopics:
    """One producer for the dead-letter topic and the segments topic of ``kafka``."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        # Reports for failures only: a Python callback per delivered change event cost more
        # than producing it; a failure still reaches `_delivered` and stops the write.
        self.producer: Producer = create_producer(kafka, **{"delivery.report.only.error": True})
        self._undelivered: list[str] = []

    def send_dead_letters(
        self, records: Sequence[Message], rejections: Sequence[Rejection]
    ) -> Counter[str]:
        """Queue the original bytes of each rejected record with its reason and source in
        headers; returns the count per reason."""
        topic = self.kafka.dead_letter_topic
        reasons: Counter[str] = Counter()
        for rejection in rejections:
            m = records[rejection.index]
            key, value, headers = dead_letter_message(m, rejection.reason, rejection.detail)
            try:
                self.send(topic, key, value, headers)
            except KafkaException as exc:
                # Refused by this client (a size it counts differently, a header it rejects):
                # the reason and the source position still go, the bytes cannot.
                log.warning(
                    "dead letter of %s [%s] @%s refused (%s): sent without its bytes",
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    exc,
                )
                self.send(topic, None, None, dead_letter_headers(m, rejection.reason, ""))
            reasons[rejection.reason] += 1
        if rejections:
            log.debug("dead-lettered %d records: %s", len(rejections), dict(reasons))
        return reasons

    def send_changes(self, changes: Sequence[tuple[str, bytes]]) -> None:
        """Queue segment-change events (user id, JSON), keyed by user id."""
        topic = self.kafka.segments_topic
        for user, change in changes:
            self.send(topic, user.encode(), change)

    def deliver(self) -> None:
        """Wait until everything queued is acknowledged by the broker.

        A message the broker finally refused raises `ServerUnavailableError`, before the
        Redis write and before any offset is stored: the batch is redelivered after a restart,
        never lost.
        """
        while self.producer.flush(5.0) > 0:
            log.warning("waiting for the broker to acknowledge %d messages", len(self.producer))
        if self._undelivered:
            failed, self._undelivered = self._undelivered, []
            raise ServerUnavailableError(
                f"{len(failed)} message(s) were not delivered, first: {failed[0]}"
            )

    def close(self) -> None:
        """Give what is still queued up to 10 s."""
        self.producer.flush(10)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one message, to ``partition`` or where the partitioner puts its key; a full
        local queue waits for room instead of failing. `deliver` says whether it arrived."""
        while True:
            try:
                self.producer.produce(
                    topic,
                    key=key,
                    value=value,
                    headers=headers,
                    on_delivery=self._delivered,
                    partition=_UNASSIGNED if partition is None else partition,
                )
                return
            except BufferError:
                self.producer.poll(0.1)

    def _delivered(self, err: KafkaError | None, message: Message) -> None:
        if err is not None:
            self._undelivered.append(f"{message.topic()}: {err.str()}")
