"""`make demo`: the whole product end to end on a local Kafka and Redis, in about two minutes.

Starts the stack (or uses STREAMSEG_KAFKA__BOOTSTRAP_SERVERS / STREAMSEG_REDIS__URL), creates
the topics, then runs three real processes side by side -- `streamseg generate` (a simulated
shop with planted user types, 90 days of event time), `streamseg run` (the consumer) and
`streamseg train` (the trainer) -- while a live view shows throughput, lag, dead letters,
the model version and the segments. It ends with the HTML report, sample lookups, how well
the segments recover the planted types, and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import redis
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consumer.kafka_clients import ensure_topics  # noqa: E402
from consumer.lookup import SegmentLookup  # noqa: E402
from consumer.model_store import ModelStore  # noqa: E402
from consumer.redis_keys import KeyLayout  # noqa: E402
from consumer.snapshot import read_snapshot  # noqa: E402
from devstack.stack import LocalStack, service_env, service_settings  # noqa: E402
from model.features import COL  # noqa: E402
from model.quality import model_inertia, offline_inertia  # noqa: E402

console = Console()
NAMESPACE = "demo"
PARTITIONS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--days", type=float, default=90)
    parser.add_argument("--rate", type=float, default=5000, help="records/s offered (0 = max)")
    parser.add_argument("--events-per-user", type=float, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]streamseg demo")
    console.print("starting Kafka and Redis (first run downloads the Kafka jars) ...")
    with LocalStack() as stack:
        for service, seconds in stack.startup_seconds.items():
            console.print(f"  {service} ready in {seconds:.1f} s ({stack.origin.get(service)})")
        return run_demo(args, stack.bootstrap_servers, stack.redis_url)


def run_demo(args: argparse.Namespace, bootstrap: str, redis_url: str) -> int:
    topic = f"demo-events-{int(time.time())}"
    env = service_env(
        bootstrap,
        redis_url,
        topic,
        NAMESPACE,
        {
            "kafka.group_id": f"demo-{topic}",
            "trainer.bootstrap_rows": 3000,
            # 90 days pass in about a minute: re-score idle users once per day of event time,
            # as live (the wall-clock bound is for replays of large namespaces) ...
            "pipeline.rescore_min_wall_seconds": 0,
            # ... and update the model every second on the rows of a few thousand users (a second
            # is days of event time here: with 4 s the model trailed the stream).
            "trainer.update_rows": 1000,
            "trainer.update_interval_seconds": 1,
        },
    )
    settings = service_settings(bootstrap, redis_url, topic, NAMESPACE)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*{NAMESPACE}*", count=1000):
        client.unlink(key)
    ensure_topics(settings.kafka, partitions=PARTITIONS)
    console.print(f"topics: {topic} ({PARTITIONS} partitions), {topic}.segments, {topic}.dlq")

    streamseg = [sys.executable, "-m", "consumer.cli", "--log-level", "WARNING"]
    # The services' logs go to files: at INFO they show start-up, models published and
    # picked up, and the closing summaries, as a deployment's would.
    service = [sys.executable, "-m", "consumer.cli", "--log-level", "INFO"]
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    planted_path = args.out / "planted.json"
    generate = [
        *streamseg,
        "generate",
        "--users",
        str(args.users),
        "--days",
        str(args.days),
        "--seed",
        str(args.seed),
        "--rate",
        str(args.rate),
        "--events-per-user",
        str(args.events_per_user),
        "--drift",
        "loyal_high_spender",
        "--drift-at",
        "0.7",
        "--out",
        str(args.out / "events.jsonl"),
        "--planted",
        str(planted_path),
        "--no-progress",
    ]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, command in (
        ("consumer", [*service, "run"]),
        ("trainer", [*service, "train"]),
        ("generator", generate),
    ):
        with open(logs / f"{name}.log", "wb") as log_file:  # the child keeps its own handle
            procs[name] = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=log_file
            )
    keys = KeyLayout(NAMESPACE)
    models = ModelStore(client, keys)
    lag_reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-{topic}"})
    started = time.monotonic()
    history: list[tuple[float, int]] = []
    try:
        with Live(console=console, refresh_per_second=4) as live:
            caught_up_since: float | None = None
            while True:
                counters = read_counters(client, keys)
                lag = consumer_lag(lag_reader, topic)
                history.append((time.monotonic(), counters.get("records", 0)))
                live.update(render(counters, lag, history, models, client, keys, procs, started))
                generator_done = procs["generator"].poll() is not None
                if generator_done and procs["generator"].returncode != 0:
                    raise SystemExit(f"generator failed; see {logs / 'generator.log'}")
                for name in ("consumer", "trainer"):
                    if procs[name].poll() is not None:
                        raise SystemExit(f"{name} exited; see {logs / (name + '.log')}")
                if generator_done and lag == 0:
                    caught_up_since = caught_up_since or time.monotonic()
                    if time.monotonic() - caught_up_since > 6:  # let the trainer publish once more
                        break
                time.sleep(0.5)
    finally:
        lag_reader.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    elapsed = time.monotonic() - started
    counters = read_counters(client, keys)
    if not console.is_terminal:
        console.line()  # rich's Live leaves its last frame unterminated when output is a file
    console.rule("[bold]summary")
    console.print(
        f"{counters.get('records', 0):,} records in {elapsed:.0f} s: "
        f"{counters.get('applied', 0):,} applied, {counters.get('ignored', 0):,} ignored "
        f"(unmapped type), {counters.get('dead_lettered', 0):,} dead-lettered "
        f"({', '.join(f'{k[12:]}={v}' for k, v in counters.items() if k[:12] == 'dead_letter.')})"
    )
    version = models.current_version()
    console.print(f"model in use: v{version}; versions published: {len(models.versions())}")
    planted = json.loads(planted_path.read_text())
    show_model_fit(client, keys, models)
    show_recovery(client, keys, planted)
    show_lookups(redis_url, planted, keys)

    env_report = [*streamseg, "report", "--out", str(args.out / "report")]
    report = subprocess.run(env_report, env=env, capture_output=True, text=True)
    if report.returncode == 0:
        console.print(f"report: [bold]{args.out / 'report' / 'index.html'}[/bold]")
    else:
        console.print(f"[red]report failed[/red]: {report.stderr.strip()[-500:]}")
    console.print(f"logs: {logs}; stream: {args.out / 'events.jsonl'}")
    console.print("stopping Kafka and Redis ...")
    return 0


def read_counters(client: redis.Redis, keys: KeyLayout) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.counters).items()}


def consumer_lag(reader: Consumer, topic: str) -> int:
    """Sum over partitions of (high watermark - committed offset) of the consumer's group."""
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    try:
        committed = reader.committed(parts, timeout=2)
        lag = 0
        for tp in committed:
            _, high = reader.get_watermark_offsets(tp, timeout=2)
            lag += high - max(tp.offset, 0)
        return lag
    except Exception:
        return -1


def render(
    counters: dict[str, int],
    lag: int,
    history: list[tuple[float, int]],
    models: ModelStore,
    client: redis.Redis,
    keys: KeyLayout,
    procs: dict[str, subprocess.Popen[bytes]],
    started: float,
) -> Panel:
    now, total = history[-1]
    window = [h for h in history if now - h[0] <= 3.0]
    rate = (total - window[0][1]) / max(1e-9, now - window[0][0]) if len(window) > 1 else 0.0
    stats = Table.grid(padding=(0, 2))
    stats.add_row("elapsed", f"{now - started:5.0f} s")
    stats.add_row("events/s", f"{rate:,.0f}")
    stats.add_row("records", f"{total:,}")
    stats.add_row("consumer lag", "?" if lag < 0 else f"{lag:,}")
    stats.add_row("dead-lettered", f"{counters.get('dead_lettered', 0):,}")
    stats.add_row("segment changes", f"{counters.get('segment_changes', 0):,}")
    generating = "running" if procs["generator"].poll() is None else "done"
    stats.add_row("generator", generating)

    version = models.current_version()
    segments = Table(
        title=f"segments (model v{version})"
        if version
        else "segments: cold start, waiting for the trainer's first model"
    )
    segments.add_column("id", justify="right")
    segments.add_column("name")
    segments.add_column("tier", justify="right")
    segments.add_column("users", justify="right")
    if version:
        model = models.load_current()
        # A publish sets ``version`` and ``current`` in one transaction: never None here.
        assert model is not None
        sizes = {int(k): int(v) for k, v in client.hgetall(keys.segment_sizes).items()}
        for pos in np.argsort(model.tiers):
            seg = model.ids[pos]
            segments.add_row(
                str(seg), model.names[pos], str(model.tiers[pos]), f"{sizes.get(seg, 0):,}"
            )
    return Panel(Group(stats, segments), title="streamseg live", border_style="cyan")


def show_model_fit(client: redis.Redis, keys: KeyLayout, models: ModelStore) -> None:
    """The model in use against offline k-means on the users as the segments now see them."""
    model = models.load_current()
    snapshot = read_snapshot(client, keys, max_users=100_000)
    if model is None or len(snapshot) < 10 * len(model.ids):
        return
    live = model_inertia(model, snapshot.features)
    offline = offline_inertia(model.transform(snapshot.features), len(model.ids), n_init=10)
    console.print(
        f"model v{model.model_version} on the final snapshot ({len(snapshot):,} users at the "
        f"watermark): inertia {live:,.0f}, offline KMeans(n_init=10) {offline:,.0f}, "
        f"ratio {live / offline:.3f} (goal <= 1.05)"
    )


def show_recovery(client: redis.Redis, keys: KeyLayout, planted: dict[str, str]) -> None:
    """How the segments line up with the planted types (the generator's ground truth)."""
    from sklearn.metrics import adjusted_rand_score

    users = list(planted)
    raw = client.mget([keys.state(u) for u in users])
    pairs = [
        (planted[u], int(np.frombuffer(v, dtype=np.float64)[COL["segment_id"]]))
        for u, v in zip(users, raw, strict=True)
        if v is not None
    ]
    pairs = [(t, s) for t, s in pairs if s >= 0]
    if not pairs:
        console.print("no user has a segment yet")
        return
    ari = adjusted_rand_score([t for t, _ in pairs], [s for _, s in pairs])
    console.print(
        f"adjusted Rand index, segments vs planted types: {ari:.2f} ({len(pairs):,} users)"
    )
    table = Table(title="planted type -> segment ids (share of users)")
    table.add_column("planted type")
    table.add_column("segments")
    by_type: dict[str, Counter[int]] = {}
    for t, s in pairs:
        by_type.setdefault(t, Counter())[s] += 1
    for t, counts in sorted(by_type.items()):
        n = sum(counts.values())
        table.add_row(t, ", ".join(f"{s}: {c / n:.0%}" for s, c in counts.most_common(3)))
    console.print(table)


def show_lookups(redis_url: str, planted: dict[str, str], keys: KeyLayout) -> None:
    lookup = SegmentLookup.from_url(redis_url, NAMESPACE)
    by_type: dict[str, list[str]] = {}
    for user, kind in planted.items():
        by_type.setdefault(kind, []).append(user)
    samples: dict[str, str] = {}
    console.rule("sample lookups (what a personalization service gets)")
    console.print(
        "[dim]each record names the model version that assigned it: a user moves to a newer "
        "model at their next event or at the re-score pass of idle users[/dim]"
    )
    for kind, users in sorted(by_type.items()):
        # the first user of each planted type that has a record (some never acted), printed
        # byte for byte as stored: what GET returns to a service in any language
        records = lookup.get_many_raw(users[:50])
        found = next(((u, r) for u, r in zip(users, records, strict=False) if r), None)
        if found is None:
            console.print(f"[dim]{kind:>20}[/dim]  no record yet")
            continue
        samples[kind] = found[0]
        console.print(f"[dim]{kind}[/dim]")
        console.print(found[1].decode(), soft_wrap=True, markup=False, highlight=False)
    if not samples:
        return
    user = next(iter(samples.values()))
    # The demo's Redis stops with the demo: name the key as a deployment would read it.
    console.print(
        f"from any language, against a running deployment: "
        f"redis-cli -u \"$STREAMSEG_REDIS__URL\" GET '{keys.segment(user)}'",
        soft_wrap=True,
    )


if __name__ == "__main__":
    sys.exit(main())
