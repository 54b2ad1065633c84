"""The lookup client for personalization services: a user's segment record from Redis.

    from consumer.lookup import SegmentLookup
    segments = SegmentLookup.from_url("redis://localhost:6379/0")
    segments.get("u-42")            # SegmentRecord or None
    segments.get_many(["u-1", "u-2"])  # one round trip
    live = SegmentLookup.from_url(url, namespace=None, fallback_namespace="shop1")
    # ^ follows streamseg:live-namespace; before the first promote, reads shop1
    clustered = SegmentLookup.from_url(url, cluster=True)  # a node of a Redis Cluster

The same read from any language is a plain GET of ``<ns>:{<user>}:seg`` (JSON), e.g.
``redis-cli GET 'streamseg:{u-42}:seg'``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

import redis
from redis.cluster import RedisCluster

from consumer.event_mapping import LineTooLongError
from consumer.exceptions import ConfigError
from consumer.redis_keys import KeyLayout, PointerKeys, escape_user_id
from consumer.segment_record import SegmentRecord
from consumer.settings import RedisClient, Settings
from consumer.state_store import read_values
from consumer.unknown_namespace import refuse_if_nothing_written
from consumer.user_ids import is_utf8_text, stdin_user_ids

log = logging.getLogger(__name__)

# Ids of `lookup -` per round trip.
_STDIN_CHUNK = 5000

# Pointer and records in one server-side step, so an answer is never half from one namespace
# and half from another. The keys are built here from KeyLayout's format: <ns>:{<id>}:seg.
_FOLLOW_POINTER = """
local ns = redis.call('GET', KEYS[1])
if not ns then ns = ARGV[1] end
local out = {}
for i = 2, #ARGV, 1000 do
  local chunk = {}
  for j = i, math.min(i + 999, #ARGV) do
    chunk[#chunk + 1] = ns .. ':{' .. ARGV[j] .. '}:seg'
  end
  local values = redis.call('MGET', unpack(chunk))
  for k = 1, #chunk do out[#out + 1] = values[k] end
end
return {ns, out}
"""


class SegmentLookup:
    """Reads segment records of one namespace, or of the live one (``namespace=None``).

    Following the pointer (`consumer.redis_keys.PointerKeys`), every `get` / `get_many` reads
    the pointer and the records in one Lua call: each answer is wholly from one namespace even
    while ``streamseg promote`` switches it. With the pointer unset, ``fallback_namespace``
    is read. On a Redis Cluster (``client`` a `RedisCluster`) the pointer and the records
    live in different slots, so no script can read both: the pointer is read first, then
    that namespace's records (grouped per master). The answer is still wholly from one
    namespace, the one the pointer named when the read began.
    """

    def __init__(
        self,
        client: RedisClient,
        namespace: str | None = "streamseg",
        *,
        fallback_namespace: str = "streamseg",
        pointer: PointerKeys | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.keys = KeyLayout(namespace or fallback_namespace)
        self.fallback_namespace = fallback_namespace
        self.pointer = pointer or PointerKeys()
        # No script on a cluster: it would read keys of several slots.
        self._follow = (
            None if isinstance(client, RedisCluster) else client.register_script(_FOLLOW_POINTER)
        )
        self.last_namespace: str | None = namespace
        """Namespace the last answer came from."""

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str | None = "streamseg",
        *,
        cluster: bool = False,
        fallback_namespace: str = "streamseg",
    ) -> SegmentLookup:
        """A lookup on the Redis at ``url``; ``cluster=True`` when it is a Redis Cluster node.

        Following the live pointer (``namespace=None``), pass the deployment's
        ``redis.namespace`` as ``fallback_namespace``: it is what the pointer means before the
        first promote (what ``streamseg namespaces`` and ``lookup --live`` read then).
        """
        client: RedisClient = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
        return cls(client, namespace, fallback_namespace=fallback_namespace)

    def get(self, user_id: str | int) -> SegmentRecord | None:
        """The user's record (`consumer.segment_record.SegmentRecord`), or None if the user
        has never been seen. An integer id is its decimal string, as in the event contract."""
        return self.get_many([user_id])[0]

    def get_many(self, user_ids: Sequence[str | int]) -> list[SegmentRecord | None]:
        """Records of many users in one round trip (MGET or one Lua call), in the order asked."""
        raws = self.get_many_raw(user_ids)
        return [None if r is None else SegmentRecord.model_validate_json(r) for r in raws]

    def get_many_raw(self, user_ids: Sequence[str | int]) -> list[bytes | None]:
        """The stored JSON of many users' records, byte for byte, as `get_many` reads them."""
        if not user_ids:
            return []
        users = [u if isinstance(u, str) else str(u) for u in user_ids]
        if self.namespace is None and self._follow is not None:
            ns, raws = self._follow(
                keys=[self.pointer.live],
                args=[self.fallback_namespace, *(escape_user_id(u) for u in users)],
            )
            self.last_namespace = ns.decode() if isinstance(ns, bytes) else str(ns)
        elif self.namespace is None:  # a cluster: the pointer, then that namespace's records
            live = self.client.get(self.pointer.live)
            ns = live.decode() if isinstance(live, bytes) else self.fallback_namespace
            keys = KeyLayout(ns)
            raws = read_values(self.client, [keys.segment(u) for u in users])
            self.last_namespace = ns
        else:
            raws = read_values(self.client, [self.keys.segment(u) for u in users])
        return list(raws)


def lookup_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg lookup USER_ID...``: print each stored record as it is (the JSON a
    ``GET`` returns), or ``{"user_id":...,"status":"unknown"}`` for a user never seen; exit
    status 1 when every user is unknown, 2 when nothing was ever written in the namespace
    (a misspelt ``--namespace``). ``--live``: the namespace the live pointer names.
    ``-`` as the only id: the ids are the lines of stdin, read and looked up in chunks."""
    configured = settings.redis.namespace
    lookup = SegmentLookup(
        settings.redis.connect(), None if args.live else configured, fallback_namespace=configured
    )
    chunks = stdin_user_ids(_STDIN_CHUNK) if args.user_ids == ["-"] else iter([args.user_ids])
    asked = missing = 0
    said_not_text = False
    try:
        for users in chunks:
            asked += len(users)
            lines = []
            readable = [u for u in users if is_utf8_text(u)]
            if len(readable) < len(users) and not said_not_text:
                said_not_text = True
                log.warning(
                    "user id %r is not valid UTF-8 (a file in another encoding?): no event can "
                    "carry it, so it is unknown; convert the ids to UTF-8 (iconv -t utf-8)",
                    next(u for u in users if not is_utf8_text(u)),
                )
            answers = iter(lookup.get_many_raw(readable))
            for user in users:
                raw = next(answers) if is_utf8_text(user) else None
                if raw is None:
                    missing += 1
                    # An undecodable byte as U+FFFD: strict JSON holds no lone surrogate.
                    printable = user.encode(errors="surrogateescape").decode(errors="replace")
                    unknown = {"user_id": printable, "status": "unknown"}
                    lines.append(json.dumps(unknown, separators=(",", ":")))
                else:
                    lines.append(raw.decode(errors="replace"))
            print("\n".join(lines), flush=True)
    except LineTooLongError as exc:  # after the answers so far
        raise ConfigError(f"stdin, after {asked:,} ids: {exc}") from None
    if not asked:
        raise ConfigError("no user ids on stdin (one per line)")
    if missing == asked:  # a misspelt namespace answers "unknown" for everyone
        refuse_if_nothing_written(lookup.client, lookup.last_namespace or configured)
    return 1 if missing == asked else 0
