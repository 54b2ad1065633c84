"""Per-user state and segment records in Redis: one MGET in, one transaction out, per batch.

On one Redis server (the default) a batch is one MGET and one MULTI/EXEC holding every
user's keys and the namespace-wide keys together; the pipeline's batches read under WATCH of
the partitions' fencing tokens (`StateStore.read_states_fenced`) and write on that connection.

On a Redis Cluster (``redis.cluster = true``) no command may span hash slots, so a batch is:

- read: the users' state keys grouped by the master that owns their slot, one pipelined
  round of GETs per master, all masters sent before any reply is read;
- write: one command per user, grouped per master the same way: ``MSET state record`` (both
  keys carry the user's hash tag, so they share a slot and are written atomically), or
  ``MULTI; SET .. EX; SET .. EX; EXEC`` when ``redis.user_ttl_seconds`` is set (``KEEPTTL``
  instead of ``EX`` for a re-score);
- then the namespace-wide keys (counters, segment sizes, categories, watermark, training
  samples), each a single-key command, in one more pipelined round.

Exactly-once holds on a cluster as on one server: a user's state carries the (partition,
offset) and recent event ids it has applied, and it is written atomically with the user's
record; a redelivered batch skips what is already applied. What a cluster gives up is the
batch-wide transaction: after a crash between the user writes and the namespace-wide round,
the counters and segment sizes miss that one batch (they never count one twice: the retry
sees the events as applied). Statistics, never state. Nor is a cluster write fenced: no
WATCH spans slots.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient
from model.features import STATE_WIDTH, empty_state

log = logging.getLogger(__name__)

_STATE_BYTES = STATE_WIDTH * 8
_EMPTY = empty_state(1).tobytes()

# Replies that mean "ask another node, or again": the slot moved or is moving.
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)

# The cluster path packs its per-user commands itself (RESP): redis-py's generic packing
# costs more than the rest of the batch.
_GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"
_SET = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
_MSET2 = b"*5\r\n$4\r\nMSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def _encode(value: str | bytes | int | float) -> bytes:
    """A command argument as redis-py would send it (floats by repr)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return repr(value).encode()


def _row_bytes(array: np.ndarray) -> list[bytes]:
    """Each row's float64 bytes: one tobytes and slices beat a tobytes per row."""
    rows = np.ascontiguousarray(array, dtype=np.float64)
    blob, width = rows.tobytes(), rows.shape[1] * 8
    return [blob[i * width : (i + 1) * width] for i in range(len(rows))]


def _lpush_rows(key: bytes, rows: np.ndarray) -> bytes:
    """``LPUSH key row...`` in RESP, one element per row's float64 bytes, framed in one numpy
    step: the rows have one length, so every element's header is the same."""
    data = np.ascontiguousarray(rows, dtype=np.float64)
    n, width = len(data), data.shape[1] * 8
    header = b"$%d\r\n" % width
    framed = np.empty((n, len(header) + width + 2), np.uint8)
    framed[:, : len(header)] = np.frombuffer(header, np.uint8)
    framed[:, len(header) : -2] = data.view(np.uint8).reshape(n, width)
    framed[:, -2:] = np.frombuffer(b"\r\n", np.uint8)
    command = b"*%d\r\n$5\r\nLPUSH\r\n$%d\r\n%b\r\n" % (n + 2, len(key), key)
    return command + framed.tobytes()


def _decode_states(raw: Sequence[bytes | None], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, STATE_WIDTH) states from MGET replies (missing: `empty_state`), and the mask of
    values of the wrong size (read as empty too)."""
    sizes = np.fromiter((-1 if v is None else len(v) for v in raw), np.int64, len(raw))
    foreign = (sizes != _STATE_BYTES) & (sizes != -1)
    blob = b"".join(v if v is not None and len(v) == _STATE_BYTES else _EMPTY for v in raw)
    return np.frombuffer(blob, dtype=np.float64).reshape(n, STATE_WIDTH).copy(), foreign


def _pack(args: Sequence[bytes]) -> bytes:
    """One command in RESP, e.g. ``_pack((b"GET", b"k"))``."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


@dataclass
class BatchWrite:
    """Everything one batch writes: atomically (MULTI/EXEC) on one Redis server; per user
    on a cluster (see the module docstring)."""

    user_ids: Sequence[str]
    states: np.ndarray  # (n, STATE_WIDTH) float64
    user_keys: Sequence[tuple[str, str]] | None = None  # (state, segment) keys, if known
    segment_records: Sequence[bytes | None] = ()  # JSON per user, None = leave unchanged
    training_rows: np.ndarray | None = None  # float64 feature rows for the trainer
    counters: Mapping[str, int] = field(default_factory=dict)
    size_changes: Mapping[int, int] = field(default_factory=dict)  # segment id -> +/- users
    new_categories: Mapping[float, str] = field(default_factory=dict)
    watermark_ms: float | None = None
    #: ``<topic>:<partition>`` -> next offset to apply, for ``<ns>:applied-offsets``: with the
    #: states on one server; after them on a cluster (behind after a crash, never ahead).
    applied_offsets: Mapping[str, int] = field(default_factory=dict)
    #: With ``redis.user_ttl_seconds``: keep the keys' expiry (``SET .. KEEPTTL``) instead of
    #: starting it again. A re-score rewrites users who did nothing: starting their expiry
    #: again at every pass kept idle users for ever.
    keep_ttl: bool = False


class StateStore:
    """Reads and writes users' feature state and segment records under one namespace.

    ``client`` is a `redis.Redis` or a `redis.cluster.RedisCluster`; the cluster path is
    chosen from its type (see the module docstring).
    """

    def __init__(
        self,
        client: RedisClient,
        keys: KeyLayout,
        *,
        user_ttl_seconds: int = 0,
        training_buffer_rows: int = 0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.user_ttl_seconds = user_ttl_seconds
        self.training_buffer_rows = training_buffer_rows
        self._cluster = client if isinstance(client, RedisCluster) else None
        #: The connection holding the WATCH of a `read_states_fenced`, which the next `write`
        #: uses for its transaction (redis-py's stubs type pooled connections as Any).
        self._watching: Any = None

    def read_states(
        self, user_ids: Sequence[str], *, state_keys: Sequence[str] | None = None
    ) -> np.ndarray:
        """State vectors of ``user_ids`` in order; users never seen get `empty_state`.

        A stored value of the wrong size (written by something else) is treated as empty;
        `read_states_checked` also says which were.
        """
        return self.read_states_checked(user_ids, state_keys=state_keys)[0]

    def read_states_checked(
        self, user_ids: Sequence[str], *, state_keys: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`read_states`, and a boolean mask of the users whose stored value was not a state
        (a value of another size: another program's, or another streamseg state layout)."""
        self.release_watch()
        if not user_ids:
            return empty_state(0), np.zeros(0, dtype=bool)
        if state_keys is None:
            state_keys = [self.keys.state(u) for u in user_ids]
        # The hot path on one server: a single MGET.
        raw = (
            self.client.mget(state_keys)
            if self._cluster is None
            else read_values(self.client, state_keys)
        )
        return _decode_states(raw, len(user_ids))

    def read_states_fenced(
        self,
        user_ids: Sequence[str],
        *,
        state_keys: Sequence[str],
        partitions: Sequence[str],
        acquire: Sequence[str],
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int | None]]:
        """`read_states_checked` on one server, with the fencing tokens of ``partitions``
        (fields ``<topic>:<partition>`` of ``<ns>:partition-owners``), in one round trip:
        HINCRBY the ``acquire`` ones (a new owner's token), WATCH the hash, HMGET the tokens,
        MGET the states. The next `write` runs on the same connection and is discarded
        (`redis.WatchError`) if any partition got a new owner meanwhile. Returns the states,
        the foreign mask and each partition's stored token (None: no owner recorded).
        """
        assert isinstance(self.client, redis.Redis)  # the cluster path is not fenced
        self.release_watch()
        owners = self.keys.partition_owners.encode()
        fields = [f.encode() for f in partitions]
        keys = [k.encode() for k in state_keys]
        commands = [_pack((b"HINCRBY", owners, f.encode(), b"1")) for f in acquire]
        commands += [
            _pack((b"WATCH", owners)),
            _pack((b"HMGET", owners, *fields)),
            _pack((b"MGET", *keys)),
        ]
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command(commands)
            for _ in range(len(acquire) + 1):  # HINCRBY replies, then WATCH's +OK
                connection.read_response()
            tokens = connection.read_response()
            raw = connection.read_response()
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse it
            pool.release(connection)
            raise
        self._watching = connection
        states, foreign = _decode_states(raw, len(user_ids))
        stored = {f: None if t is None else int(t) for f, t in zip(partitions, tokens, strict=True)}
        return states, foreign, stored

    def release_watch(self) -> None:
        """Drop the WATCH of a fenced read that no write used (its batch failed between)."""
        connection, self._watching = self._watching, None
        if connection is None:
            return
        assert isinstance(self.client, redis.Redis)
        try:
            connection.send_packed_command([b"*1\r\n$7\r\nUNWATCH\r\n"])
            connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        finally:
            self.client.connection_pool.release(connection)

    def write(self, batch: BatchWrite) -> None:
        """Write states, records, samples and counters: one MULTI/EXEC round trip on one
        server; on a cluster each user's state and record atomically, then the rest."""
        if self._cluster is not None:
            self._write_cluster(self._cluster, batch)
            return
        commands = self._user_commands(batch)
        rows = self._training_rows(batch)
        if rows is not None:
            commands.append(_lpush_rows(self.keys.training_samples.encode(), rows))
            commands.append(_pack([_encode(a) for a in self._trim_training_buffer()]))
        commands += [_pack([_encode(a) for a in args]) for args in self._namespace_commands(batch)]
        if commands:
            self._transaction(commands)
        else:
            self.release_watch()

    def _user_commands(self, batch: BatchWrite) -> list[bytes]:
        """The users' states and records as packed commands: one MSET, or SET .. EX each."""
        records = batch.segment_records
        pairs = batch.user_keys or self.keys.state_and_segment(batch.user_ids)
        if not len(pairs):
            return []
        values = _row_bytes(batch.states)
        items: list[tuple[bytes, bytes]] = [
            (state_key.encode(), value) for (state_key, _), value in zip(pairs, values, strict=True)
        ]
        items += [
            (segment_key.encode(), record)
            # records may be shorter than pairs: users past its end keep their record
            for (_, segment_key), record in zip(pairs, records, strict=False)
            if record is not None
        ]
        if self.user_ttl_seconds:
            expiry = self._expiry(batch)
            return [_pack((b"SET", key, value, *expiry)) for key, value in items]
        out = [b"*%d\r\n$4\r\nMSET\r\n" % (2 * len(items) + 1)]
        add = out.append  # appending pieces beats one %-format per pair (measured)
        for key, value in items:
            add(b"$%d\r\n" % len(key))
            add(key)
            add(b"\r\n$%d\r\n" % len(value))
            add(value)
            add(b"\r\n")
        return [b"".join(out)]

    def _expiry(self, batch: BatchWrite) -> tuple[bytes, ...]:
        """The SET options of a user write with ``redis.user_ttl_seconds``."""
        return (b"KEEPTTL",) if batch.keep_ttl else (b"EX", str(self.user_ttl_seconds).encode())

    def _transaction(self, commands: list[bytes]) -> None:
        """Send MULTI, ``commands`` and EXEC in one write; raise the first error any reply holds.

        The hot path packs its own RESP: for a 10k-key MSET, redis-py's generic packing cost
        more than everything else the batch does on the client.
        """
        assert isinstance(self.client, redis.Redis)  # the cluster path never gets here
        pool = self.client.connection_pool
        connection, self._watching = self._watching, None  # a fenced read's, if any
        if connection is None:
            connection = pool.get_connection()
        try:
            connection.send_packed_command([_MULTI, *commands, _EXEC])
            for _ in range(len(commands) + 1):  # +OK, then +QUEUED per command
                connection.read_response()
            replies = connection.read_response()  # EXEC: a reply per command
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            pool.release(connection)
        if replies is None:
            raise redis.exceptions.WatchError(
                "write discarded: a partition of the batch got a new owner since its read"
            )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    def _training_rows(self, batch: BatchWrite) -> np.ndarray | None:
        """The rows to push onto the training buffer (at most its size), or None.

        One list element per row, so the trim keeps exactly the newest rows whatever the
        batch sizes (trimming blobs of varying sizes by count bounded nothing).
        """
        rows = batch.training_rows
        if not self.training_buffer_rows or rows is None or not len(rows):
            return None
        return rows[-self.training_buffer_rows :]

    def _trim_training_buffer(self) -> tuple[str, str, int, int]:
        """LTRIM to the newest ``training_buffer_rows`` rows, right after each LPUSH of rows."""
        return ("LTRIM", self.keys.training_samples, 0, self.training_buffer_rows - 1)

    def _namespace_commands(self, batch: BatchWrite) -> list[tuple[str | bytes | int | float, ...]]:
        """The batch's other writes to namespace-wide keys (single-key commands), as
        arguments; the training buffer's are packed by each write path itself."""
        keys = self.keys
        commands: list[tuple[str | bytes | int | float, ...]] = []
        for name, delta in batch.counters.items():
            if delta:
                commands.append(("HINCRBY", keys.counters, name, delta))
        for segment, delta in batch.size_changes.items():
            if delta:
                commands.append(("HINCRBY", keys.segment_sizes, str(segment), delta))
        if batch.new_categories:
            fields: list[str] = []
            for code, name in batch.new_categories.items():
                fields += (repr(int(code)), name)
            commands.append(("HSET", keys.categories, *fields))
        if batch.watermark_ms is not None:
            # Lua-free max: the watermark only moves forward, whichever consumer writes.
            commands.append(("ZADD", keys.watermark, "GT", batch.watermark_ms, "max"))
        if batch.applied_offsets:
            offsets = [x for pair in batch.applied_offsets.items() for x in pair]
            commands.append(("HSET", keys.applied_offsets, *offsets))
        return commands

    # -- Redis Cluster ---------------------------------------------------------------------

    def _write_cluster(self, cluster: RedisCluster, batch: BatchWrite) -> None:
        records = batch.segment_records
        pairs = list(batch.user_keys or self.keys.state_and_segment(batch.user_ids))
        expiry = self._expiry(batch) if self.user_ttl_seconds else ()
        packed: list[bytes] = []
        replies_per_user: list[int] = []
        values = _row_bytes(batch.states)
        for i, (state_key, segment_key) in enumerate(pairs):
            sk, state = state_key.encode(), values[i]
            record = records[i] if i < len(records) else None
            if expiry:  # SET .. EX per key, in MULTI/EXEC: still one atomic step per user
                sets = [_pack((b"SET", sk, state, *expiry))]
                if record is not None:
                    sets.append(_pack((b"SET", segment_key.encode(), record, *expiry)))
                packed.append(_MULTI + b"".join(sets) + _EXEC)
                replies_per_user.append(len(sets) + 2)
            elif record is not None:
                gk = segment_key.encode()
                packed.append(
                    _MSET2 % (len(sk), sk, len(state), state, len(gk), gk, len(record), record)
                )
                replies_per_user.append(1)
            else:
                packed.append(_SET % (len(sk), sk, len(state), state))
                replies_per_user.append(1)
        if packed:
            replies = _per_master(cluster, [sk for sk, _ in pairs], packed, replies_per_user)
            for i, user_replies in enumerate(replies):
                failed = [r for r in user_replies if isinstance(r, Exception)]
                if failed:
                    record = records[i] if i < len(records) else None
                    self._retry_user_write(cluster, pairs[i], values[i], record, failed)
        pipe = cluster.pipeline(transaction=False)
        rows = self._training_rows(batch)
        if rows is not None:
            pipe.execute_command("LPUSH", self.keys.training_samples, *_row_bytes(rows))
            pipe.execute_command(*self._trim_training_buffer())
        for args in self._namespace_commands(batch):
            pipe.execute_command(*args)
        if len(pipe):
            pipe.execute()

    def _retry_user_write(
        self,
        cluster: RedisCluster,
        keys: tuple[str, str],
        state: bytes,
        record: bytes | None,
        failed: list[Exception],
    ) -> None:
        """Redo one user's write through the cluster client, which follows MOVED / ASK.

        The write sets absolute values, so doing it again is harmless.
        """
        retriable = (*_REDIRECTS, redis.exceptions.ExecAbortError)
        if not all(isinstance(exc, retriable) for exc in failed):
            raise failed[0]
        ex = self.user_ttl_seconds or None
        with cluster.pipeline(transaction=record is not None) as pipe:
            pipe.set(keys[0], state, ex=ex)
            if record is not None:
                pipe.set(keys[1], record, ex=ex)
            pipe.execute()

    def scan_state_keys(self, cursor: int = 0, count: int = 1000) -> tuple[int, list[bytes]]:
        """One SCAN step over this namespace's state keys: (next cursor, keys found).

        Start with cursor 0; a returned 0 ends the pass. On a cluster the cursor walks every
        master in turn (master index in the low digits, that master's cursor above), so one
        pass covers the whole keyspace; a reshard during a pass may skip or repeat keys.
        """
        match = self.keys.state_pattern
        if self._cluster is None:
            next_cursor, found = self.client.scan(cursor, match=match, count=count)
            return int(next_cursor), list(found)
        masters = sorted(self._cluster.get_primaries(), key=lambda node: node.name)
        index, node_cursor = cursor % len(masters), cursor // len(masters)
        client = self._cluster.get_redis_connection(masters[index])
        next_node_cursor, found = client.scan(node_cursor, match=match, count=count)
        if int(next_node_cursor):
            return int(next_node_cursor) * len(masters) + index, list(found)
        index += 1
        return (index if index < len(masters) else 0), list(found)

    # -- namespace-wide reads --------------------------------------------------------------

    def read_counters(self) -> dict[str, int]:
        """The namespace's counters (``<ns>:counters``), by name."""
        raw = self.client.hgetall(self.keys.counters)
        return {
            name.decode(errors="replace"): n for name, n in integer_fields(raw, self.keys.counters)
        }

    def read_segment_sizes(self) -> dict[int, int]:
        """Users per segment id (``<ns>:segment-sizes``)."""
        raw = self.client.hgetall(self.keys.segment_sizes)
        sizes = integer_fields(raw, self.keys.segment_sizes, integer_names=True)
        return {int(segment): n for segment, n in sizes}

    def read_category_names(self) -> dict[float, str]:
        """Category code -> name (``<ns>:categories``); a field that is not a code is left out."""
        raw = self.client.hgetall(self.keys.categories)
        return {
            float(int(code)): name.decode(errors="replace")
            for code, name in raw.items()
            if _is_integer(code)
        }

    def read_watermark(self) -> float | None:
        score = self.client.zscore(self.keys.watermark, "max")
        return None if score is None else float(score)

    def read_applied_offsets(
        self, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """Next offset to apply of each (topic, partition) that ``<ns>:applied-offsets``
        holds; a malformed field is logged and left out."""
        if not partitions:
            return {}
        fields = [f"{topic}:{partition}" for topic, partition in partitions]
        values = self.client.hmget(self.keys.applied_offsets, fields)
        found: dict[tuple[str, int], int] = {}
        for (topic, partition), value in zip(partitions, values, strict=True):
            if value is None:
                continue
            try:
                found[(topic, partition)] = int(value)
            except ValueError:
                log.warning(
                    "ignoring a malformed applied offset %r of %s[%d]", value, topic, partition
                )
        return found


def integer_fields(
    raw: Mapping[bytes, bytes], key: str, *, integer_names: bool = False
) -> list[tuple[bytes, int]]:
    """The fields of a hash of integers that streamseg keeps (counters; segment sizes, whose
    names are integers too), read without trusting them: a field that is not what it should
    be (edited by hand, or another program's) is left out with a warning naming it, so that
    no reader crashes on it."""
    out: list[tuple[bytes, int]] = []
    for name, value in raw.items():
        if _is_integer(value) and (not integer_names or _is_integer(name)):
            out.append((name, int(value)))
        else:
            log.warning("ignoring field %r = %r of %s: not an integer", name[:40], value[:40], key)
    return out


def _is_integer(text: bytes) -> bool:
    """Whether ``text`` is a decimal integer as Redis's HINCRBY writes and reads one."""
    return text.removeprefix(b"-").isdigit() and len(text) <= 20


def read_values(client: RedisClient, keys: Sequence[str]) -> list[bytes | None]:
    """Values of string ``keys`` in order (None = missing), whatever their slots.

    One MGET on one server; on a cluster, GETs grouped per master in one pipelined round
    (not atomic across masters).
    """
    if not isinstance(client, RedisCluster):
        return list(client.mget(keys))
    packed = [_GET % (len(k), k) for k in (key.encode() for key in keys)]
    values: list[bytes | None] = []
    for key, (reply,) in zip(keys, _per_master(client, keys, packed), strict=True):
        if isinstance(reply, _REDIRECTS):
            reply = client.get(key)  # follows MOVED / ASK itself
        elif isinstance(reply, redis.RedisError):
            raise reply
        values.append(reply)
    return values


def _per_master(
    cluster: RedisCluster,
    keys: Sequence[str],
    packed: Sequence[bytes],
    replies_per_item: Sequence[int] | None = None,
) -> list[list[Any]]:
    """Send ``packed[i]`` (RESP) to the master owning ``keys[i]``'s slot; returns each
    item's ``replies_per_item[i]`` replies (default 1), in order.

    One pipelined round: every master's commands are sent before any reply is read, so
    the masters work in parallel. An error reply is returned in its place, not raised.
    """
    slots: dict[int, list[ClusterNode]] = cluster.nodes_manager.slots_cache  # type: ignore[assignment]
    by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
    for i, key in enumerate(keys):
        slot = key_slot(key.encode())
        owners = slots.get(slot)
        if not owners:
            # A ConnectionError is what callers retry (the pipeline pauses and waits).
            cluster.nodes_manager.initialize()
            raise redis.ConnectionError(f"no master serves slot {slot} (cluster down?)")
        node = owners[0]
        entry = by_node.get(node.name)
        if entry is None:
            entry = by_node[node.name] = (node, [])
        entry[1].append(i)
    replies: list[list[Any]] = [[] for _ in keys]
    sent: list[tuple[Any, Any, list[int]]] = []
    try:
        for node, rows in by_node.values():
            pool = cluster.get_redis_connection(node).connection_pool
            conn = pool.get_connection()
            sent.append((pool, conn, rows))
            conn.send_packed_command([b"".join([packed[i] for i in rows])])
        for _, conn, rows in sent:
            for i in rows:
                out = replies[i]
                for _ in range(replies_per_item[i] if replies_per_item else 1):
                    try:
                        out.append(conn.read_response())
                    except redis.ResponseError as exc:  # one command's error reply
                        out.append(exc)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        for _, conn, _ in sent:
            conn.disconnect()  # replies may be half read: never reuse the connection
        cluster.nodes_manager.initialize()  # a master may have failed over: ask again
        raise
    finally:
        for pool, conn, _ in sent:
            pool.release(conn)
    return replies
