"""A refit on demand: ``streamseg model refit`` asks the active trainer for one.

Two keys under the model tag ``{<ns>:model}`` (one slot, so the MULTI below runs on a Redis
Cluster too):

- ``refit-request``: the token of the pending request (``SET .. NX EX 3600``: a second
  request joins a pending one; a request no trainer takes within an hour lapses, rather than
  refit long after its reason);
- ``refit-result``: the answer to the last request answered, JSON ``{"token", "version"}``
  (the version the refit published) or ``{"token", "error"}`` (why it could not be done),
  kept an hour.

The trainer answers once its refit is published, or cannot be done (too few users): in one
MULTI it deletes the request if it still holds that token (a newer request stays for the next
step) and writes the result. A refit that failed, or whose publish was refused because a
rollback, an import or a rename came first, leaves the request for the next step.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import redis

from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient

#: How long a request waits for a trainer, and how long an answer is kept.
REQUEST_SECONDS = 3600


def make_request(client: RedisClient, keys: KeyLayout) -> str:
    """Leave a request for the active trainer and return its token. A request already
    pending is joined, not replaced: one refit answers both, and neither waiter is left
    without an answer."""
    while True:
        token = uuid.uuid4().hex
        if client.set(keys.refit_request, token, ex=REQUEST_SECONDS, nx=True):
            return token
        pending = pending_request(client, keys)
        if pending is not None:
            return pending
        # Taken or lapsed between the two commands: ask again.


def pending_request(client: RedisClient, keys: KeyLayout) -> str | None:
    """The token of the request waiting for a trainer, if any."""
    raw = client.get(keys.refit_request)
    return None if raw is None else raw.decode(errors="replace")


def answer(
    client: RedisClient,
    keys: KeyLayout,
    token: str,
    *,
    version: int | None = None,
    error: str | None = None,
) -> None:
    """Record the outcome of request ``token`` and take the request, unless a newer one
    replaced it meanwhile."""
    result = orjson.dumps(
        {"token": token, "version": version} if error is None else {"token": token, "error": error}
    )
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.refit_request)
                still_ours = pipe.get(keys.refit_request) == token.encode()
                pipe.multi()
                if still_ours:
                    pipe.delete(keys.refit_request)
                pipe.set(keys.refit_result, result, ex=REQUEST_SECONDS)
                pipe.execute()
                return
            except redis.WatchError:
                continue  # a new request came in between: look again


def read_answer(client: RedisClient, keys: KeyLayout, token: str) -> dict[str, Any] | None:
    """The answer to request ``token``, once a trainer gave it."""
    raw = client.get(keys.refit_result)
    if raw is None:
        return None
    try:
        result = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # a hand edit: no answer to anyone's request
    return result if isinstance(result, dict) and result.get("token") == token else None
