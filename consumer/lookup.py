"""The lookup client for personalization services: a user's segment record from Redis.

    from consumer.lookup import SegmentLookup
    segments = SegmentLookup.from_url("redis://localhost:6379/0")
    segments.get("u-42")            # SegmentRecord or None
    segments.get_many(["u-1", "u-2"])  # one round trip

The same read from any language is a plain GET of ``<ns>:{<user>}:seg`` (JSON), e.g.
``redis-cli GET 'streamseg:{u-42}:seg'``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import redis

from consumer.redis_keys import KeyLayout
from consumer.segment_record import SegmentRecord
from consumer.settings import Settings


class SegmentLookup:
    """Reads segment records of one namespace."""

    def __init__(self, client: redis.Redis, namespace: str = "streamseg") -> None:
        self.client = client
        self.keys = KeyLayout(namespace)

    @classmethod
    def from_url(cls, url: str, namespace: str = "streamseg") -> SegmentLookup:
        return cls(redis.Redis.from_url(url), namespace)

    def get(self, user_id: str) -> SegmentRecord | None:
        """The user's record, or None if the user has never been seen."""
        raw = self.client.get(self.keys.segment(user_id))
        return None if raw is None else SegmentRecord.model_validate_json(raw)

    def get_many(self, user_ids: Sequence[str]) -> list[SegmentRecord | None]:
        """Records of many users in one MGET, in the order asked."""
        if not user_ids:
            return []
        raws = self.client.mget([self.keys.segment(u) for u in user_ids])
        return [None if r is None else SegmentRecord.model_validate_json(r) for r in raws]


def lookup_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg lookup USER_ID...``: print each record as JSON (null when unknown)."""
    lookup = SegmentLookup(settings.redis.connect(), settings.redis.namespace)
    missing = 0
    for user, record in zip(args.user_ids, lookup.get_many(args.user_ids), strict=True):
        if record is None:
            missing += 1
            print(json.dumps({"user_id": user, "status": "unknown"}))
        else:
            print(record.model_dump_json())
    return 1 if missing == len(args.user_ids) else 0
