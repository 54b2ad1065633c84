"""``streamseg status``: the state of a running deployment, read from Redis and Kafka.

Also the writing side of one part of it: every consumer keeps a small heartbeat in the hash
``<ns>:consumers`` (member id -> JSON ``{"last_batch_at", "seen_at", "partitions", "host",
"pid", "records"}``, times in epoch seconds), written every ``observability.heartbeat_seconds``,
never per batch.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from consumer import refit_request
from consumer.failures import report_failure
from consumer.kafka_clients import consumer_config
from consumer.logs import librdkafka_log
from consumer.metrics import PipelineMetrics
from consumer.model_store import ModelStore, imported_at, renamed_at
from consumer.namespaces import live_namespace
from consumer.redis_keys import KeyLayout
from consumer.segment_record import iso_ms
from consumer.settings import RedisClient, Settings
from consumer.state_store import StateStore
from consumer.times import readable_time
from consumer.trainer import ROWS_COUNTER_METRIC
from consumer.trainer_lease import lease_holder
from consumer.unknown_namespace import refuse_an_unknown_namespace

if TYPE_CHECKING:
    from model.model_format import SegmentModel

log = logging.getLogger(__name__)


@with_config(ConfigDict(allow_inf_nan=False))
class HeartbeatRecord(TypedDict):
    """One consumer's heartbeat, a JSON object in ``<ns>:consumers`` (epoch seconds)."""

    last_batch_at: float | None
    seen_at: float
    partitions: list[str]
    host: str
    pid: int
    records: int


_HEARTBEAT = TypeAdapter(HeartbeatRecord)


class ConsumerHeartbeat:
    """Writes this consumer's heartbeat and refreshes the slow-moving gauges, every few seconds.

    Also logs one line when records were dead-lettered since the previous beat (a burst), so
    the log shows dead letters without a line per record or per batch.
    """

    def __init__(
        self,
        client: RedisClient,
        keys: KeyLayout,
        metrics: PipelineMetrics,
        interval_seconds: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.interval_seconds = interval_seconds
        self.last_batch_at: float | None = None  # epoch seconds of the last batch
        self.member_id: str | None = None
        self._due_at = 0.0
        self._reasons_seen: Counter[str] = Counter()

    def due(self) -> bool:
        """True at most once per interval (monotonic clock)."""
        now = time.monotonic()
        if now < self._due_at:
            return False
        self._due_at = now + self.interval_seconds
        return True

    def beat(
        self,
        member_id: str,
        partitions: Iterable[tuple[str, int]],
        model: SegmentModel | None,
        records: int,
        reasons: Counter[str],
    ) -> None:
        """Write the heartbeat, refresh segment-size gauges, log a dead-letter burst."""
        burst = reasons - self._reasons_seen
        if burst:
            log.warning(
                "dead-lettered %d records since the last heartbeat: %s",
                sum(burst.values()),
                dict(burst),
            )
        self._reasons_seen = Counter(reasons)
        previous = self.member_id
        self.member_id = member_id or f"{socket.gethostname()}-{os.getpid()}"
        beat: HeartbeatRecord = {
            "last_batch_at": self.last_batch_at,
            "seen_at": time.time(),
            "partitions": sorted(f"{t}[{p}]" for t, p in partitions),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "records": records,
        }
        try:
            if previous not in (None, self.member_id):  # joined the group, or rejoined
                self.client.hdel(self.keys.consumers, previous)
            self.client.hset(self.keys.consumers, self.member_id, orjson.dumps(beat))
            self._forget_the_long_silent(beat["seen_at"])
            sizes = StateStore(self.client, self.keys).read_segment_sizes()
        except redis.RedisError as exc:
            log.debug("heartbeat not written: %s", exc)
            return
        names = dict(zip(model.ids, model.names, strict=True)) if model else {}
        self.metrics.set_segment_sizes({k: v for k, v in sizes.items() if v > 0}, names)

    def _forget_the_long_silent(self, now: float) -> None:
        """Remove the heartbeats silent for `FORGOTTEN_AFTER_SECONDS`: consumers killed
        without a clean stop, which `status` would otherwise list as stale for ever. A value
        that is no heartbeat is not ours to remove."""
        beats = _read_heartbeats(self.client, self.keys, warn=False)
        silent = silent_members(beats, FORGOTTEN_AFTER_SECONDS, now)
        if silent:
            self.client.hdel(self.keys.consumers, *silent)
            log.info(
                "removed %d heartbeats silent for over %d s (consumers stopped without a "
                "clean stop): %s",
                len(silent),
                FORGOTTEN_AFTER_SECONDS,
                ", ".join(silent),
            )

    def forget(self) -> None:
        """Remove this consumer's heartbeat (on a clean stop)."""
        if self.member_id is None:
            return
        try:
            self.client.hdel(self.keys.consumers, self.member_id)
        except redis.RedisError as exc:
            log.debug("heartbeat not removed: %s", exc)


# -- reading ---------------------------------------------------------------------------------


def deployment_status(settings: Settings, *, client: RedisClient | None = None) -> dict[str, Any]:
    """Everything `status` prints, as a JSON-able dict (times in epoch seconds).

    A Kafka that does not answer, or refuses, does not hide what Redis holds: ``lag`` is then
    None and ``kafka_error`` says why (it is None otherwise).
    """
    status = _redis_status(settings, client or settings.redis.connect())
    status.update(_kafka_status(settings))
    return status


def _redis_status(settings: Settings, client: RedisClient) -> dict[str, Any]:
    """The part of `deployment_status` that Redis holds."""
    keys = KeyLayout(settings.redis.namespace)
    model = ModelStore(client, keys).load_current()
    store = StateStore(client, keys)
    sizes = store.read_segment_sizes()
    names = dict(zip(model.ids, model.names, strict=True)) if model else {}
    tiers = dict(zip(model.ids, model.tiers, strict=True)) if model else {}
    held = {i for i, n in sizes.items() if n > 0}  # a dropped segment once its users moved: gone
    segments = [
        {"segment_id": i, "segment": names.get(i), "tier": tiers.get(i), "users": sizes.get(i, 0)}
        for i in sorted(held | set(names))
    ]
    counters = dict(sorted(store.read_counters().items()))
    consumers = _read_heartbeats(client, keys)
    heartbeat_seconds = settings.observability.heartbeat_seconds
    lease = cast(bytes | None, client.get(keys.trainer_lease))
    watermark_ms = store.read_watermark()
    rows_then = model.metrics.extra.get(ROWS_COUNTER_METRIC) if model else None
    return {
        "namespace": keys.namespace,
        "live_namespace": _live_namespace_if_readable(client, keys.namespace),
        "model_version": model.model_version if model else None,
        "model_created_at": model.created_at.isoformat() if model else None,
        "model_imported_at": _iso(imported_at(model)) if model else None,
        "model_renamed_at": _iso(renamed_at(model)) if model else None,
        # Since it became this deployment's: an import keeps its fit time as created_at.
        "model_age_seconds": time.time() - _in_use_since(model).timestamp() if model else None,
        # Rows the pipeline pushed since the current model's were read: what an update
        # waits for (trainer.update_rows).
        "training_rows_since_model": (
            max(0, counters.get("training_rows", 0) - int(rows_then))
            if rows_then is not None
            else None
        ),
        "watermark": watermark_ms / 1000.0 if watermark_ms is not None else None,
        "trainer_active": lease is not None,
        "trainer": lease_holder(lease),
        # A `model refit` no trainer has taken yet.
        "refit_requested": refit_request.is_pending(client, keys),
        "segments": segments,
        "counters": counters,
        "consumers": consumers,
        "stale_consumers": stale_members(consumers, heartbeat_seconds, time.time()),
        "heartbeat_seconds": heartbeat_seconds,
    }


def _kafka_status(settings: Settings) -> dict[str, Any]:
    """``lag`` (`group_lag`) and ``kafka_error``: None, or the line that says why Kafka gave
    no lag, naming its address as ``run`` does."""
    try:
        return {"lag": group_lag(settings, timeout=KAFKA_TIMEOUT_SECONDS), "kafka_error": None}
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        code = error.code() if isinstance(error, KafkaError) else None
        if code == KafkaError._INVALID_ARG:
            raise  # the client settings themselves: the CLI's line names kafka.extra
        verb = "did not answer" if code in _UNANSWERED else "refused"
        text = error.str() if isinstance(error, KafkaError) else str(error)
        servers = settings.kafka.bootstrap_servers
        return {
            "lag": None,
            "kafka_error": f"Kafka at {servers} (kafka.bootstrap_servers) {verb}: {text}",
        }


def _read_heartbeats(
    client: RedisClient, keys: KeyLayout, *, warn: bool = True
) -> dict[str, HeartbeatRecord]:
    """The consumers' heartbeats by member id; a value that is not one (edited by hand, or
    another program's) is left out, with a warning for ``status`` (``warn``), not fatal."""
    beats: dict[str, HeartbeatRecord] = {}
    for member, raw in sorted(client.hgetall(keys.consumers).items()):
        try:
            beats[member.decode(errors="replace")] = _HEARTBEAT.validate_json(raw)
        except ValidationError:
            if warn:
                log.warning("ignoring field %r of %s: not a heartbeat", member[:80], keys.consumers)
    return beats


def _live_namespace_if_readable(client: RedisClient, namespace: str) -> str | None:
    """The namespace the live pointer names; None when this Redis user may not read the
    pointer (the least-privilege rule grants its own namespace's keys only)."""
    try:
        return live_namespace(client, namespace)
    except redis.exceptions.NoPermissionError:
        return None


def group_lag(settings: Settings, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Committed offset, high watermark and lag of the consumer group, per partition.

    ``committed`` is None when the group has committed nothing for a partition; its lag then
    counts from the low watermark (where ``auto.offset.reset=earliest`` starts).
    """
    kafka = settings.kafka
    # A consumer that never subscribes does not join the group: it only reads its offsets.
    config = {**consumer_config(kafka), "enable.auto.commit": False}
    reader = Consumer(config, logger=librdkafka_log)
    try:
        topic = reader.list_topics(kafka.events_topic, timeout=timeout).topics[kafka.events_topic]
        if topic.error is not None:
            return []
        partitions = [TopicPartition(kafka.events_topic, p) for p in sorted(topic.partitions)]
        committed = reader.committed(partitions, timeout=timeout)
        rows = []
        for tp in committed:
            low, high = reader.get_watermark_offsets(tp, timeout=timeout, cached=False)
            offset = tp.offset if tp.offset >= 0 else None
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": offset,
                    "high_watermark": high,
                    "lag": high - (offset if offset is not None else low),
                }
            )
        return rows
    finally:
        reader.close()


#: How long `status` waits for each answer of Kafka (seconds): a broker that answers at all
#: does so within milliseconds, and what Redis holds is printed after it.
KAFKA_TIMEOUT_SECONDS = 5.0
#: Kafka errors of a broker that did not answer (others, such as an authorisation error, are
#: the broker refusing).
_UNANSWERED = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
    }
)
#: A member silent for this many heartbeats is marked: it ended without a clean stop (a clean
#: stop removes its heartbeat), and the partitions it names are someone else's by now.
STALE_HEARTBEATS = 3
#: A heartbeat silent this long is removed by the next heartbeat of any consumer.
FORGOTTEN_AFTER_SECONDS = 3600


def silent_members(
    consumers: Mapping[str, Mapping[str, Any]], seconds: float, now: float
) -> list[str]:
    """Members whose last heartbeat is more than ``seconds`` before ``now`` (epoch s)."""
    return [m for m, beat in consumers.items() if now - beat["seen_at"] > seconds]


def stale_members(
    consumers: Mapping[str, Mapping[str, Any]], heartbeat_seconds: float, now: float
) -> list[str]:
    """Members silent for more than `STALE_HEARTBEATS` heartbeats at ``now`` (epoch s)."""
    return silent_members(consumers, STALE_HEARTBEATS * heartbeat_seconds, now)


STALE = "  [stale: no heartbeat since; ended without a clean stop?]"
#: The name column of a segment the current model does not have (its users move at their next
#: event or re-score pass).
RETIRED = "(not in the current model)"


def render_status(status: Mapping[str, Any], now: float | None = None) -> str:
    """The human-readable text of `deployment_status`."""
    now = time.time() if now is None else now
    version = status["model_version"]
    live = status.get("live_namespace") or status["namespace"]
    lines = [
        f"namespace      {status['namespace']}"
        + ("" if live == status["namespace"] else f" (the live pointer names {live})"),
        "model          "
        + (
            f"v{version} (created {_readable(status['model_created_at'])}"
            + "".join(
                f", {what} {_readable(status[f'model_{what}_at'])}"
                for what in ("imported", "renamed")
                if status.get(f"model_{what}_at")
            )
            + (
                f"; {status['training_rows_since_model']:,} training rows pushed since)"
                if status.get("training_rows_since_model") is not None
                else ")"
            )
            if version
            else "none (cold start: waiting for the trainer)"
        ),
        "event clock    "
        + (
            f"{iso_ms(status['watermark'] * 1000)} (the latest event time applied; "
            f"{_behind(now - status['watermark'])})"
            if status.get("watermark") is not None
            else "none (no event applied yet)"
        ),
        "trainer        "
        + (
            f"active ({status.get('trainer') or 'lease held'})"
            if status["trainer_active"]
            else "none active"
        )
        + (
            "; a refit is requested (streamseg model refit)"
            if status.get("refit_requested")
            else ""
        ),
        "",
        "segments",
    ]
    if status["segments"]:
        lines.append(f"  {'id':>4}  {'name':<32} {'tier':>4} {'users':>10}")
        for s in status["segments"]:
            lines.append(
                f"  {s['segment_id']:>4}  {s['segment'] or RETIRED:<32} "
                f"{s['tier'] if s['tier'] is not None else '-':>4} {s['users']:>10}"
            )
    else:
        lines.append("  (none yet)")
    lines += ["", "counters"]
    lines += [f"  {k:<32} {v:>12}" for k, v in status["counters"].items()] or ["  (none yet)"]
    counters = status["counters"]
    if counters.get("records"):
        share = counters.get("dead_lettered", 0) / counters["records"]
        lines.append(f"  {'(dead-lettered share of records)':<32} {share:>12.2%}")
    lines += ["", "consumer group lag (committed vs high watermark)"]
    if status.get("kafka_error"):
        lines.append(f"  {status['kafka_error']}")
    elif status["lag"]:
        lines.append(f"  {'partition':<28} {'committed':>12} {'high':>12} {'lag':>10}")
        for row in status["lag"]:
            committed = "-" if row["committed"] is None else row["committed"]
            lines.append(
                f"  {row['topic'] + '[' + str(row['partition']) + ']':<28} "
                f"{committed:>12} {row['high_watermark']:>12} {row['lag']:>10}"
            )
    else:
        lines.append("  (events topic not found)")
    lines += ["", "consumers (heartbeat every few seconds)"]
    if status["consumers"]:
        stale = set(stale_members(status["consumers"], status.get("heartbeat_seconds", 5.0), now))
        for member, beat in status["consumers"].items():
            last = beat.get("last_batch_at")
            batch = f"last batch {now - last:.0f} s ago" if last else "no batch yet"
            silent = now - beat.get("seen_at", now)
            lines.append(
                f"  {member}  {beat.get('host')}:{beat.get('pid')}  seen "
                f"{silent:.0f} s ago, {batch}, "
                f"partitions {', '.join(beat.get('partitions', [])) or 'none'}"
                + (STALE if member in stale else "")
            )
    elif live != status["namespace"]:
        lines.append(
            f"  (no heartbeat here; consumers following the live pointer write {live}: "
            f"streamseg --namespace {live} status)"
        )
    else:
        lines.append("  (no heartbeat: no consumer running)")
    return "\n".join(lines)


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg status``: print the deployment's state (``--json`` for machines).

    Exit status 2 (after printing what Redis holds) when Kafka does not answer, and without
    printing anything when the namespace holds no data and is not a known one (a misspelt
    ``--namespace``); Redis errors are the CLI's one line, as for every command.
    """
    client = settings.redis.connect()
    status = _redis_status(settings, client)
    if _holds_nothing(status):
        refuse_an_unknown_namespace(client, status["namespace"])
    status.update(_kafka_status(settings))
    if args.json:
        sys.stdout.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render_status(status), flush=True)  # before the error line, on a terminal too
    if status["kafka_error"]:
        return report_failure(args, status["kafka_error"])
    if args.check and (
        failed := check_failures(
            status,
            max_lag=args.max_lag,
            max_model_age=args.max_model_age,
            max_event_lag=args.max_event_lag,
        )
    ):
        for failure in failed:
            print(f"check failed: {failure}", file=sys.stderr)
        return 1
    return 0


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _readable(iso: str) -> str:
    """A time of the status JSON (ISO-8601) as the text prints it."""
    return readable_time(datetime.fromisoformat(iso))


def _in_use_since(model: SegmentModel) -> datetime:
    """When a model was fitted, or imported when it was."""
    return imported_at(model) or model.created_at


def _behind(seconds: float) -> str:
    """How the event clock stands to the wall clock (events may be stamped a little ahead)."""
    if seconds < 0:
        return f"{_age(-seconds)} ahead of the wall clock"
    return f"{_age(seconds)} behind the wall clock"


def _age(seconds: float) -> str:
    """A duration as people say it: 40 s, 12 min, 5.2 h, 3.1 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:,.1f} days"


def check_failures(
    status: Mapping[str, Any],
    *,
    max_lag: int | None = None,
    max_model_age: float | None = None,
    max_event_lag: float | None = None,
) -> list[str]:
    """What ``status --check`` fails on: no consumer with a fresh heartbeat, no trainer
    holding the lease, no model, a partition lagging more than ``max_lag`` records, a model
    older than ``max_model_age`` seconds, an event clock more than ``max_event_lag`` seconds
    behind the wall clock."""
    failed = []
    fresh = set(status["consumers"]) - set(status["stale_consumers"])
    if not fresh:
        failed.append("no consumer has a fresh heartbeat (none running, or all stale)")
    if not status["trainer_active"]:
        failed.append("no trainer holds the lease (the model is not kept fresh)")
    if not status["model_version"]:
        failed.append("no model published yet (cold start)")
    age = status.get("model_age_seconds")
    if max_model_age is not None and age is not None and age > max_model_age:
        since = status.get("training_rows_since_model")
        pushed = f"{since:,} training rows pushed since" if since is not None else "no count"
        failed.append(
            f"model v{status['model_version']} is {_age(age)} old (> --max-model-age "
            f"{max_model_age:g} s): {pushed}, is the trainer waiting for trainer.update_rows?"
        )
    clock = status.get("watermark")
    if max_event_lag is not None:
        if clock is None:
            failed.append("no event applied yet (no event clock)")
        elif time.time() - clock > max_event_lag:
            failed.append(
                f"the event clock is {_age(time.time() - clock)} behind the wall clock "
                f"(> --max-event-lag {max_event_lag:g} s)"
            )
    for row in status.get("lag") or []:
        if max_lag is not None and row["lag"] > max_lag:
            failed.append(
                f"{row['topic']}[{row['partition']}] lags {row['lag']:,} records (> {max_lag:,})"
            )
    return failed


def _holds_nothing(status: Mapping[str, Any]) -> bool:
    """True when Redis holds nothing of the namespace: no model, counter, segment size,
    heartbeat or trainer lease."""
    return not (
        status["model_version"]
        or status["counters"]
        or status["segments"]
        or status["consumers"]
        or status["trainer_active"]
    )
