"""``streamseg forget``: erase users (a data-subject erasure request) from a namespace.

For each user id, in each namespace asked for:

- the state and the segment record (``<ns>:{<user>}:state``, ``:seg``) are deleted, and the
  segment the record named loses the user in ``<ns>:segment-sizes``;
- the user's rows in the training buffer (``<ns>:training-samples``; each row ends with the
  BLAKE2b-64 key of its user id, `consumer.training_rows`) are removed with ``LREM``;
- ``forgotten_users`` in ``<ns>:counters`` counts the users who had a state or a record.

Once per call, a tombstone (the user id as key, no value) goes to the segments topic, and with
``--all-namespaces`` to each replay's own (``<segments_topic>.replay-<NAME>``): they are
compacted, so Kafka drops the user's change events there at its next compaction.

What it cannot reach, and the README says so: the events topic (its retention, or a deletion
at the source, erases the events; a replay of it brings the user back), the dead-letter topics
(raw records), models already published (centres are averages over many users, no user's
row), copies consumers of the segments topic have made, and a user whose events arrive again
(they are a new user then). A batch the pipeline is applying at the same moment may write the
user again: run it when the user's events have stopped, or again after.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson
import redis
from confluent_kafka.admin import AdminClient
from redis.cluster import RedisCluster

from consumer.event_mapping import LineTooLongError
from consumer.exceptions import ConfigError, ServerUnavailableError
from consumer.logs import librdkafka_log
from consumer.namespaces import namespace_names
from consumer.outputs import OutputTopics
from consumer.redis_keys import KeyLayout
from consumer.segment_assignment import segment_size_changes
from consumer.settings import KafkaSettings, RedisClient, Settings
from consumer.training_rows import KEY_BYTES, user_digest
from consumer.unknown_namespace import refuse_if_nothing_written
from consumer.user_ids import is_utf8_text, stdin_user_ids
from model.features import FEATURE_NAMES

#: Ids erased per round trip.
_CHUNK = 1000
#: Bytes of a training row with its user key (the only rows that can be told apart by user).
_KEYED_ROW_BYTES = 8 * len(FEATURE_NAMES) + KEY_BYTES


@dataclass
class Erased:
    """What `forget` removed from one namespace."""

    namespace: str
    states: int = 0
    records: int = 0
    training_rows: int = 0


def erase_users(client: RedisClient, keys: KeyLayout, user_ids: Sequence[str]) -> tuple[int, int]:
    """Delete ``user_ids``' states and records in ``keys.namespace``, taking each user from the
    size of the segment their record named; returns (states, records) deleted.

    On one server the records are read under WATCH and the rest is one MULTI: a batch that
    moves a user meanwhile makes it read again, so a size is never taken twice or from the
    wrong segment. A cluster has no transaction across slots: each user's state and record
    (one slot) are deleted by one script whose ``GETDEL`` returns the record, so the size
    taken is still that of the record deleted; only the size and counter updates after it
    are separate commands.
    """
    if not user_ids:
        return 0, 0
    pairs = keys.state_and_segment(user_ids)
    if isinstance(client, RedisCluster):
        return _take_and_delete(client, keys, pairs)
    assert isinstance(client, redis.Redis)
    segment_keys = [segment for _, segment in pairs]
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(*segment_keys)
                # Under WATCH the pipeline runs commands at once: the values, not itself.
                leaving = _sizes_left(cast(list[bytes | None], pipe.mget(segment_keys)))
                pipe.multi()
                return _delete(pipe, keys, pairs, leaving)
            except redis.WatchError:
                continue  # a batch wrote one of them: read again


def _delete(
    pipe: Any, keys: KeyLayout, pairs: Sequence[tuple[str, str]], leaving: dict[int, int]
) -> tuple[int, int]:
    for state_key, segment_key in pairs:
        pipe.delete(state_key)
        pipe.delete(segment_key)
    for segment_id, delta in leaving.items():
        pipe.hincrby(keys.segment_sizes, str(segment_id), delta)
    deleted = pipe.execute()[: 2 * len(pairs)]  # DEL replies: 1 for a key that was there
    states, records = deleted[0::2], deleted[1::2]
    forgotten = _forgotten(states, records)
    if forgotten:
        pipe.hincrby(keys.counters, "forgotten_users", forgotten)
        pipe.execute()
    return sum(states), sum(records)


# One user's state and record, deleted at once (a batch cannot write between the two), and
# the record as it was: the segment whose size the user leaves (nil comes back as None).
_ERASE_USER = """
local record = redis.call('GETDEL', KEYS[2])
return {redis.call('DEL', KEYS[1]), record}
"""


def _take_and_delete(
    client: RedisCluster, keys: KeyLayout, pairs: Sequence[tuple[str, str]]
) -> tuple[int, int]:
    pipe = client.pipeline(transaction=False)
    for state_key, segment_key in pairs:
        # ClusterPipeline refuses eval(); the queued command is routed by its keys all the same.
        pipe.execute_command("EVAL", _ERASE_USER, 2, state_key, segment_key)
    replies = pipe.execute()
    states = [int(deleted) for deleted, _ in replies]
    taken: list[bytes | None] = [record or None for _, record in replies]
    records = [int(raw is not None) for raw in taken]
    for segment_id, delta in _sizes_left(taken).items():
        pipe.hincrby(keys.segment_sizes, str(segment_id), delta)
    forgotten = _forgotten(states, records)
    if forgotten:
        pipe.hincrby(keys.counters, "forgotten_users", forgotten)
    pipe.execute()
    return sum(states), sum(records)


def _forgotten(states: Sequence[int], records: Sequence[int]) -> int:
    """Users of whom a key was there to delete (DEL replies: 1 for a key that was there)."""
    return sum(1 for state, record in zip(states, records, strict=True) if state or record)


def _sizes_left(records: Sequence[bytes | None]) -> dict[int, int]:
    """Segment id -> users leaving it, from the stored records (no one joins any)."""
    left = np.fromiter((_segment_of(raw) for raw in records), np.int64, len(records))
    return segment_size_changes(np.empty(0, np.int64), left)


def _segment_of(raw: bytes | None) -> int:
    """The segment id a stored record names; -1 for none (no record, cold start, not a record
    of this service: nothing to take from a size)."""
    if raw is None:
        return -1
    try:
        segment = orjson.loads(raw).get("segment_id")
    except (orjson.JSONDecodeError, AttributeError):
        return -1
    return segment if isinstance(segment, int) and not isinstance(segment, bool) else -1


def remove_training_rows(client: RedisClient, keys: KeyLayout, user_ids: Sequence[str]) -> int:
    """Remove the rows of ``user_ids`` from the training buffer; returns how many.

    One read of the buffer, then an ``LREM`` per distinct row of theirs (by value: safe while
    the pipeline pushes and trims; each is a scan of the list, about a millisecond of Redis
    at 200,000 rows). Rows written before the key existed (an upgrade's first buffer) cannot
    be told apart.
    """
    digests = {user_digest(u) for u in user_ids}
    rows = client.lrange(keys.training_samples, 0, -1)
    theirs = {row for row in rows if len(row) == _KEYED_ROW_BYTES and row[-KEY_BYTES:] in digests}
    if not theirs:
        return 0
    pipe = client.pipeline(transaction=False)
    for row in theirs:
        pipe.lrem(keys.training_samples, 0, row)
    return sum(int(n) for n in pipe.execute())


def send_tombstones(kafka: KafkaSettings, topics: Sequence[str], user_ids: Sequence[str]) -> int:
    """A tombstone per user on each of ``topics``; returns how many were delivered."""
    outputs = OutputTopics(kafka)
    for topic in topics:
        for user in user_ids:
            outputs.send(topic, user.encode(), None)
    try:
        outputs.deliver()
    except ServerUnavailableError as exc:
        raise ServerUnavailableError(
            f"Kafka (kafka.bootstrap_servers) did not take the tombstones for "
            f"{', '.join(topics)}: {exc}; Redis is erased already: run the command again to "
            "send them"
        ) from None
    return len(topics) * len(user_ids)


def _segments_topics(settings: Settings, namespaces: Sequence[str]) -> list[str]:
    """The segments topic, and each replay namespace's own (``<topic>.replay-<NAME>``) that
    exists."""
    kafka = settings.kafka
    wanted = [kafka.segments_topic] + [
        f"{kafka.segments_topic}.replay-{ns}" for ns in namespaces if ns != settings.redis.namespace
    ]
    if len(wanted) == 1:
        return wanted
    existing = AdminClient(kafka.client_config(), logger=librdkafka_log).list_topics(timeout=30)
    return [t for t in wanted if t == kafka.segments_topic or t in existing.topics]


def namespaces_holding(client: RedisClient, user_ids: Sequence[str], exclude: str) -> list[str]:
    """The known namespaces other than ``exclude`` where any of ``user_ids`` has a state or a
    record (one EXISTS per namespace, per chunk of ids)."""
    holding = []
    for ns in namespace_names(client, exclude):
        if ns == exclude:
            continue
        layout = KeyLayout(ns)
        for start in range(0, len(user_ids), _CHUNK):
            pairs = layout.state_and_segment(user_ids[start : start + _CHUNK])
            # On a cluster redis-py splits a multi-key EXISTS per slot.
            if client.exists(*(key for pair in pairs for key in pair)):
                holding.append(ns)
                break
    return holding


def forget_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg forget USER_ID... | -``."""
    client = settings.redis.connect()
    configured = settings.redis.namespace
    refuse_if_nothing_written(client, configured)  # a misspelt namespace erases nothing
    namespaces = namespace_names(client, configured) if args.all_namespaces else [configured]
    chunks = stdin_user_ids(_CHUNK) if args.user_ids == ["-"] else iter([args.user_ids])
    totals = {ns: Erased(ns) for ns in namespaces}
    users: dict[str, None] = {}  # every id erased, once, in order
    stopped: str | None = None
    try:
        for whole in chunks:
            # The ids before an id that is no text are erased; it and the rest are not.
            bad = next((i for i, u in enumerate(whole) if not is_utf8_text(u)), None)
            chunk = whole if bad is None else whole[:bad]
            if bad is not None:
                stopped = f"user id {whole[bad]!r} is not valid UTF-8: no event can carry it"
            fresh = [u for u in dict.fromkeys(chunk) if u not in users]
            users.update(dict.fromkeys(fresh))
            for ns in namespaces:
                states, records = erase_users(client, KeyLayout(ns), fresh)
                totals[ns].states += states
                totals[ns].records += records
            if stopped is not None:
                break
    except LineTooLongError as exc:
        stopped = f"stdin: {exc}"
    erased = list(users)
    for ns in namespaces:
        totals[ns].training_rows = remove_training_rows(client, KeyLayout(ns), erased)
        total = totals[ns]
        print(
            f"namespace {ns}: deleted {total.states:,} states, {total.records:,} segment "
            f"records, {total.training_rows:,} training rows ({len(erased):,} user ids asked)"
        )
    topics = _segments_topics(settings, namespaces)
    if args.no_tombstones:
        print(f"no tombstones sent to {', '.join(map(repr, topics))} (--no-tombstones)")
    elif erased:
        sent = send_tombstones(settings.kafka, topics, erased)
        print(
            f"{sent:,} tombstones sent to {', '.join(map(repr, topics))} (compacted: Kafka drops "
            "the users' change events there at its next compaction)"
        )
    if not args.all_namespaces and erased:
        elsewhere = namespaces_holding(client, erased, exclude=configured)
        if elsewhere:
            print(
                f"still held in other namespaces: {', '.join(elsewhere)} (replays or earlier "
                "deployments): run again with --all-namespaces to erase them there too"
            )
    print(
        f"not erased here: the users' events on {settings.kafka.events_topic!r} (its retention "
        f"or your source; a replay of them brings the users back) and on the dead-letter "
        f"topics ({settings.kafka.dead_letter_topic!r} and those of replays)"
    )
    if stopped is not None:
        raise ConfigError(f"{stopped}; stopped there: the {len(erased):,} ids before it are erased")
    if not erased:
        raise ConfigError("no user ids given (or none on stdin)")
    return 0
