"""The trainer lease: one holder at a time, renewed while a step runs, and let go when a
step hangs (against a real Redis)."""

from __future__ import annotations

import time

import pytest
import redis

from consumer.redis_keys import KeyLayout
from consumer.trainer_lease import TrainerLease

pytestmark = [pytest.mark.redis]


def test_only_one_trainer_holds_the_lease(redis_client: redis.Redis, namespace: str) -> None:
    key = KeyLayout(namespace).trainer_lease
    first = TrainerLease(redis_client, key, seconds=2)
    second = TrainerLease(redis_client, key, seconds=2)
    assert first.acquire()
    assert not second.acquire()
    assert not second.renew()
    first.release()
    assert second.acquire()


def test_a_kept_lease_outlives_its_term_and_stops_being_renewed_after(
    redis_client: redis.Redis, namespace: str
) -> None:
    lease = TrainerLease(redis_client, KeyLayout(namespace).trainer_lease, seconds=1.2)
    assert lease.acquire()
    with lease.kept(at_most_seconds=60):
        time.sleep(2.5)
        assert redis_client.get(lease.key) == lease.token.encode()
    time.sleep(1.5)  # no thread renews it any more
    assert redis_client.get(lease.key) is None


def test_a_hung_step_lets_its_lease_lapse_so_that_a_standby_takes_over(
    redis_client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewed for as long as the step ran, a hung step (a fit that never returns) kept its
    lease forever and no standby could take over. After ``trainer.max_step_seconds`` the
    keeper stops renewing."""
    key = KeyLayout(namespace).trainer_lease
    lease = TrainerLease(redis_client, key, seconds=1.2)
    standby = TrainerLease(redis_client, key, seconds=1.2)
    assert lease.acquire()
    with caplog.at_level("ERROR", logger="consumer.trainer_lease"), lease.kept(at_most_seconds=1.0):
        time.sleep(1.0)
        assert not standby.acquire()  # renewed meanwhile
        time.sleep(2.5)  # past the step's limit and a lease term
        assert standby.acquire()
    assert "taken as hung" in caplog.text
