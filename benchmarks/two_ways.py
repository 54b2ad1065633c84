"""Why `streamseg run` (section 7) measures faster than the in-process pass (section 1).

    .venv/bin/python benchmarks/two_ways.py [--events 300000] [--users 100000] [--rounds 3]

The two sections differ in two ways at once: section 1 runs the pipeline inside the benchmark
process on a 1-partition topic, section 7 runs `streamseg run` as its own process on a
6-partition topic. This script separates them: the same records go to a 1-partition and a
6-partition topic, and each round runs four passes in turn (in-process or `streamseg run`, on
each topic), so every pass of a round sees the same machine load. Prints each pass's
records/s and, for the in-process passes, the distinct users per batch (a batch costs per
user, not per record). Starts its own Kafka and Redis unless STREAMSEG_KAFKA__BOOTSTRAP_SERVERS
and STREAMSEG_REDIS__URL name running ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import delete_namespace, generate_records, produce_all, publish, uniform_records  # noqa: E402
from run import Bench, _stop, _streamseg  # noqa: E402

from devstack.stack import LocalStack, service_env  # noqa: E402

MODES = (
    "in-process, 1 partition",
    "in-process, 6 partitions",
    "run, 1 partition",
    "run, 6 partitions",
)


def run_process(bench: Bench, topic: str, n_records: int) -> float:
    """records/s of one `streamseg run` process from its first counted record to the last."""
    assert bench.model is not None
    ns = bench.namespace(f"two-ways-{uuid.uuid4().hex[:4]}")
    publish(bench.client, ns, bench.model)
    env = service_env(bench.bootstrap, bench.redis_url, topic, ns, {"kafka.group_id": f"g-{ns}"})
    proc = _streamseg(env, "run", "--idle-exit-seconds", "5", "--metrics-port", "0")
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            now, done = (
                time.perf_counter(),
                int(bench.client.hget(f"{ns}:counters", "records") or 0),
            )
            if done and first is None:
                first = (now, done)
            if done >= n_records:
                break
            time.sleep(0.01)
    finally:
        _stop(proc)
    delete_namespace(bench.client, ns)
    if first is None or done < n_records:
        raise RuntimeError(f"streamseg run counted {done} of {n_records} records")
    return (done - first[1]) / (now - first[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    stack = None
    bootstrap = os.environ.get("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("STREAMSEG_REDIS__URL")
    if not (bootstrap and redis_url):
        stack = LocalStack().__enter__()
        bootstrap, redis_url = stack.bootstrap_servers, stack.redis_url
    bench = Bench(argparse.Namespace(repeats=1), bootstrap, redis_url)
    try:
        records = uniform_records(args.events, args.users, seed=1)
        model_records, _ = generate_records(min(args.events, 100_000), 5000, seed=3)
        bench.bootstrap_model(model_records)
        topics = {1: bench.topic("two-ways-1", 1), 6: bench.topic("two-ways-6", 6)}
        for topic in topics.values():
            produce_all(bootstrap, topic, records)
        n = len(records)
        del records, model_records
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode in MODES:
                topic = topics[6 if "6" in mode else 1]
                if mode.startswith("in-process"):
                    res = bench.pipeline_pass(topic, n, "two-ways")
                    delete_namespace(bench.client, res["namespace"])
                    rate = res["records_per_s"]
                    users = res["users_touched_sum_over_batches"] / res["batches"]
                    extra = f", {users:,.0f} users per batch"
                else:
                    rate, extra = run_process(bench, topic, n), ""
                rates[mode].append(rate)
                print(f"round {r + 1}, {mode}: {rate:,.0f} records/s{extra}", flush=True)
        print(f"\nmedians of {args.rounds} rounds ({n:,} records, {args.users:,} users):")
        for mode, values in rates.items():
            print(f"  {mode:<26} {statistics.median(values):>9,.0f} records/s")
    finally:
        bench.cleanup()
        if stack is not None:
            stack.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
