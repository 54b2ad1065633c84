"""A refit on demand: ``streamseg model refit`` asks the active trainer for one.

Three keys under the model tag ``{<ns>:model}`` (one slot, so the transactions below run on a
Redis Cluster too):

- ``refit-requests``: a counter; each request takes the next number;
- ``refit-request``: present while a request waits (``EX 3600`` from the newest request: a
  request no trainer takes within an hour lapses, rather than refit long after its reason);
- ``refit-result``: the last answer, JSON ``{"covers": n, "version": v}`` (the version a refit
  published) or ``{"covers": n, "error": "..."}`` (why it could not be done), kept an hour.

A refit reads the counter (n) before it reads its rows, so it answers requests 1..n: a
request made while it runs gets a higher number and waits for the next step's refit. Once
the refit is published, or cannot be done (too few users), the trainer writes the answer and,
in the same MULTI, takes the request unless the counter moved on. A refit that failed, or
whose publish was refused because a rollback, an import or a rename came first, answers
nothing and leaves the request for the next step. A waiter accepts the first answer that
covers its number.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
import redis

from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient

#: How long a request waits for a trainer, and how long an answer is kept.
REQUEST_SECONDS = 3600


def make_request(client: RedisClient, keys: KeyLayout) -> int:
    """Ask the active trainer for a refit; returns the request's number."""
    pipe = client.pipeline(transaction=True)
    pipe.incr(keys.refit_requests)
    pipe.set(keys.refit_request, 1, ex=REQUEST_SECONDS)
    number, _ = pipe.execute()
    return int(number)


def is_pending(client: RedisClient, keys: KeyLayout) -> bool:
    """Whether a request waits for a trainer."""
    return bool(client.exists(keys.refit_request))


def newest_request(client: RedisClient, keys: KeyLayout) -> int:
    """The number of the newest request made (0: none): what a refit starting now answers."""
    return int(client.get(keys.refit_requests) or 0)


def answer(
    client: RedisClient,
    keys: KeyLayout,
    covers: int,
    *,
    version: int | None = None,
    error: str | None = None,
) -> None:
    """Answer requests 1..``covers``, and take the request unless a newer one came."""
    outcome: dict[str, Any] = {"covers": covers}
    outcome.update({"version": version} if error is None else {"error": error})
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.refit_requests)
                newest = int(cast(bytes | None, pipe.get(keys.refit_requests)) or 0)
                pipe.multi()
                if newest <= covers:
                    pipe.delete(keys.refit_request)
                pipe.set(keys.refit_result, orjson.dumps(outcome), ex=REQUEST_SECONDS)
                pipe.execute()
                return
            except redis.WatchError:
                continue  # a request came in between: look again


def read_answer(client: RedisClient, keys: KeyLayout, number: int) -> dict[str, Any] | None:
    """The answer that covers request ``number``, once a trainer gave one."""
    raw = client.get(keys.refit_result)
    if raw is None:
        return None
    try:
        result = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # a hand edit: no answer to anyone's request
    if not isinstance(result, dict) or not isinstance(result.get("covers"), int):
        return None
    return result if result["covers"] >= number else None
