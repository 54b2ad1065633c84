"""``streamseg forget``: erase users (a data-subject erasure request) from a namespace.

For each user id, in each namespace asked for:

- the state and the segment record (``<ns>:{<user>}:state``, ``:seg``) are deleted, and the
  segment the record named loses the user in ``<ns>:segment-sizes``;
- the user's rows in the training buffer (``<ns>:training-samples``; each row ends with the
  BLAKE2b-64 key of its user id, `consumer.training_rows`) are removed with ``LREM``;
- ``forgotten_users`` in ``<ns>:counters`` counts the users who had a state or a record.

Once per call, a tombstone (the user id as key, no value) goes to the segments topic: the
topic is compacted, so Kafka drops the user's change events there at its next compaction.

What it cannot reach, and the README says so: the events topic (its retention, or a deletion
at the source, erases the events; a replay of it brings the user back), models already
published (centres are averages over many users, no user's row), copies consumers of the
segments topic have made, and a user whose events arrive again (they are a new user then). A
batch the pipeline is applying at the same moment may write the user again: run it when the
user's events have stopped, or again after.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
from redis.cluster import RedisCluster

from consumer.exceptions import ConfigError, ServerUnavailableError
from consumer.kafka_clients import create_producer
from consumer.lookup import is_utf8_text, stdin_user_ids
from consumer.namespaces import namespace_names
from consumer.redis_keys import KeyLayout
from consumer.settings import KafkaSettings, RedisClient, Settings
from consumer.state_store import read_values
from consumer.training_rows import KEY_BYTES, user_digest
from model.features import FEATURE_NAMES

log = logging.getLogger(__name__)

#: Ids erased per round trip.
_CHUNK = 1000
#: Bytes of a training row with its user key (the only rows that can be told apart by user).
_KEYED_ROW_BYTES = 8 * len(FEATURE_NAMES) + KEY_BYTES


@dataclass
class Erased:
    """What `forget_users` removed from one namespace."""

    namespace: str
    states: int = 0
    records: int = 0
    training_rows: int = 0


def forget_users(client: RedisClient, keys: KeyLayout, user_ids: Sequence[str]) -> Erased:
    """Delete ``user_ids``' state, record and training rows in ``keys.namespace``."""
    erased = Erased(keys.namespace)
    if not user_ids:
        return erased
    pairs = keys.state_and_segment(user_ids)
    records = read_values(client, [segment for _, segment in pairs])
    leaving: dict[str, int] = {}
    for raw in records:
        segment = _segment_of(raw)
        if segment is not None:
            leaving[segment] = leaving.get(segment, 0) - 1
    # One transaction on one server; on a cluster a user's two keys share a slot, the
    # namespace-wide keys do not, so there the commands go without MULTI.
    pipe = client.pipeline(transaction=not isinstance(client, RedisCluster))
    for state, segment in pairs:
        pipe.delete(state)
        pipe.delete(segment)
    for segment, delta in leaving.items():
        pipe.hincrby(keys.segment_sizes, segment, delta)
    deleted = pipe.execute()[: 2 * len(pairs)]  # DEL replies: 1 for a key that was there
    states, segments = deleted[0::2], deleted[1::2]
    erased.states, erased.records = sum(states), sum(segments)
    forgotten = sum(1 for state, segment in zip(states, segments, strict=True) if state or segment)
    erased.training_rows = _remove_training_rows(client, keys, user_ids)
    if forgotten:
        client.hincrby(keys.counters, "forgotten_users", forgotten)
    return erased


def _segment_of(raw: bytes | None) -> str | None:
    """The segment id a stored record names (as the sizes hash's field), if any."""
    if raw is None:
        return None
    try:
        segment = orjson.loads(raw).get("segment_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None  # not a record of this service: nothing to take from a size
    return str(segment) if isinstance(segment, int) and not isinstance(segment, bool) else None


def _remove_training_rows(client: RedisClient, keys: KeyLayout, user_ids: Sequence[str]) -> int:
    """LREM each buffer row whose key is one of ``user_ids``'; returns the rows removed. Rows
    written before the key existed (an upgrade's first buffer) cannot be told apart."""
    digests = {user_digest(u) for u in user_ids}
    rows = client.lrange(keys.training_samples, 0, -1)
    theirs = {row for row in rows if len(row) == _KEYED_ROW_BYTES and row[-KEY_BYTES:] in digests}
    removed = 0
    for row in theirs:
        removed += int(client.lrem(keys.training_samples, 0, row))
    return removed


def send_tombstones(kafka: KafkaSettings, user_ids: Iterable[str]) -> int:
    """A tombstone per user on ``kafka.segments_topic``; returns how many were delivered."""
    producer = create_producer(kafka)
    failed: list[str] = []

    def delivered(err: object, _message: object) -> None:
        if err is not None:
            failed.append(str(err))

    sent = 0
    for user in user_ids:
        producer.produce(kafka.segments_topic, key=user.encode(), value=None, on_delivery=delivered)
        sent += 1
        producer.poll(0)
    if producer.flush(30) > 0 or failed:
        raise ServerUnavailableError(
            f"Kafka (kafka.bootstrap_servers) did not take the tombstones for "
            f"{kafka.segments_topic!r}: {failed[0] if failed else 'no answer in 30 s'}; Redis "
            "is erased already: run the command again to send them"
        )
    return sent


def forget_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg forget USER_ID... | -``."""
    client = settings.redis.connect()
    configured = settings.redis.namespace
    namespaces = namespace_names(client, configured) if args.all_namespaces else [configured]
    chunks = stdin_user_ids(_CHUNK) if args.user_ids == ["-"] else iter([args.user_ids])
    totals = {ns: Erased(ns) for ns in namespaces}
    users: list[str] = []
    for chunk in chunks:
        for bad in (u for u in chunk if not is_utf8_text(u)):
            raise ConfigError(f"user id {bad!r} is not valid UTF-8: no event can carry it")
        users += chunk
        for ns in namespaces:
            erased = forget_users(client, KeyLayout(ns), chunk)
            total = totals[ns]
            total.states += erased.states
            total.records += erased.records
            total.training_rows += erased.training_rows
    if not users:
        raise ConfigError("no user ids given (or none on stdin)")
    for total in totals.values():
        print(
            f"namespace {total.namespace}: deleted {total.states:,} states, "
            f"{total.records:,} segment records, {total.training_rows:,} training rows "
            f"({len(users):,} user ids asked)"
        )
    if args.no_tombstones:
        print(f"no tombstones sent to {settings.kafka.segments_topic!r} (--no-tombstones)")
    else:
        sent = send_tombstones(settings.kafka, users)
        print(
            f"{sent:,} tombstones sent to {settings.kafka.segments_topic!r} (compacted: Kafka "
            "drops the users' change events there at its next compaction)"
        )
    print(
        f"not erased here: the users' events on {settings.kafka.events_topic!r} (its retention "
        "or your source; a replay of them brings the users back)"
    )
    return 0
