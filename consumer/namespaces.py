"""Namespaces side by side: which one is live, promote and roll back atomically, list, drop.

The live namespace is named by the pointer key ``streamseg:live-namespace`` (see
`consumer.redis_keys.PointerKeys`); readers that follow it (``SegmentLookup(client)``) switch
with one write. A promote sets the pointer and remembers the previous value in
``streamseg:previous-namespace`` in the same MULTI, so a rollback is one more switch. A
pipeline with ``pipeline.follow_live_namespace`` moves with the pointer and catches the
namespace up from its ``applied-offsets``; otherwise it keeps writing its configured
``redis.namespace`` and a promoted shadow's features stay as of its replay.

On a Redis Cluster the two pointer keys sit in different slots, so no MULTI spans them: the
live pointer switches in a WATCHed transaction of its own, and ``previous`` is written
beside it in an order that a crash between the two can only turn into a no-op rollback
(``previous`` equal to ``live``), never into a jump to a namespace nobody chose. Listing and
dropping scan every master.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from consumer.exceptions import ConfigError
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout, PointerKeys, namespace_text
from consumer.settings import RedisClient, Settings

log = logging.getLogger(__name__)

_UNLINK_CHUNK = 1000


@dataclass(frozen=True)
class NamespaceInfo:
    """One namespace as `list_namespaces` sees it."""

    name: str
    users: int
    """Users with a state key."""
    model_version: int | None
    """Current model version; None before the first publish."""
    live: bool


def _watched_get(pipe: Any, key: str) -> str | None:
    """GET on a pipeline in WATCH mode (immediate, but typed as buffered by redis-py)."""
    value: bytes | None = pipe.get(key)
    return namespace_text(value)


def live_namespace(client: RedisClient, default: str, pointer: PointerKeys | None = None) -> str:
    """The namespace the pointer names, or ``default`` when it is unset."""
    return namespace_text(client.get((pointer or PointerKeys()).live)) or default


def register_namespace(client: RedisClient, name: str, pointer: PointerKeys | None = None) -> None:
    """Add ``name`` to the registry that `list_namespaces` reads."""
    client.sadd((pointer or PointerKeys()).registry, name)


def promote(
    client: RedisClient,
    name: str,
    pointer: PointerKeys | None = None,
    fallback: str | None = None,
) -> str | None:
    """Make ``name`` live in one MULTI; returns the namespace that was live (None = unset).

    The one that was live is remembered for `rollback`; while the pointer is unset that is
    ``fallback``, the namespace readers use then (the configured one), so a first promote
    can be rolled back too. Promoting the namespace that is live changes nothing (a retried
    promote must not make it its own previous: the way back would be lost). Refuses
    (`ConfigError`) a namespace without a published model: readers would get records of a
    namespace nobody built.
    """
    keys = pointer or PointerKeys()
    if ModelStore(client, KeyLayout(name)).current_version() is None:
        raise ConfigError(f"namespace {name!r} has no published model; replay into it first")
    cluster = isinstance(client, RedisCluster)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.live)
                previous = _watched_get(pipe, keys.live)
                remembered = previous or fallback
                if remembered == name:
                    pipe.unwatch()
                    log.info("namespace %s is live already: nothing changed", name)
                    return previous
                if cluster and remembered is not None:
                    # Another slot: written first, so a crash before the switch leaves
                    # previous == live (a rollback is a no-op), never a wrong target.
                    client.set(keys.previous, remembered)
                pipe.multi()
                if remembered is not None and not cluster:
                    pipe.set(keys.previous, remembered)
                pipe.set(keys.live, name)
                pipe.execute()
                break
            except redis.WatchError:
                continue  # another promote won the race: read its result and go again
    log.info("live namespace: %s -> %s", previous, name)
    return previous


def rollback(client: RedisClient, pointer: PointerKeys | None = None) -> str:
    """Swap the live and the previous namespace in one MULTI; returns the new live one.

    On a cluster the live pointer switches first and ``previous`` follows (another slot).
    """
    keys = pointer or PointerKeys()
    cluster = isinstance(client, RedisCluster)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                if cluster:  # previous is in another slot: read, not watched
                    pipe.watch(keys.live)
                    live = _watched_get(pipe, keys.live)
                    previous = namespace_text(client.get(keys.previous))
                else:
                    pipe.watch(keys.live, keys.previous)
                    live = _watched_get(pipe, keys.live)
                    previous = _watched_get(pipe, keys.previous)
                if previous is None or live is None:
                    raise ConfigError(
                        "no previous namespace to roll back to (never promoted, or the "
                        "previous namespace was dropped)"
                    )
                pipe.multi()
                pipe.set(keys.live, previous)
                if not cluster:
                    pipe.set(keys.previous, live)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    if cluster:
        # After the switch: a crash before this line leaves previous == live, a no-op.
        client.set(keys.previous, live)
    log.info("live namespace rolled back: %s -> %s", live, previous)
    return previous


def count_users(client: RedisClient, name: str) -> int:
    """Users with a state key in namespace ``name`` (one SCAN over the keyspace; on a
    cluster, over every master)."""
    return sum(1 for _ in client.scan_iter(match=KeyLayout(name).state_pattern, count=1000))


def namespace_names(
    client: RedisClient, configured: str, pointer: PointerKeys | None = None
) -> list[str]:
    """The configured namespace, the live and previous ones and every registered one, sorted."""
    keys = pointer or PointerKeys()
    names = {configured, live_namespace(client, configured, keys)}
    names.update(n for n in (namespace_text(v) for v in client.smembers(keys.registry)) if n)
    previous = namespace_text(client.get(keys.previous))
    if previous:
        names.add(previous)
    return sorted(names)


def list_namespaces(
    client: RedisClient, configured: str, pointer: PointerKeys | None = None
) -> list[NamespaceInfo]:
    """`namespace_names`, each with its user count (a SCAN) and model version."""
    live = live_namespace(client, configured, pointer)
    return [
        NamespaceInfo(
            name=name,
            users=count_users(client, name),
            model_version=ModelStore(client, KeyLayout(name)).current_version(),
            live=name == live,
        )
        for name in namespace_names(client, configured, pointer)
    ]


def drop_namespace(
    client: RedisClient, name: str, configured: str, pointer: PointerKeys | None = None
) -> int:
    """Delete every key of namespace ``name`` (SCAN + UNLINK); returns the number deleted.

    On a cluster the SCAN covers every master and the UNLINKs are split per slot.

    Refuses (`ConfigError`) the live namespace and the configured one, which the pipeline
    writes. The pointer keys themselves are never deleted.
    """
    keys = pointer or PointerKeys()
    live = live_namespace(client, configured, keys)
    if name in (live, configured):
        # Without a live pointer the configured namespace is also the live one: name the
        # reason the user can act on first.
        which = "configured (the pipeline writes it)" if name == configured else "live"
        raise ConfigError(f"refusing to drop namespace {name!r}: it is the {which} namespace")
    layout = KeyLayout(name)
    protected = {keys.live, keys.previous, keys.registry}
    deleted = 0
    for pattern in (f"{name}:*", f"{layout.model_current[: -len('current')]}*"):
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            if namespace_text(key) in protected:
                continue
            batch.append(key)
            if len(batch) >= _UNLINK_CHUNK:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    client.srem(keys.registry, name)
    if namespace_text(client.get(keys.previous)) == name:
        client.delete(keys.previous)  # a rollback must not point at nothing
    log.info("dropped namespace %s (%d keys)", name, deleted)
    return deleted


def namespace_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg promote|rollback-namespace|namespaces|drop``."""
    client = settings.redis.connect()
    configured = settings.redis.namespace
    if args.command == "promote" and not args.rollback:
        if not args.name:
            raise ConfigError("promote needs a NAME (or --rollback)")
        previous = promote(client, args.name, fallback=configured)
        if (previous or configured) == args.name:
            print(f"live namespace: {args.name} (already live: nothing changed)")
        else:
            print(f"live namespace: {args.name} (was {previous or configured})")
        return 0
    if args.command == "promote" and args.name:
        raise ConfigError(f"promote --rollback takes no NAME (got {args.name!r})")
    if args.command in ("promote", "rollback-namespace"):
        print(f"live namespace: {rollback(client)}")
        return 0
    if args.command == "namespaces":
        print(f"  {'namespace':<24} {'users':>10}  model")
        for info in list_namespaces(client, configured):
            mark = "*" if info.live else " "
            version = f"v{info.model_version}" if info.model_version is not None else "none"
            print(f"{mark} {info.name:<24} {info.users:>10}  {version}")
        return 0
    if args.command == "drop":
        deleted = drop_namespace(client, args.name, configured)
        if deleted:
            print(f"dropped namespace {args.name}: {deleted} keys")
        else:
            print(f"namespace {args.name} had no keys: nothing to drop (see streamseg namespaces)")
        return 0
    raise ConfigError(f"unknown namespace command {args.command!r}")
