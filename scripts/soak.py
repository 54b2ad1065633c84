"""Soak run: one ``streamseg run`` consumer under a steady load for a long time.

Produces valid events at a fixed share (default 80%) of a rate you pass (say the end-to-end
throughput `make bench` measured) for a duration (default 10 minutes), and every few seconds
samples the consumer's resident memory (``/proc/<pid>/status`` VmRSS) and its lag (records
produced and acknowledged by the broker minus records the consumer has counted in Redis).
At the end it drains, stops the consumer with SIGTERM and prints a report: RSS at warm-up
and at the end and its growth, the largest lag, records produced, applied and lost, and
every error seen (consumer exit status, ``ERROR`` lines or tracebacks on its stderr).

    python scripts/soak.py --rate 20000               # 10 min at 16,000 events/s
    python scripts/soak.py --rate 2500 --seconds 20   # the short version a test runs

Kafka and Redis come from ``STREAMSEG_KAFKA__BOOTSTRAP_SERVERS`` / ``STREAMSEG_REDIS__URL``, or
a local stack is started (`devstack`). The run uses its own topic and namespace and removes
both at the end. Exit status 0 when no error was seen and nothing was lost, else 1.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from devstack.stack import LocalStack, service_env  # noqa: E402

_T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: event time starts here
_TYPES = ["view", "view", "view", "view", "cart", "purchase", "refund", "like", "share"]
_CATEGORIES = ["shoes", "books", "toys", "garden", "beauty", "sports", "pets", "auto"]
_ERROR_MARKERS = (" ERROR ", " CRITICAL ", "Traceback (most recent call last)")


@dataclass
class Sample:
    """One observation: seconds since the load started, consumer RSS (MiB), lag (records)."""

    at_seconds: float
    rss_mib: float
    lag_records: int


@dataclass
class SoakReport:
    """What a soak run measured; ``errors`` empty and ``records_lost`` 0 mean it passed."""

    target_rate: float
    seconds: float
    records_produced: int = 0
    records_consumed: int = 0
    records_applied: int = 0
    records_lost: int = 0
    achieved_rate: float = 0.0
    max_lag_records: int = 0
    drain_seconds: float = 0.0
    rss_warm_mib: float = 0.0
    rss_end_mib: float = 0.0
    rss_max_mib: float = 0.0
    rss_growth_ratio: float = 0.0
    errors: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def render(self) -> str:
        """The report as aligned text lines."""
        rows = [
            ("target rate", f"{self.target_rate:,.0f} events/s for {self.seconds:.0f} s"),
            ("achieved rate", f"{self.achieved_rate:,.0f} events/s"),
            ("records produced", f"{self.records_produced:,}"),
            ("records applied", f"{self.records_applied:,}"),
            ("records lost", f"{self.records_lost:,}"),
            ("max lag", f"{self.max_lag_records:,} records"),
            ("drain after load", f"{self.drain_seconds:.1f} s"),
            (
                "consumer RSS",
                f"{self.rss_warm_mib:.0f} MiB after warm-up, {self.rss_end_mib:.0f} MiB at the "
                f"end, max {self.rss_max_mib:.0f} MiB (growth {self.rss_growth_ratio:+.1%})",
            ),
            ("errors", str(len(self.errors))),
        ]
        lines = [f"{name:<18} {value}" for name, value in rows]
        lines += [f"  - {error}" for error in self.errors]
        return "\n".join(lines)


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class LoadGenerator(threading.Thread):
    """Produces valid events at ``rate`` events/s (in 50 ms ticks) until `stop`."""

    def __init__(self, bootstrap: str, topic: str, rate: float, users: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.rate = rate
        self.users = users
        self.rng = random.Random(seed)
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
        self.sent = 0
        self.acked = 0
        self.failed: list[str] = []
        self._stop_event = threading.Event()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.acked += 1
        elif len(self.failed) < 10:
            self.failed.append(f"delivery failed: {err}")

    def _event(self, i: int, elapsed: float) -> tuple[bytes, bytes]:
        rng = self.rng
        user = f"soak-u{rng.randrange(self.users)}"
        etype = rng.choice(_TYPES)
        event: dict[str, Any] = {
            "event_id": i,
            "user_id": user,
            "type": etype,
            # one wall-clock second is one hour of event time, a little out of order
            "ts": int(_T0_MS + elapsed * 3_600_000 - rng.uniform(0, 600_000)),
        }
        if etype in ("purchase", "refund"):
            event["amount"] = round(rng.lognormvariate(3.5, 0.8), 2)
        if rng.random() < 0.7:
            event["category"] = rng.choice(_CATEGORIES)
        return user.encode(), orjson.dumps(event)

    def run(self) -> None:
        began = time.monotonic()
        while not self._stop_event.is_set():
            elapsed = time.monotonic() - began
            due = int(elapsed * self.rate) - self.sent
            for _ in range(max(0, due)):
                key, value = self._event(self.sent, elapsed)
                try:
                    self.producer.produce(
                        self.topic, key=key, value=value, on_delivery=self._on_delivery
                    )
                except BufferError:
                    self.producer.poll(0.05)  # the local queue is full: let it drain
                    break
                self.sent += 1
            self.producer.poll(0)
            time.sleep(0.05)
        if self.producer.flush(60) and len(self.failed) < 10:
            self.failed.append("producer flush timed out")

    def stop(self) -> None:
        self._stop_event.set()


def _delete_namespace(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"*{namespace}*", count=1000))
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i : i + 1000])


def soak(
    bootstrap: str,
    redis_url: str,
    *,
    rate: float,
    seconds: float,
    sample_seconds: float,
    users: int,
    partitions: int,
    drain_timeout: float,
) -> SoakReport:
    """Run the soak against ``bootstrap`` and ``redis_url``; ``rate`` is the produced rate
    (events/s), ``seconds`` the load duration."""
    run_id = uuid.uuid4().hex[:8]
    topic, namespace = f"soak-{run_id}", f"soak-{run_id}"
    report = SoakReport(target_rate=rate, seconds=seconds)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    client = redis.Redis.from_url(redis_url)
    counters = f"{namespace}:counters"
    env = service_env(bootstrap, redis_url, topic, namespace, {"observability.metrics_port": 0})
    stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    consumer = subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "--log-level", "WARNING", "run"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr_file,
    )
    load = LoadGenerator(bootstrap, topic, rate, users, seed=int(run_id, 16))

    def consumed() -> int:
        return int(client.hget(counters, "records") or 0)

    try:
        load.start()
        began = time.monotonic()
        warm_up = max(3.0, 0.2 * seconds)
        while (elapsed := time.monotonic() - began) < seconds:
            time.sleep(min(sample_seconds, max(0.0, seconds - elapsed)))
            if consumer.poll() is not None:
                report.errors.append(f"consumer exited with {consumer.returncode} mid-run")
                break
            sample = Sample(
                at_seconds=round(time.monotonic() - began, 2),
                rss_mib=round(rss_mib(consumer.pid), 1),
                lag_records=max(0, load.acked - consumed()),
            )
            report.samples.append(sample)
            print(
                f"[{sample.at_seconds:6.1f} s] rss {sample.rss_mib:7.1f} MiB  "
                f"lag {sample.lag_records:8,d}  produced {load.acked:,}",
                flush=True,
            )
        load.stop()
        load.join(timeout=90)
        report.errors += load.failed
        load_seconds = time.monotonic() - began
        drain_began = time.monotonic()
        while consumer.poll() is None and consumed() < load.acked:
            if time.monotonic() - drain_began > drain_timeout:
                report.errors.append(f"not drained within {drain_timeout:.0f} s")
                break
            time.sleep(0.1)
        report.drain_seconds = time.monotonic() - drain_began
        report.records_produced = load.acked
        report.achieved_rate = load.acked / load_seconds
        report.records_consumed = consumed()
        report.records_applied = int(client.hget(counters, "applied") or 0)
        report.records_lost = max(0, load.acked - report.records_applied)
        warm = [s.rss_mib for s in report.samples if s.at_seconds >= warm_up] or [
            s.rss_mib for s in report.samples
        ]
        if warm:
            report.rss_warm_mib = warm[0]
            report.rss_end_mib = statistics.median(warm[-3:])
            report.rss_max_mib = max(warm)
            report.rss_growth_ratio = (max(warm) - warm[0]) / warm[0] if warm[0] else 0.0
        report.max_lag_records = max((s.lag_records for s in report.samples), default=0)
    finally:
        load.stop()
        if consumer.poll() is None:
            consumer.send_signal(signal.SIGTERM)
            try:
                consumer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                consumer.kill()
                consumer.wait()
                report.errors.append("consumer did not stop within 30 s of SIGTERM")
        if consumer.returncode not in (0, None) and not any("exited" in e for e in report.errors):
            report.errors.append(f"consumer exit status {consumer.returncode}")
        stderr_file.seek(0)
        for line in stderr_file.read().decode(errors="replace").splitlines():
            if any(marker in line for marker in _ERROR_MARKERS):
                report.errors.append(f"consumer stderr: {line.strip()[:300]}")
        stderr_file.close()
        admin.delete_topics([topic, f"{topic}.segments", f"{topic}.dlq"], operation_timeout=10)
        _delete_namespace(client, namespace)
        client.close()
    return report


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the soak, print the report; exit 0 on a clean run, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rate", type=float, required=True, help="reference rate, events/s (e.g. `make bench`)"
    )
    parser.add_argument(
        "--share", type=float, default=0.8, help="share of --rate to produce (default 0.8)"
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="load duration (600)")
    parser.add_argument("--sample-seconds", type=float, default=2.0, help="sampling period (2)")
    parser.add_argument("--users", type=int, default=20_000, help="distinct users (20000)")
    parser.add_argument("--partitions", type=int, default=2, help="topic partitions (2)")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds to catch up at the end (60)"
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    with LocalStack() as stack:
        report = soak(
            stack.bootstrap_servers,
            stack.redis_url,
            rate=args.rate * args.share,
            seconds=args.seconds,
            sample_seconds=args.sample_seconds,
            users=args.users,
            partitions=args.partitions,
            drain_timeout=args.drain_timeout,
        )
    print(report.render())
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2))
    return 0 if not report.errors and report.records_lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
