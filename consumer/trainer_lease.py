"""The trainer lease: exactly one active trainer per namespace.

A Redis key (``{<ns>:model}:trainer-lease``, SET NX PX) holds ``host:pid:token`` of the
trainer that may publish; it renews the key every third of ``trainer.lease_seconds`` (a Lua
compare-and-extend), also from a thread while a step fits (`TrainerLease.kept`), for at most
``trainer.max_step_seconds``. A standby trainer waits for the key to lapse. Publishes are
fenced on the token (`consumer.model_store.ModelStore.publish_next`), so a trainer that lost
the lease mid-step cannot publish.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from consumer.settings import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)

# Renew the lease only if we still hold it: compare-and-extend must be atomic.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def lease_holder(value: bytes | None) -> str | None:
    """``host:pid`` of the trainer whose lease value (``host:pid:token``) this is; None for no
    lease."""
    if value is None:
        return None
    host_pid, _, _ = value.decode(errors="replace").rpartition(":")
    return host_pid or "an older trainer"


class TrainerLease:
    """A Redis lease (SET NX PX) naming the one active trainer of a namespace."""

    def __init__(self, client: RedisClient, key: str, seconds: float) -> None:
        self.client = client
        self.key = key
        self.ms = int(seconds * 1000)
        # Names the holder for whoever waits: host:pid, and a random part that is ours alone.
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        # The key is the lease's own, so the script runs on a cluster too (types-redis does
        # not know RedisCluster.register_script; redis-py has it).
        self._renew = client.register_script(_RENEW)  # type: ignore[union-attr]

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ms))

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.token, self.ms]))

    def holder(self) -> str | None:
        """``host:pid`` of the trainer holding the lease, or None when it is free."""
        return lease_holder(self.client.get(self.key))

    def release(self) -> None:
        if self.client.get(self.key) == self.token.encode():
            self.client.delete(self.key)

    @contextmanager
    def kept(self, at_most_seconds: float) -> Iterator[None]:
        """Renew the lease from a thread while the block runs (a training step), for at most
        ``at_most_seconds``: a step that runs longer is taken as hung, and its lease lapses so
        that a standby trainer takes over.

        A step on a large shop outlasts the lease: a refit of 1,000,000 rows took 7.5 s here
        against the default 10 s lease. Renewed only between steps, the lease lapsed during
        the fit, its publish was refused, and the next step lapsed again: the model never
        changed, with one trainer or with two taking turns.
        """
        keeper = LeaseKeeper(self, at_most_seconds)
        keeper.start()
        try:
            yield
        finally:
            keeper.stop()


class LeaseKeeper(threading.Thread):
    """Renews a `TrainerLease` every third of its term until stopped, lost, or
    ``at_most_seconds`` after it started."""

    def __init__(self, lease: TrainerLease, at_most_seconds: float) -> None:
        super().__init__(name="streamseg-lease-keeper", daemon=True)
        self.lease = lease
        self.at_most_seconds = at_most_seconds
        self._stopped = threading.Event()

    def run(self) -> None:
        every = self.lease.ms / 3000
        give_up_at = time.monotonic() + self.at_most_seconds
        while not self._stopped.wait(every):
            if time.monotonic() >= give_up_at:
                log.error(
                    "the training step has run for %.0f s (trainer.max_step_seconds): taken as "
                    "hung, the lease is no longer renewed and a standby trainer can take over",
                    self.at_most_seconds,
                )
                return
            try:
                if not self.lease.renew():
                    return  # lost: the publish is refused and the main loop says so
            except REDIS_ERRORS as exc:
                # The publish's fence decides; the main loop reports the outage after the step.
                log.debug("lease renewal during a step failed: %s", exc)

    def stop(self) -> None:
        self._stopped.set()
        self.join()
