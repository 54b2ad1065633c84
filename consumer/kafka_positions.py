"""Where each record of a batch sits in Kafka, read once per batch as numpy columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message


@dataclass(frozen=True, slots=True)
class KafkaPositions:
    """Partition, offset and timestamp of each record of a batch (all from
    ``kafka.events_topic``), and the offset after the last record of each partition."""

    partition: np.ndarray  # int64
    offset: np.ndarray  # int64
    timestamp_ms: np.ndarray  # int64, Kafka record timestamp; <= 0 = not available
    next_offsets: dict[int, int]

    @classmethod
    def of(cls, records: Sequence[Message]) -> KafkaPositions:
        n = len(records)
        partition = np.fromiter((m.partition() for m in records), np.int64, n)
        offset = np.fromiter((m.offset() for m in records), np.int64, n)
        timestamp = np.fromiter((m.timestamp()[1] for m in records), np.int64, n)
        # Records of a partition arrive in offset order: the last one per partition wins.
        next_offsets = dict(zip(partition.tolist(), (offset + 1).tolist(), strict=True))
        return cls(partition, offset, timestamp, next_offsets)
