"""Fencing: a consumer stalled past a rebalance cannot overwrite what the new owner wrote.

A consumer that stalls past ``max.poll.interval.ms`` (or the session timeout) loses its
partitions, and may still finish the batch in hand. Each consumer takes a token per partition
(``HINCRBY`` of field ``<topic>:<partition>`` in ``<ns>:partition-owners``) at its first batch
of it in a namespace, and reads every batch and re-score chunk under WATCH of that hash, with
the write on the same connection (`consumer.state_store.StateStore.read_states_fenced`): a
token taken by anyone since the read discards the write (`redis.WatchError`, read again), and
a partition whose stored token is no longer this consumer's stops it (`PartitionTakenError`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import redis
from confluent_kafka import TopicPartition
from redis.cluster import RedisCluster

from consumer.exceptions import PartitionTakenError

if TYPE_CHECKING:
    from consumer.pipeline import SegmentPipeline

log = logging.getLogger(__name__)


class PartitionFences:
    """The fencing tokens of one `SegmentPipeline` in its current namespace."""

    def __init__(self, pipeline: SegmentPipeline) -> None:
        self.pipeline = pipeline
        #: ``<topic>:<partition>`` -> this consumer's token in ``<ns>:partition-owners``.
        self.tokens: dict[str, int] = {}

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions no longer ours: if one comes back, its first read takes a new token."""
        for p in partitions:
            self.tokens.pop(f"{p.topic}:{p.partition}", None)

    def read(
        self, users: list[str], state_keys: list[str], partitions: Iterable[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Users' states and foreign mask, read so that the store's next write is fenced:
        the users of a batch (of ``partitions``), or of a re-score chunk (``partitions``:
        those owned). Takes the tokens of partitions it has none of; raises
        `PartitionTakenError` when a partition's stored token is another consumer's, and
        `redis.WatchError` (read again) when the hash was lost. Not fenced on a Redis Cluster
        (no transaction across slots).
        """
        pipeline = self.pipeline
        if isinstance(pipeline.redis, RedisCluster):
            return pipeline.store.read_states_checked(users, state_keys=state_keys)
        topic = pipeline.settings.kafka.events_topic
        fields = [f"{topic}:{p}" for p in sorted(partitions)]
        acquire = [f for f in fields if f not in self.tokens]
        states, foreign, stored = pipeline.store.read_states_fenced(
            users, state_keys=state_keys, partitions=fields, acquire=acquire
        )
        for name in acquire:
            token = stored[name]
            assert token is not None  # our own HINCRBY, in the same round trip
            self.tokens[name] = token
        taken = [f for f in fields if stored[f] != self.tokens[f]]
        if taken:
            pipeline.store.release_watch()
            missing = [f for f in taken if stored[f] is None]
            if missing:  # the hash is gone (Redis lost its data): take new tokens and retry
                log.error(
                    "no owner recorded for %s: did Redis lose this namespace's data? (README: "
                    "Recovery) Taking new fencing tokens",
                    ", ".join(missing),
                )
                for name in missing:
                    del self.tokens[name]
                raise redis.WatchError("partition owners lost")
            raise PartitionTakenError(
                f"another consumer took over {', '.join(taken)} in namespace "
                f"{pipeline.keys.namespace} while this one held a batch of them (stalled past a "
                "rebalance: max.poll.interval.ms or the session timeout): stopping without "
                "writing the batch; the new owner continues from the committed offsets"
            )
        return states, foreign
