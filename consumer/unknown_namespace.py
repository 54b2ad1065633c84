"""A namespace that holds nothing: a misspelt ``--namespace``, told apart from a cold start.

`status`, `lookup` and `model show` read a namespace; one that nothing ever wrote and that
no pointer or replay names is most likely misspelt, and saying so beats printing an empty
deployment ("cold start"), unknown users or no model.
"""

from __future__ import annotations

import redis

from consumer.exceptions import ConfigError
from consumer.redis_keys import KeyLayout, PointerKeys, namespace_text
from consumer.settings import RedisClient, RedisSettings


def known_namespaces(client: RedisClient, pointer: PointerKeys | None = None) -> list[str]:
    """The registered namespaces (`register_namespace`: replays) and those the live and
    previous pointers name, sorted; the configured one is known to its settings only."""
    keys = pointer or PointerKeys()
    names = {namespace_text(v) for v in client.smembers(keys.registry)}
    names.update(namespace_text(client.get(key)) for key in (keys.live, keys.previous))
    return sorted(name for name in names if name)


def refuse_an_unknown_namespace(client: RedisClient, namespace: str) -> None:
    """Raise `ConfigError` naming the known namespaces, unless ``namespace`` is one: a
    registered (replayed into), live or previous namespace without a model yet is a cold start,
    not a misspelling."""
    try:
        known = known_namespaces(client)
    except redis.exceptions.NoPermissionError:  # the least-privilege user reads its own keys
        raise ConfigError(
            f"namespace {namespace!r} holds no data (known namespaces: not readable by this "
            "Redis user): check --namespace or redis.namespace"
        ) from None
    if namespace in known:
        return
    default = RedisSettings.model_fields["namespace"].default
    if default != namespace and written(client, KeyLayout(default)):
        known = sorted({*known, default})
    raise ConfigError(
        f"namespace {namespace!r} holds no data (known namespaces: {', '.join(known) or 'none'})"
        ": check --namespace or redis.namespace"
    )


def written(client: RedisClient, keys: KeyLayout) -> bool:
    """True when a pipeline or trainer has written namespace ``keys.namespace`` (one EXISTS
    per key: on a cluster they sit in different slots)."""
    try:
        return any(
            client.exists(key)
            for key in (keys.model_current, keys.counters, keys.segment_sizes, keys.consumers)
        )
    except redis.exceptions.NoPermissionError:
        return False


def refuse_if_nothing_written(client: RedisClient, namespace: str) -> None:
    """`refuse_an_unknown_namespace` when nothing was ever written in ``namespace``."""
    if not written(client, KeyLayout(namespace)):
        refuse_an_unknown_namespace(client, namespace)
