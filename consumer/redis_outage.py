"""Waiting out a Redis outage: consumption pauses and the work is retried with back-off.

An error that means "Redis cannot take this now" (connection lost, timeout, loading,
read-only after a failover, out of memory, a cluster mid-failover or mid-migration) pauses;
any other error (a command Redis refuses) is a bug and is raised (by `retry_while_unavailable`
as `ServerUnavailableError`, naming what was being read). Nothing is stored to Kafka while the
work has not gone through, so an outage delays events and never loses one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.exceptions import ServerUnavailableError
from consumer.metrics import PipelineMetrics

log = logging.getLogger(__name__)

#: An outage is logged when it begins and again every this many seconds.
OUTAGE_LOG_SECONDS = 30.0
#: Longest pause between two tries.
_MAX_DELAY_SECONDS = 5.0

# Errors that mean "Redis cannot take this now" (retry later), not "this command is wrong".
_UNAVAILABLE_PREFIXES = ("OOM", "READONLY", "MISCONF", "EXECABORT", "BUSY", "LOADING", "MASTERDOWN")

T = TypeVar("T")


class StopRequested(Exception):
    """Raised while waiting on Redis when a stop was asked for: nothing of the work in hand
    was stored, so its records are redelivered."""


def redis_is_unavailable(exc: redis.RedisError) -> bool:
    """Whether ``exc`` says Redis cannot take commands now (worth a retry)."""
    transient = (
        redis.ConnectionError,
        redis.TimeoutError,
        redis.BusyLoadingError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.OutOfMemoryError,  # type: ignore[attr-defined]  # stubs lag redis-py
        redis.exceptions.ExecAbortError,
        # Redis Cluster: a failover or a slot migration in progress.
        redis.exceptions.ClusterError,
        redis.exceptions.TryAgainError,
    )
    if isinstance(exc, transient):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES)


def until_redis_answers(
    work: Callable[[], None],
    *,
    consumer: Consumer,
    metrics: PipelineMetrics,
    stopping: Callable[[], bool],
    lag_every_seconds: float,
) -> None:
    """Run ``work``; while Redis is unavailable, pause ``consumer`` and retry with back-off.

    While paused, rebalance callbacks are still served and the lag gauge is measured every
    ``lag_every_seconds``. Raises `StopRequested` when ``stopping()`` turns true meanwhile.
    """
    delay = 0.1
    paused = False
    since = said_at = measured_at = 0.0
    while True:
        try:
            work()
            break
        except (redis.RedisError, redis.exceptions.SlotNotCoveredError) as exc:
            # SlotNotCoveredError (a cluster mid-failover) is not a RedisError.
            if isinstance(exc, redis.RedisError) and not redis_is_unavailable(exc):
                raise
            metrics.redis_errors.inc()
            now = time.monotonic()
            if not paused:
                paused = True
                since = said_at = now
                metrics.set_paused(True)
                log.warning("Redis unavailable (%s); consumption paused", exc)
            elif now - said_at >= OUTAGE_LOG_SECONDS:
                said_at = now
                log.warning(
                    "Redis still unavailable after %.0f s (%s); consumption paused",
                    now - since,
                    exc,
                )
            if now - measured_at >= lag_every_seconds:
                measured_at = now
                _measure_lag_paused(consumer, metrics)
            _serve_callbacks_paused(consumer)
            metrics.polled()  # a wait, not a stuck loop
            if stopping():
                raise StopRequested from exc
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_SECONDS)
    if paused:
        consumer.resume(consumer.assignment())
        metrics.set_paused(False)
        log.info("Redis is back; consumption resumed")


def retry_while_unavailable(read: Callable[[], T], *, seconds: float, what: str) -> T:
    """``read()``, retried with back-off while Redis is unavailable, for up to ``seconds``;
    then `ServerUnavailableError` naming ``what`` was being read."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return read()
        except redis.RedisError as exc:
            if not redis_is_unavailable(exc) or time.monotonic() > deadline:
                raise ServerUnavailableError(f"cannot read {what}: {exc}") from exc
            log.warning("Redis unavailable (%s) while reading %s", exc, what)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_SECONDS)


def _measure_lag_paused(consumer: Consumer, metrics: PipelineMetrics) -> None:
    """Set the lag gauge from the brokers' high watermarks and the consumer's positions:
    paused partitions fetch nothing, so librdkafka's statistics would freeze it just when
    the lag grows."""
    lags: dict[tuple[str, int], int] = {}
    try:
        for tp in consumer.position(consumer.assignment()):
            _, high = consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
            if tp.offset >= 0:
                lags[(tp.topic, tp.partition)] = max(0, high - tp.offset)
    except KafkaException as exc:  # the gauge keeps its last value
        log.debug("lag not measured while paused: %s", exc)
        return
    metrics.observe_lags(lags)


def _serve_callbacks_paused(consumer: Consumer) -> None:
    """Serve rebalance callbacks without consuming: partitions assigned meanwhile are
    paused too, and a message poll returns anyway is sought back, not dropped."""
    consumer.pause(consumer.assignment())
    message = consumer.poll(0)
    if message is not None and message.error() is None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is not None and partition is not None and offset is not None:
            consumer.seek(TopicPartition(topic, partition, offset))
    consumer.pause(consumer.assignment())
