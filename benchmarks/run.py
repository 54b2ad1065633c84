"""streamseg benchmarks: one run, one machine, one table (printed) and benchmarks/results.json.

    .venv/bin/python benchmarks/run.py [--quick] [--repeats N] [--events N] [--users N]
                                       [--users-large N] [--profile]

Uses Kafka and Redis from STREAMSEG_KAFKA__BOOTSTRAP_SERVERS / STREAMSEG_REDIS__URL when set,
otherwise starts its own `devstack.stack.LocalStack`. Every rate is the median of ``--repeats``
runs with min and max (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402
from common import (  # noqa: E402
    TYPE_MAP,
    build_model,
    chunks,
    delete_namespace,
    generate_records,
    machine,
    offline_features,
    percentiles,
    prepared_writes,
    produce_all,
    publish,
    summary,
    uniform_records,
)
from confluent_kafka import Consumer, Message, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from consumer.kafka_clients import consumer_config  # noqa: E402
from consumer.pipeline import BatchStats, SegmentPipeline  # noqa: E402
from consumer.redis_keys import KeyLayout  # noqa: E402
from consumer.replay import replay  # noqa: E402
from consumer.run import freeze_start_up_heap  # noqa: E402
from consumer.segment_record import encode_record, iso_ms  # noqa: E402
from consumer.settings import Settings, load_settings  # noqa: E402
from consumer.state_store import StateStore  # noqa: E402
from devstack.kafka import group_settled  # noqa: E402
from devstack.stack import service_env  # noqa: E402
from model.events import DecodeLimits, decode_events  # noqa: E402
from model.features import (  # noqa: E402
    COL,
    STATE_WIDTH,
    EventColumns,
    FeatureConfig,
    apply_events,
    category_codes,
    derive_features,
    empty_state,
)
from model.model_format import SegmentModel  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results.json"
#: Divisible by 1, 2 and 3 processes: every process of section 7 gets an equal share.
SCALE_PARTITIONS = 6
GOALS = {
    "service_events_per_s": 50_000,
    "service_aim_events_per_s": 100_000,
    "ratio_to_raw_consume": 0.5,
    "ratio_to_naive": 10.0,
    "p99_ms_at_20k": 100.0,
}
log = logging.getLogger("bench")


class PassResult(TypedDict):
    """What `Bench.pipeline_pass` measured in one end-to-end pass."""

    records: int
    applied: int
    dead_lettered: int
    ignored: int
    users_touched_sum_over_batches: int
    batches: int
    seconds: float
    records_per_s: float
    cpu_seconds: float
    records_per_cpu_s: float
    namespace: str
    used_memory_delta: int


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str, redis_url: str) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.client = redis.Redis.from_url(redis_url)
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.run_id = uuid.uuid4().hex[:6]
        self.topics: list[str] = []
        self.namespaces: list[str] = []
        self.results: dict[str, Any] = {}
        self.model: SegmentModel | None = None
        self.records: list[tuple[bytes | None, bytes]] = []  # the end-to-end input

    # -- plumbing --------------------------------------------------------------------------

    def topic(self, name: str, partitions: int = 1) -> str:
        topic = f"bench-{self.run_id}-{name}"
        fut = self.admin.create_topics([NewTopic(topic, partitions, 1)])[topic]
        fut.result(30)
        deadline = time.monotonic() + 30
        while True:
            md = self.admin.list_topics(topic=topic, timeout=5).topics.get(topic)
            if (
                md
                and md.error is None
                and md.partitions
                and all(p.leader >= 0 for p in md.partitions.values())
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no leader")
            time.sleep(0.05)
        self.topics.append(topic)
        return topic

    def namespace(self, name: str) -> str:
        ns = f"bench-{self.run_id}-{name}"
        self.namespaces.append(ns)
        return ns

    def settings(self, topic: str, namespace: str, group: str, **extra: Any) -> Settings:
        return load_settings(
            None,
            **{
                "kafka.bootstrap_servers": self.bootstrap,
                "kafka.events_topic": topic,
                "kafka.segments_topic": f"{topic}.segments",
                "kafka.dead_letter_topic": f"{topic}.dlq",
                "kafka.group_id": group,
                "redis.url": self.redis_url,
                "redis.namespace": namespace,
                **extra,
            },
        )

    def cleanup(self) -> None:
        for ns in self.namespaces:
            with contextlib.suppress(redis.RedisError):
                delete_namespace(self.client, ns)
        self.namespaces.clear()
        topics = [t for base in self.topics for t in (base, f"{base}.segments", f"{base}.dlq")]
        if topics:
            with contextlib.suppress(Exception):
                for f in self.admin.delete_topics(topics, operation_timeout=10).values():
                    with contextlib.suppress(Exception):
                        f.result(15)

    # -- model ----------------------------------------------------------------------------

    def bootstrap_model(self, records: list[tuple[bytes | None, bytes]]) -> None:
        _, X = offline_features(records)
        self.model = build_model(X)
        self.results["model_bootstrap"] = {"rows": len(X), "segments": self.model.names}

    # -- 1. end-to-end throughput ---------------------------------------------------------

    def pipeline_pass(
        self, topic: str, n_records: int, label: str, cluster_url: str | None = None
    ) -> PassResult:
        """One end-to-end pass over ``topic`` in this process (on a Redis Cluster when
        ``cluster_url`` names one of its nodes)."""
        ns = self.namespace(f"{label}-{uuid.uuid4().hex[:4]}")
        assert self.model is not None
        extra: dict[str, Any] = {}
        if cluster_url is not None:
            extra = {"redis.url": cluster_url, "redis.cluster": True}
        settings = self.settings(topic, ns, f"g-{ns}", **extra)
        client = settings.redis.connect()
        publish(client, ns, self.model)
        pipe = SegmentPipeline(settings)
        first: list[float] = []
        last = [0.0]
        batches = [0]
        inner = pipe.process

        def timed(messages: Sequence[Message]) -> BatchStats:
            if not first:
                first.append(time.perf_counter())
            out = inner(messages)
            last[0] = time.perf_counter()
            batches[0] += 1
            return out

        pipe.process = timed  # type: ignore[method-assign]
        used_before = _used_memory(client)
        cpu_before = time.process_time()
        pipe.start()
        freeze_start_up_heap()  # as `streamseg run` does after its start-up
        try:
            totals = pipe.run(max_records=n_records, idle_exit_seconds=10.0)
        finally:
            pipe.close()
        cpu_seconds = time.process_time() - cpu_before
        if not first or totals.records < n_records:
            raise RuntimeError(f"pipeline saw {totals.records} of {n_records} records")
        elapsed = last[0] - first[0]
        out: PassResult = {
            "records": totals.records,
            "applied": totals.applied,
            "dead_lettered": totals.dead_lettered,
            "ignored": totals.ignored,
            "users_touched_sum_over_batches": totals.users,
            "batches": batches[0],
            "seconds": elapsed,
            "records_per_s": totals.records / elapsed,
            # CPU of this process (all threads, start-up included): less sensitive to a busy
            # machine than the wall-clock rate.
            "cpu_seconds": cpu_seconds,
            "records_per_cpu_s": totals.records / cpu_seconds,
            "namespace": ns,
            "used_memory_delta": _used_memory(client) - used_before,
        }
        return out

    def cluster_e2e(self, topic: str, n_records: int, repeats: int) -> dict[str, Any]:
        """End-to-end passes like section 1, with the state on a local 3-master Redis Cluster
        (`devstack.redis_cluster`; every node on this machine's cores)."""
        from devstack.redis_cluster import RedisClusterServer

        with RedisClusterServer(masters=3) as cluster:
            runs = []
            for r in range(repeats):
                res = self.pipeline_pass(topic, n_records, "e2e-cluster", cluster_url=cluster.url)
                say(f"  cluster run {r + 1}/{repeats}: {res['records_per_s']:,.0f} records/s")
                runs.append(res)
        return {
            "records_per_s": summary([r["records_per_s"] for r in runs]),
            "records_per_cpu_s": summary([r["records_per_cpu_s"] for r in runs]),
            "masters": 3,
        }

    def e2e(self, topic: str, n_records: int, label: str, repeats: int) -> dict[str, Any]:
        runs = []
        for r in range(repeats):
            res = self.pipeline_pass(topic, n_records, label)
            say(
                f"  {label} run {r + 1}/{repeats}: {res['records_per_s']:,.0f} records/s "
                f"({res['seconds']:.2f} s, {res['batches']} batches)"
            )
            runs.append(res)
            if r < repeats - 1:
                delete_namespace(self.client, res["namespace"])
        last_ns = runs[-1]["namespace"]
        return {
            "records_per_s": summary([r["records_per_s"] for r in runs]),
            "records_per_cpu_s": summary([r["records_per_cpu_s"] for r in runs]),
            "runs": [{k: v for k, v in r.items() if k != "namespace"} for r in runs],
            "namespace": last_ns,
        }

    # -- 2. ceilings ------------------------------------------------------------------------

    def raw_consume(
        self, topic: str, n_records: int
    ) -> tuple[float, list[bytes | None], list[bytes | None]]:
        settings = self.settings(topic, "unused", f"g-raw-{uuid.uuid4().hex[:6]}")
        consumer = Consumer(consumer_config(settings.kafka))
        consumer.subscribe([topic])
        values: list[bytes | None] = []
        keys: list[bytes | None] = []
        n = 0
        first = 0.0
        deadline = time.monotonic() + 120
        try:
            while n < n_records and time.monotonic() < deadline:
                msgs = consumer.consume(5000, 1.0)
                if not msgs:
                    continue
                if not first:
                    first = time.perf_counter()
                for m in msgs:
                    if m.error() is None:
                        n += 1
                        if len(values) < n_records:
                            values.append(m.value())
                            keys.append(m.key())
            end = time.perf_counter()
        finally:
            consumer.close()
        if n < n_records:
            raise RuntimeError(f"raw consume saw {n} of {n_records}")
        return n / (end - first), values, keys

    def decode_rate(self, values: list[bytes | None], keys: list[bytes | None]) -> float:
        began = time.perf_counter()
        for start in range(0, len(values), 5000):
            decode_events(
                values[start : start + 5000],
                keys[start : start + 5000],
                type_map=TYPE_MAP,
                limits=DecodeLimits(),
            )
        return len(values) / (time.perf_counter() - began)

    def redis_write_rate(self, users: int, batch: int = 5000) -> float:
        ns = self.namespace(f"write-{uuid.uuid4().hex[:4]}")
        store = StateStore(self.client, KeyLayout(ns), training_buffer_rows=200_000)
        prepared = prepared_writes(users, batch, "w")
        began = time.perf_counter()
        for w in prepared:
            store.write(w)
        rate = users / (time.perf_counter() - began)
        delete_namespace(self.client, ns)
        return rate

    # -- 3. naive baseline ------------------------------------------------------------------

    def naive(self, records: list[tuple[bytes | None, bytes]]) -> float:
        """One event at a time: decode+validate, GET state, update, predict one row, SET."""
        assert self.model is not None
        ns = self.namespace(f"naive-{uuid.uuid4().hex[:4]}")
        keys = KeyLayout(ns)
        model = self.model
        config = FeatureConfig()
        cache: dict[str, float] = {}
        client = self.client
        began = time.perf_counter()
        for offset, (key, value) in enumerate(records):
            batch, _ = decode_events([value], [key], type_map=TYPE_MAP)
            if not len(batch):
                continue
            user = batch.user_id[0]
            raw = client.get(keys.state(user))
            state = (
                np.frombuffer(raw, np.float64).reshape(1, STATE_WIDTH).copy()
                if raw and len(raw) == STATE_WIDTH * 8
                else empty_state(1)
            )
            cols = EventColumns(
                user=np.zeros(1, np.int64),
                ts_ms=batch.ts_ms,
                type_code=batch.type_code,
                amount=batch.amount,
                category_code=category_codes(batch.category, cache),
                partition=np.zeros(1, np.int64),
                offset=np.array([offset], np.int64),
            )
            apply_events(state, cols, config)
            features = derive_features(state, state[:, COL["last_ts_ms"]], config)
            ids, positions, dist = model.assign(features)
            p = int(positions[0])
            record = encode_record(
                user,
                segment_id=int(ids[0]),
                segment=model.names[p],
                tier=model.tiers[p],
                model_version=model.model_version,
                distance=float(dist[0]),
                top_category_spend=None,
                top_category_views=None,
                event_time=iso_ms(state[0, COL["last_ts_ms"]]),
                computed_at=iso_ms(time.time() * 1000),
            )
            pipe = client.pipeline(transaction=False)
            pipe.set(keys.state(user), state.tobytes())
            pipe.set(keys.segment(user), record)
            pipe.execute()
        rate = len(records) / (time.perf_counter() - began)
        delete_namespace(self.client, ns)
        return rate

    # -- 4. latency -------------------------------------------------------------------------

    def scale(self, topic: str, n_records: int, processes: int, repeats: int) -> dict[str, Any]:
        """Throughput of ``streamseg run --processes N`` (N consumers in one group) on ``topic``.

        Method: a fresh namespace and group per run. The clock starts once the group is
        stable with N members that all hold partitions and the ``records`` counter in Redis
        has moved (start-up, group joins and rebalances excluded: the first version of this
        bench started at the first batch and timed the second process's join). It stops at
        95% of ``n_records``, before the last partitions drain unevenly. ``first_to_last`` is
        the plain first-batch-to-last-record rate, joins included.
        """
        assert self.model is not None
        steady: list[float] = []
        first_to_last: list[float] = []
        windows: list[float] = []
        for _ in range(repeats):
            ns = self.namespace(f"scale{processes}-{uuid.uuid4().hex[:4]}")
            publish(self.client, ns, self.model)
            group = f"g-{ns}"
            env = service_env(self.bootstrap, self.redis_url, topic, ns, {"kafka.group_id": group})
            proc = _streamseg(
                env,
                "run",
                "--processes",
                str(processes),
                "--idle-exit-seconds",
                "5",
                "--metrics-port",
                "0",
            )
            counters = f"{ns}:counters"
            first: float | None = None
            start: tuple[float, int] | None = None
            end: tuple[float, int] | None = None
            samples: list[tuple[float, int]] = []  # (time, records) in the steady window
            deadline = time.monotonic() + 1800
            try:
                while time.monotonic() < deadline:
                    now, done = time.perf_counter(), int(self.client.hget(counters, "records") or 0)
                    if done and first is None:
                        first = now
                    if start is not None and end is None:
                        samples.append((now, done))
                    if done and start is None and group_settled(self.admin, group, processes):
                        start = (now, done)
                    if start is not None and end is None and done >= 0.95 * n_records:
                        end = (now, done)
                    if done >= n_records:
                        break
                    time.sleep(0.02)
                finished = time.perf_counter()
            finally:
                _stop(proc)
            if first is None or done < n_records:
                raise RuntimeError(f"{processes} processes counted {done} of {n_records} records")
            first_to_last.append(n_records / (finished - first))
            if start is not None and end is not None and end[1] > start[1]:
                steady.append((end[1] - start[1]) / (end[0] - start[0]))
                windows += _window_rates([start, *samples], seconds=10.0)
            delete_namespace(self.client, ns)
        return {
            "processes": processes,
            "partitions": SCALE_PARTITIONS,
            "records": n_records,
            "records_per_s": summary(steady) if steady else None,
            "first_to_last_records_per_s": summary(first_to_last),
            # Rates over consecutive 10 s stretches of the steady windows (all repeats): the
            # slowest shows whether the rate is sustained. Empty when the windows are shorter.
            "ten_second_windows_records_per_s": summary(windows) if windows else None,
            "method": "streamseg run --processes N; from the group stable with N members "
            "holding partitions (and the counter moving) to 95% of the records",
        }

    def replay_bench(
        self, topic: str, n_records: int, live_alone: float | None, repeats: int
    ) -> dict[str, Any]:
        """Replay read rate, and the live pipeline's rate beside a replay against its rate alone.

        Method: (a) `consumer.replay.replay` from earliest over ``topic`` in this process,
        rate = records / time reading and applying, median of ``repeats`` (stopped at the last
        record by ``max_records``, so it does not train: training is not part of the rate).
        (b) ``repeats`` rounds; each round is one live pipeline pass over the first half of
        ``topic`` in this process alone, and one beside each kind of `streamseg replay` subprocess:
        default options (``--nice 10``), ``--nice 0`` (control: the replay as it was before
        niceness) and ``--max-rate`` = 1/10 of the first alone rate. The subprocess reads a
        topic holding ``topic``'s records twice (so it outlasts the pass); it starts first and
        is terminated after the pass. The order of the passes rotates from round to round;
        a share = beside / alone of the same round, median over rounds. ``live_alone`` (the
        rate section 1 measured minutes earlier) is kept for reference only.
        ``replay_records_per_s_alone``: the subprocess's rate in the 2 s before the live pass;
        ``replay_records_per_s_beside``: its records during the pass / the pass's wall time
        (the live pipeline's start-up included, so a little above its rate beside).
        """
        rates = []
        for _ in range(repeats):
            live_ns = self.namespace(f"replay-src-{uuid.uuid4().hex[:4]}")
            shadow = self.namespace(f"replay-{uuid.uuid4().hex[:4]}")
            settings = self.settings(topic, live_ns, f"g-{live_ns}")
            freeze_start_up_heap()  # as `streamseg replay` does
            result = replay(settings, shadow, seed=0, max_records=n_records, client=self.client)
            rates.append(result.records / max(result.read_seconds, 1e-9))
            delete_namespace(self.client, shadow)
        out: dict[str, Any] = {
            "replay_records_per_s": summary(rates),
            "live_alone_section1": live_alone,
            "loadavg_start": _loadavg(),
        }
        double = self.topic("replay-double")
        produce_all(self.bootstrap, double, self.records * 2)

        def live_pass() -> float:
            res = self.pipeline_pass(topic, n_records // 2, "replay-live")
            delete_namespace(self.client, res["namespace"])
            return float(res["records_per_s"])

        def beside(nice: int, max_rate: float) -> dict[str, Any]:
            shadow = self.namespace(f"replay-bg-{uuid.uuid4().hex[:4]}")
            # The configured namespace must differ from --namespace-out (replay refuses it).
            env = service_env(self.bootstrap, self.redis_url, double, f"{shadow}-cfg")
            proc = _streamseg(
                env,
                *("replay", "--from", "earliest", "--namespace-out", shadow, "--no-progress"),
                *("--max-rate", str(max_rate), "--nice", str(nice)),
            )
            counters = f"{shadow}:counters"
            try:
                deadline = time.monotonic() + 120
                while not self.client.hget(counters, "records"):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the background replay did not start")
                    time.sleep(0.05)
                # Its rate on its own first (with its niceness, before the live pass starts).
                first, t_first = int(self.client.hget(counters, "records") or 0), time.monotonic()
                time.sleep(2.0)
                before, began = int(self.client.hget(counters, "records") or 0), time.monotonic()
                live = live_pass()
                still_running = proc.poll() is None
                replayed = int(self.client.hget(counters, "records") or 0)
                took = time.monotonic() - began
            finally:
                _stop(proc)
                delete_namespace(self.client, shadow)
            return {
                "live": live,
                "still_running": still_running,
                "replayed": replayed,
                "replay_rate": (replayed - before) / took,
                "replay_rate_alone": (before - first) / (began - t_first),
            }

        variants: dict[str, tuple[int, float]] = {
            "unthrottled": (10, 0.0),  # the defaults of `streamseg replay`
            "unthrottled_nice0": (0, 0.0),
            "max_rate_tenth": (10, 0.0),  # the cap is set from the first alone pass
        }
        order = ["alone", *variants]
        alone: list[float] = []
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
        for round_no in range(repeats):
            shift = round_no % len(order)
            for label in order[shift:] + order[:shift]:
                if label == "alone":
                    alone.append(live_pass())
                    if round_no == 0:
                        variants["max_rate_tenth"] = (10, float(round(alone[0] / 10)))
                else:
                    runs[label].append(beside(*variants[label]))
        median_alone = float(np.median(alone))
        out["live_alone"] = median_alone
        out["live_alone_records_per_s"] = summary(alone)
        for label, (nice, cap) in variants.items():
            live = [r["live"] for r in runs[label]]
            shares = [b / a for b, a in zip(live, alone, strict=True)]
            share = float(np.median(shares))
            out[label] = {
                "nice": nice,
                "max_rate": cap,
                "live_records_per_s": float(np.median(live)),
                "live_records_per_s_summary": summary(live),
                "live_share_of_alone": share,
                "live_share_per_round": shares,
                "live_share_of_median_alone": float(np.median(live)) / median_alone,
                "within_20_percent_of_alone": share >= 0.8,
                "replay_records_per_s_alone": summary(
                    [r["replay_rate_alone"] for r in runs[label]]
                ),
                "replay_records_per_s_beside": summary([r["replay_rate"] for r in runs[label]]),
                "replay_still_running_at_end": all(r["still_running"] for r in runs[label]),
                "replayed_records_by_then": min(r["replayed"] for r in runs[label]),
            }
        out["loadavg_end"] = _loadavg()
        return out

    def latency(
        self,
        rates: list[int],
        seconds: float,
        users: int,
        windows: int = 1,
        processes: int = 1,
        warmup: float = 12.0,
    ) -> dict[str, Any]:
        """Produce at fixed rates into a topic a separate `consumer.cli run` process consumes
        (``--processes N`` on an N-partition topic), ``windows`` windows of ``seconds`` per
        rate; percentiles pool every window's probes.

        Method: every ~1/100th event (>= 100/s) is a probe for a fresh user id; a poller thread
        MGETs the pending probes' segment keys every ~1 ms and records the time from just before
        ``produce()`` to the first poll that sees the record (same clock, same process).
        """
        assert self.model is not None
        topic = self.topic(f"latency{processes}", partitions=processes)
        ns = self.namespace(f"latency{processes}")
        publish(self.client, ns, self.model)
        group = f"g-{ns}"
        env = service_env(self.bootstrap, self.redis_url, topic, ns, {"kafka.group_id": group})
        proc = _streamseg(env, "run", "--processes", str(processes), stderr=subprocess.PIPE)
        keys = KeyLayout(ns)
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 5,
                "compression.type": "lz4",
                "enable.idempotence": True,
            }
        )
        poll_client = redis.Redis.from_url(self.redis_url)
        out: dict[str, Any] = {
            "method": (
                "probe events for fresh user ids (>=100/s); a poller thread MGETs pending probe "
                "segment keys every ~1 ms; latency = first poll seeing the record - time just "
                "before produce() (producer linger.ms=5 included); records encoded before the "
                "clock starts; pipeline in a separate process (python -m consumer.cli run, "
                "default settings: a batch is what was fetched meanwhile, at most 5000); "
                f"after {warmup:g} s of unmeasured load at the highest rate, so most of the "
                "users already have a record"
            ),
            "processes": processes,
        }
        try:
            # Warm up: wait until the consumer has its partition and writes records.
            deadline = time.monotonic() + 90
            n = 0
            while True:
                user = f"warm-{n}"
                producer.produce(topic, key=user.encode(), value=self._event(user, n))
                producer.flush(5)
                n += 1
                t0 = time.monotonic()
                while time.monotonic() - t0 < 1.0 and not poll_client.exists(keys.segment(user)):
                    time.sleep(0.01)
                if poll_client.exists(keys.segment(user)) and group_settled(
                    self.admin, group, processes
                ):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                    raise RuntimeError(f"consumer process not ready (rc={proc.poll()}): {err}")
            # Warm-up at the highest rate (not measured): connections, first batches, and
            # most of the users' first events. A user's first event also publishes a first
            # segment change, so a crowd of new users is a heavier load than the steady
            # state: with a 2 s warm-up the first window's p99 was the worst in 6 of 7 runs.
            self._offered_load(producer, poll_client, keys, topic, max(rates), warmup, users)
            out["warmup"] = {"seconds": warmup, "rate": max(rates)}
            for rate in rates:
                runs = []
                for w in range(windows):
                    say(f"  latency at {rate:,}/s, window {w + 1}/{windows} of {seconds:.0f} s")
                    runs.append(
                        self._offered_load(producer, poll_client, keys, topic, rate, seconds, users)
                    )
                    time.sleep(1.0)
                out[str(rate)] = _pooled_windows(rate, runs)
        finally:
            # Peak RSS of the consumer since its exec: VmHWM from /proc, read before it exits.
            # (wait4's ru_maxrss is not used: on Linux it includes the forked image of this
            # large benchmark process before exec, which overstated it as ~2.9 GB.)
            hwm = _vm_hwm_mb(proc.pid) if processes == 1 else None  # else: the supervisor's
            _stop(proc)
            out["consumer_peak_rss_mb"] = hwm
            out["consumer_peak_rss_method"] = "VmHWM of /proc/<pid>/status just before SIGTERM"
            producer.flush(5)
        # Lookup latency of a segment record, as a personalization service reads it.
        seg_keys = [keys.segment(f"lat-u{i}") for i in range(users)]
        existing = [
            k
            for k, v in zip(seg_keys[:20000], self.client.mget(seg_keys[:20000]), strict=True)
            if v
        ]
        rng = np.random.default_rng(1)
        lookups = []
        if existing:
            sample = rng.choice(len(existing), size=10_000)
            get = poll_client.get
            for i in sample.tolist():
                t = time.perf_counter()
                get(existing[i])
                lookups.append((time.perf_counter() - t) * 1000)
        out["lookup_get_ms"] = percentiles(lookups)
        return out

    @staticmethod
    def _event(user: str, seq: int, etype: str = "view") -> bytes:
        event: dict[str, Any] = {
            "event_id": f"lat-{seq}",
            "user_id": user,
            "type": etype,
            "ts": int(time.time() * 1000),
            "category": "books",
        }
        if etype == "purchase":
            event["amount"] = 42.5
        return orjson.dumps(event)

    def _offered_load(
        self,
        producer: Producer,
        poll_client: redis.Redis,
        keys: KeyLayout,
        topic: str,
        rate: int,
        seconds: float,
        users: int,
    ) -> dict[str, Any]:
        pending: dict[str, float] = {}
        lock = threading.Lock()
        latencies: list[float] = []
        sending = threading.Event()
        sending.set()
        probe_every = max(1, rate // 100)

        def poller() -> None:
            while sending.is_set() or pending:
                with lock:
                    items = list(pending.items())
                if items:
                    vals = poll_client.mget([k for k, _ in items])
                    now = time.perf_counter()
                    with lock:
                        for (k, sent), v in zip(items, vals, strict=True):
                            if v is not None:
                                latencies.append((now - sent) * 1000)
                                pending.pop(k, None)
                if not sending.is_set() and time.perf_counter() > stop_at[0]:
                    break
                time.sleep(0.001)

        stop_at = [float("inf")]
        thread = threading.Thread(target=poller, daemon=True)
        # Every record is encoded before the clock starts: the load generator shares the two
        # cores with the pipeline, and it should spend them on produce() only.
        rng = np.random.default_rng(rate)
        total = int(rate * seconds)
        user_pick = rng.integers(0, users, size=total).tolist()
        kinds = rng.random(size=total).tolist()
        tag = uuid.uuid4().hex[:4]
        outgoing: list[tuple[bytes, bytes, str | None]] = []  # key, value, probe's segment key
        for i in range(total):
            if i % probe_every == 0:
                user = f"probe-{tag}-{rate}-{i // probe_every}"
                outgoing.append((user.encode(), self._event(user, i), keys.segment(user)))
            else:
                user = f"lat-u{user_pick[i]}"
                k = kinds[i]
                etype = "purchase" if k < 0.05 else ("cart" if k < 0.15 else "view")
                outgoing.append((user.encode(), self._event(user, i, etype), None))
        probes = sum(1 for _, _, probe in outgoing if probe is not None)
        thread.start()
        sent = 0
        began = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - began) * rate) + 1)
            while sent < due:
                key, value, probe = outgoing[sent]
                if probe is not None:
                    with lock:
                        pending[probe] = time.perf_counter()
                producer.produce(topic, key=key, value=value)
                sent += 1
            producer.poll(0)
            time.sleep(0.0005)
        send_seconds = time.perf_counter() - began
        producer.flush(10)
        sending.clear()
        stop_at[0] = time.perf_counter() + 5.0
        thread.join(10)
        with lock:
            missing = len(pending)
        return {
            "offered_events_per_s": rate,
            "achieved_send_events_per_s": sent / send_seconds,
            "probes": probes,
            "probes_not_seen_within_5s": missing,
            "latency_ms": percentiles(latencies),
            "latency_samples_ms": latencies,
        }

    # -- 5b. consumer memory against the number of users -------------------------------

    def consumer_rss(self, users: int) -> dict[str, Any]:
        """Peak RSS of a separate ``streamseg run`` process after it wrote ``users`` users.

        Method: one event per user (every id distinct, in random order) into a fresh topic,
        read by ``python -m consumer.cli run`` until the namespace counts every record as
        applied; VmHWM from /proc just before SIGTERM. State lives in Redis, so the figure
        should not grow with the number of users.
        """
        assert self.model is not None
        topic = self.topic(f"rss-{users}")
        ns = self.namespace(f"rss-{users}")
        publish(self.client, ns, self.model)
        produce_all(self.bootstrap, topic, uniform_records(users, users, seed=4, distinct=True))
        env = service_env(self.bootstrap, self.redis_url, topic, ns)
        began = time.perf_counter()
        proc = _streamseg(env, "run")
        try:
            deadline = time.monotonic() + 600
            while int(self.client.hget(f"{ns}:counters", "applied") or 0) < users:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"consumer for {users:,} users stopped or stalled")
                time.sleep(0.2)
            seconds = time.perf_counter() - began
            hwm = _vm_hwm_mb(proc.pid)
        finally:
            _stop(proc)
        used = _used_memory(self.client)
        delete_namespace(self.client, ns)
        return {
            "users": users,
            "consumer_peak_rss_mb": hwm,
            "seconds_incl_startup": seconds,
            "redis_used_memory_after_mb": used / 2**20,
        }

    # -- 5. memory --------------------------------------------------------------------------

    def redis_memory(self, namespace: str, sample: int = 2000) -> dict[str, Any]:
        keys = KeyLayout(namespace)
        users = []
        for key in self.client.scan_iter(match=keys.state_pattern, count=5000):
            users.append(keys.user_from_state_key(key.decode()))
            if len(users) >= sample:
                break
        pipe = self.client.pipeline(transaction=False)
        for u in users:
            pipe.memory_usage(keys.state(u), samples=0)
            pipe.memory_usage(keys.segment(u), samples=0)
        vals = pipe.execute()
        per_user = [(a or 0) + (b or 0) for a, b in zip(vals[::2], vals[1::2], strict=True)]
        seg = [b or 0 for b in vals[1::2]]
        return {
            "sampled_users": len(users),
            "bytes_per_user_state_plus_record": float(np.mean(per_user)) if per_user else 0.0,
            "bytes_per_user_record_only": float(np.mean(seg)) if seg else 0.0,
        }

    # -- 6. model ---------------------------------------------------------------------------

    def model_bench(self, users: int, days: float, repeats: int) -> dict[str, Any]:
        from collections import Counter

        from river import cluster
        from sklearn.cluster import KMeans

        from consumer.synthetic import EventGenerator, GeneratorConfig
        from model.quality import (
            adjusted_rand,
            inertia,
            offline_inertia,
            partition_inertia,
            separability_ari,
        )
        from model.segmenter import StreamingSegmenter, limit_threads

        gen = EventGenerator(GeneratorConfig(users=users, days=days, seed=7, valid_only=True))
        records = list(gen.records())
        planted = gen.planted_types()
        ids, X = offline_features(records)
        truth = [planted[u] for u in ids]
        # Preprocessing fitted on a uniform sample: the first users in stream order leave out
        # the types that join late, and that bias alone cost 0.10 ARI (seed 7).
        sample = np.random.default_rng(1).permutation(len(X))[: max(2000, len(X) // 5)]
        model = build_model(X[sample])
        Z = model.transform(X)
        k = len(set(truth))
        out: dict[str, Any] = {
            "users_with_events": len(ids),
            "events": len(records),
            "n_features": Z.shape[1],
            "k": k,
        }

        # partial_fit rows/s on 5k-row batches
        rng = np.random.default_rng(0)
        big = Z[rng.integers(0, len(Z), size=100_000)]
        rates = []
        for _ in range(repeats):
            seg = StreamingSegmenter(n_clusters=k, random_state=0).fit(Z[:2000])
            t = time.perf_counter()
            for part in chunks(big, 5000):
                seg.partial_fit(part)
            rates.append(len(big) / (time.perf_counter() - t))
        out["partial_fit_rows_per_s"] = summary(rates)

        # assignment on 5k rows
        Xa = X[rng.integers(0, len(X), size=5000)]
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(100):
                model.assign(Xa)
            rates.append(100 * 5000 / (time.perf_counter() - t))
        out["assign_rows_per_s"] = summary(rates)
        out["assign_shape"] = list(Xa.shape)

        # Online quality: streaming segmenter bootstrapped on 2000 rows then 5k batches.
        order = rng.permutation(len(Z))
        Zs = Z[order]
        truth_s = [truth[i] for i in order]
        seg = StreamingSegmenter(n_clusters=k, random_state=0).fit(Zs[:2000])
        for part in chunks(Zs[2000:], 5000):
            seg.partial_fit(part)
        pos = seg.predict(Zs)
        with limit_threads(1):
            ref = KMeans(n_clusters=k, n_init=10, random_state=0).fit(Zs)
        ref_inertia = offline_inertia(Zs, k, n_init=10)
        out["streaming_ari"] = adjusted_rand(truth_s, pos)
        out["streaming_inertia_ratio"] = inertia(Zs, seg.cluster_centers_) / ref_inertia
        out["offline_kmeans_ari"] = adjusted_rand(truth_s, ref.labels_)

        # What the ARI can reach at all on these features (issue #4). The ceiling: a classifier
        # told the planted types (cross-validated) on the same scaled rows. The planted
        # partition's inertia over k-means': near 1 the types are k-means clusters, well above
        # 1 k-means prefers another split. And the ARI on users with a history long enough
        # to show their type (~5 sessions or more), reported apart, not silently filtered.
        rich_history_events = 50
        labels_s = np.asarray(truth_s)
        events_per_user = Counter(key for key, _ in records)  # valid_only: key = user id
        n_events = np.array([events_per_user[ids[i].encode()] for i in order])
        rich = n_events >= rich_history_events
        out["planted_partition_inertia_ratio"] = partition_inertia(Zs, labels_s) / ref_inertia
        out["planted_ceiling_ari"] = separability_ari(Zs, labels_s)
        out["rich_history_min_events"] = rich_history_events
        out["rich_history_share"] = float(rich.mean())
        out["streaming_ari_rich_history"] = adjusted_rand(labels_s[rich], pos[rich])
        out["planted_ceiling_ari_rich_history"] = separability_ari(Zs[rich], labels_s[rich])

        # River KMeans learn_one + predict_one on the same scaled rows.
        n_river = min(len(Zs), 20_000 if not self.args.quick else 2000)
        dicts = [dict(enumerate(row)) for row in Zs[:n_river].tolist()]
        rates = []
        river_model = None
        for r in range(repeats):
            river_model = cluster.KMeans(n_clusters=k, halflife=0.5, sigma=1, seed=r)
            t = time.perf_counter()
            for x in dicts:
                river_model.learn_one(x)
                river_model.predict_one(x)
            rates.append(n_river / (time.perf_counter() - t))
        out["river_rows_per_s"] = summary(rates)
        out["river_rows_timed"] = n_river
        assert river_model is not None
        # River's quality: one online pass over all rows, then predictions for all.
        all_dicts = [dict(enumerate(row)) for row in Zs.tolist()]
        river_model = cluster.KMeans(n_clusters=k, halflife=0.5, sigma=1, seed=0)
        for x in all_dicts:
            river_model.learn_one(x)
        rpos = [river_model.predict_one(x) for x in all_dicts]
        centers = np.array(
            [
                [river_model.centers[c].get(j, 0.0) for j in range(Zs.shape[1])]
                for c in sorted(river_model.centers)
            ]
        )
        out["river_ari"] = adjusted_rand(truth_s, rpos)
        out["river_inertia_ratio"] = inertia(Zs, centers) / ref_inertia
        return out


def start_servers(args: argparse.Namespace) -> tuple[Any, str, str]:
    from devstack.stack import LocalStack

    stack = LocalStack()
    stack.__enter__()
    return stack, stack.bootstrap_servers, stack.redis_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny inputs (smoke test)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per rate; the table shows median, min, max"
    )
    parser.add_argument(
        "--events", type=int, default=300_000, help="records of the end-to-end passes"
    )
    parser.add_argument(
        "--users",
        type=int,
        default=100_000,
        help="distinct users the end-to-end and latency records are spread over",
    )
    parser.add_argument(
        "--users-large",
        type=int,
        default=1_000_000,
        help="second end-to-end pass with this many users (0 = skip)",
    )
    parser.add_argument(
        "--users-rss",
        type=int,
        default=1_000_000,
        help="distinct users a separate consumer process writes for the RSS measurement "
        "(also measured at 100k)",
    )
    parser.add_argument(
        "--scale-events",
        type=int,
        default=0,
        help="records section 7 (streamseg run --processes 1-3) drains (default 2 x --events)",
    )
    parser.add_argument(
        "--scale-users",
        type=int,
        default=0,
        help="users section 7's records are spread over (default --users)",
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        default=20_000,
        help="records of section 3, the baseline: one event at a time, GET and SET per event",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=10.0,
        help="measured seconds per offered rate in section 4",
    )
    parser.add_argument(
        "--latency-warmup-seconds",
        type=float,
        default=12.0,
        help="unmeasured load at the highest rate before the latency windows (default 12 s: "
        "at 20k events/s about 90%% of the 100k users have a record before the clock starts)",
    )
    parser.add_argument(
        "--rates", default="5000,20000", help="comma list of offered events/s for section 4"
    )
    parser.add_argument(
        "--model-users",
        type=int,
        default=5000,
        help="users of section 6's planted population (model quality, River)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="results JSON (default %(default)s)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="also profile one end-to-end pass with pyinstrument (text to this file)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of sections to skip: "
        "e2e,large,ceilings,naive,latency,rss,model,scale,replay,cluster",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.users, args.users_large, args.users_rss = 6000, 2000, 0, 3000
        args.naive_events, args.latency_seconds, args.rates = 500, 2.0, "1000,2000"
        args.latency_warmup_seconds = 1.0
        args.model_users, args.repeats = 300, 1
    skip = {s for s in args.skip.split(",") if s}
    logging.basicConfig(level=logging.WARNING)

    stack, bootstrap, redis_url = start_servers(args)
    began = time.perf_counter()
    bench = Bench(args, bootstrap, redis_url)
    R = bench.results
    R["machine"] = machine()
    R["machine"]["servers"] = dict(stack.origin)
    R["machine"]["loadavg_start"] = _loadavg()
    R["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    try:
        say(f"generating {args.events:,} records over {args.users:,} users")
        records = uniform_records(args.events, args.users, seed=1)
        # The model is bootstrapped on realistic synthetic users (planted types).
        model_records, _ = generate_records(
            min(args.events, 100_000), max(500, args.users // 20), seed=3
        )
        bench.bootstrap_model(model_records)
        del model_records
        topic = bench.topic("e2e")
        R["produce_records_per_s"] = produce_all(bootstrap, topic, records)
        distinct = len({k for k, _ in records})
        R["data"] = {
            "records": len(records),
            "distinct_keys": distinct,
            "generator": "benchmarks.common.uniform_records (valid events, users "
            "uniform, 17% type aliases, epoch-ms ts out of order over 60 days)",
        }

        if "e2e" not in skip:
            say("1. end-to-end pipeline throughput")
            R["e2e"] = bench.e2e(topic, len(records), "e2e", args.repeats)
            R["memory"] = bench.redis_memory(R["e2e"]["namespace"])
            last = R["e2e"]["runs"][-1]
            R["memory"]["used_memory_delta_per_distinct_user"] = last["used_memory_delta"] / max(
                1, distinct
            )
            ns = R["e2e"]["namespace"]
            # Lookup latency on the throughput namespace too (many keys).
            lk = KeyLayout(ns)
            sample_users = [k.decode() for k, _ in records[:20000] if k]
            seg_keys = [lk.segment(u) for u in sample_users]
            found = [k for k, v in zip(seg_keys, bench.client.mget(seg_keys), strict=True) if v]
            times = []
            for i in np.random.default_rng(2).choice(len(found), size=10_000).tolist():
                t = time.perf_counter()
                bench.client.get(found[i])
                times.append((time.perf_counter() - t) * 1000)
            R["lookup_get_ms"] = percentiles(times)
            delete_namespace(bench.client, ns)

        if args.profile:
            from pyinstrument import Profiler

            say("profiling one end-to-end pass")
            prof = Profiler(interval=0.001)
            prof.start()
            res = bench.pipeline_pass(topic, len(records), "profile")
            prof.stop()
            args.profile.write_text(prof.output_text(unicode=False, color=False, show_all=False))
            R["profiled_pass_records_per_s"] = res["records_per_s"]
            delete_namespace(bench.client, res["namespace"])

        if "ceilings" not in skip:
            say("2. ceilings: raw consume, decode, Redis write")
            raw, dec, wr = [], [], []
            values: list[bytes | None] = []
            keys: list[bytes | None] = []
            for _ in range(args.repeats):
                rate, values, keys = bench.raw_consume(topic, len(records))
                raw.append(rate)
            for _ in range(args.repeats):
                dec.append(bench.decode_rate(values, keys))
            for _ in range(args.repeats):
                wr.append(bench.redis_write_rate(min(100_000, max(10_000, args.users))))
            R["ceilings"] = {
                "raw_consume_records_per_s": summary(raw),
                "decode_validate_records_per_s": summary(dec),
                "redis_write_users_per_s": summary(wr),
            }

        if "naive" not in skip:
            say(f"3. naive baseline on {args.naive_events:,} records")
            subset = records[: args.naive_events]
            R["naive"] = {
                "records_per_s": summary([bench.naive(subset) for _ in range(args.repeats)]),
                "records": len(subset),
            }

        if args.users_large and "large" not in skip:
            say(f"1b. end-to-end at {args.users_large:,} users")
            big = uniform_records(args.events, args.users_large, seed=2)
            topic_big = bench.topic("e2e-large")
            produce_all(bootstrap, topic_big, big)
            R["e2e_large"] = bench.e2e(topic_big, len(big), "e2e-large", args.repeats)
            R["e2e_large"]["users"] = args.users_large
            R["e2e_large"]["distinct_keys"] = len({k for k, _ in big})
            R["memory_large"] = bench.redis_memory(R["e2e_large"]["namespace"])
            delete_namespace(bench.client, R["e2e_large"]["namespace"])
            del big

        if "scale" not in skip:
            say("7. streamseg run --processes 1, 2, 3 on a 6-partition topic")
            topic_scale = bench.topic("scale", partitions=SCALE_PARTITIONS)
            # By default twice the records (same users, new events): the steady window must
            # outlast the group's joins. Produced in chunks: a long run need not fit in memory.
            n_scale = args.scale_events or 2 * len(records)
            for offset in range(0, n_scale, len(records)):
                size = min(len(records), n_scale - offset)
                produce_all(
                    bootstrap,
                    topic_scale,
                    uniform_records(size, args.scale_users or args.users, seed=5 + offset),
                )
            R["scale"] = {
                str(n): bench.scale(topic_scale, n_scale, n, args.repeats) for n in (1, 2, 3)
            }
            for result in R["scale"].values():
                result["users"] = args.scale_users or args.users

        if "cluster" not in skip:
            say("9. end to end on a 3-master Redis Cluster (same topic as section 1)")
            R["e2e_cluster"] = bench.cluster_e2e(topic, len(records), args.repeats)

        if "replay" not in skip:
            say("8. replay: read rate, and the live pipeline beside a replay")
            alone = R.get("e2e", {}).get("records_per_s", {}).get("median")
            bench.records = records
            R["replay"] = bench.replay_bench(topic, len(records), alone, args.repeats)

        if "latency" not in skip:
            say("4. latency at fixed offered loads (separate consumer process)")
            rates = [int(r) for r in args.rates.split(",") if r]
            R["latency"] = bench.latency(
                rates,
                args.latency_seconds,
                args.users,
                args.repeats,
                warmup=args.latency_warmup_seconds,
            )
            R["memory"] = R.get("memory", {})
            R["memory"]["consumer_peak_rss_mb"] = R["latency"].get("consumer_peak_rss_mb")
            say("4b. latency at the highest rate with --processes 2 (2-partition topic)")
            R["latency_2_processes"] = bench.latency(
                rates[-1:],
                args.latency_seconds,
                args.users,
                args.repeats,
                processes=2,
                warmup=args.latency_warmup_seconds,
            )

        if "rss" not in skip:
            counts = sorted({min(100_000, args.users_rss), args.users_rss})
            say(f"5b. consumer peak RSS after writing {counts} distinct users")
            R["consumer_rss_by_users"] = [bench.consumer_rss(n) for n in counts]

        if "model" not in skip:
            say(f"6. model: {args.model_users:,} users")
            R["model"] = bench.model_bench(
                # The planted types are defined over the generator's default 90-day span.
                args.model_users,
                90.0 if not args.quick else 10.0,
                args.repeats,
            )
        R["bench_self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        bench.cleanup()
        stack.__exit__(None, None, None)
    R["machine"]["loadavg_end"] = _loadavg()
    R["goals"] = goals(R)
    R["wall_seconds"] = time.perf_counter() - began
    args.output.write_text(json.dumps(R, indent=2, default=str))
    from render import render_markdown, render_table, update_readme

    print(render_table(R))
    say(f"wrote {args.output}")
    if not args.quick and args.output.resolve() == RESULTS.resolve():
        doc = ROOT / "docs" / "performance.md"
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(render_markdown(R))
        say(f"wrote {doc}")
        if update_readme(R):
            say("updated the performance section of README.md")
    return 0


def _streamseg(
    env: dict[str, str], *args: str, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """``python -m consumer.cli --log-level WARNING ARGS`` from the repository, output dropped
    (``stderr=subprocess.PIPE`` keeps the errors)."""
    argv = [sys.executable, "-m", "consumer.cli", "--log-level", "WARNING", *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the batch in flight finishes and commits), then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _window_rates(samples: list[tuple[float, int]], seconds: float) -> list[float]:
    """Rates over consecutive stretches of at least ``seconds`` of (time, count) samples."""
    rates = []
    begin = 0
    for i, (t, done) in enumerate(samples):
        if t - samples[begin][0] >= seconds:
            rates.append((done - samples[begin][1]) / (t - samples[begin][0]))
            begin = i
    return rates


def _pooled_windows(rate: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One rate's latency windows as one result: percentiles of all probes, and each
    window's p99 (the tail varies from window to window on shared cores)."""
    samples = [x for run in runs for x in run.pop("latency_samples_ms")]
    return {
        "offered_events_per_s": rate,
        "achieved_send_events_per_s": min(r["achieved_send_events_per_s"] for r in runs),
        "probes": sum(r["probes"] for r in runs),
        "probes_not_seen_within_5s": sum(r["probes_not_seen_within_5s"] for r in runs),
        "windows": len(runs),
        "p99_ms_per_window": [r["latency_ms"]["p99"] for r in runs],
        "latency_ms": percentiles(samples),
    }


def _used_memory(client: Any) -> int:
    """Redis ``used_memory`` in bytes, summed over the nodes of a cluster."""
    info = client.info("memory")
    if "used_memory" in info:
        return int(info["used_memory"])
    return sum(int(node["used_memory"]) for node in info.values())


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def goals(R: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    e2e = R.get("e2e", {}).get("records_per_s", {}).get("median")
    raw = R.get("ceilings", {}).get("raw_consume_records_per_s", {}).get("median")
    naive = R.get("naive", {}).get("records_per_s", {}).get("median")
    p99 = R.get("latency", {}).get("20000", {}).get("latency_ms", {}).get("p99")

    def add(name: str, value: float | None, target: float, higher: bool) -> None:
        met = None if value is None else (value >= target if higher else value < target)
        out.append({"goal": name, "value": value, "target": target, "met": met})

    scaled = [
        res["records_per_s"]["median"]
        for res in (R.get("scale") or {}).values()
        if res.get("records_per_s")
    ]
    best = max(scaled) if scaled else None
    add(
        ">= 50k events/s end to end (streamseg run, best --processes)",
        best,
        GOALS["service_events_per_s"],
        True,
    )
    add(
        ">= 100k events/s end to end (aim; streamseg run, best --processes)",
        best,
        GOALS["service_aim_events_per_s"],
        True,
    )
    add(
        ">= 50% of raw consume ceiling",
        e2e / raw if e2e and raw else None,
        GOALS["ratio_to_raw_consume"],
        True,
    )
    add(">= 10x naive", e2e / naive if e2e and naive else None, GOALS["ratio_to_naive"], True)
    add("p99 < 100 ms at 20k events/s", p99, GOALS["p99_ms_at_20k"], False)
    return out


if __name__ == "__main__":
    sys.exit(main())
