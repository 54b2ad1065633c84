"""State store on one Redis vs a Redis Cluster: users/s of read_states + write, and memory.

    .venv/bin/python benchmarks/cluster.py [--users 50000] [--batch 5000] [--repeats 3]
                                           [--clients 1] [--masters 3]

Starts its own servers (Debian's redis-server): one plain server and a cluster of
``--masters`` masters (`devstack.redis_cluster`). Each measurement reads and writes every
user once in batches of ``--batch`` (the pipeline's default batch), exactly as one pipeline
batch does: `StateStore.read_states`, then `StateStore.write` with states, segment records,
training rows, counters and the watermark. ``--clients N`` runs N client processes at once
and reports their summed rate. Prints the median (min-max) of ``--repeats`` runs, and the
server memory per user (``used_memory`` growth over all nodes / users). All servers and
clients share this machine's cores: on a 2-core box a cluster cannot add CPU, so the numbers
show the per-node cost of the cluster path, not the scaling of real separate machines. The
CPU microseconds per user (client process, and servers summed over masters) are the inputs
for sizing on real machines (docs/capacity.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from common import prepared_writes  # noqa: E402
from redis.cluster import RedisCluster  # noqa: E402

from consumer.redis_keys import KeyLayout  # noqa: E402
from consumer.settings import RedisClient  # noqa: E402
from consumer.state_store import StateStore  # noqa: E402
from devstack.redis_cluster import RedisClusterServer  # noqa: E402
from devstack.redis_server import RedisServer  # noqa: E402


def connect(url: str, cluster: bool) -> RedisClient:
    return RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)


def one_client(
    url: str, cluster: bool, namespace: str, users: int, batch: int
) -> tuple[float, float]:
    """Wall and CPU seconds of this process to read and write ``users`` users once, batch by
    batch (a pipeline's Redis work)."""
    client = connect(url, cluster)
    keys = KeyLayout(namespace)
    store = StateStore(client, keys, training_buffer_rows=200_000)
    prepared = prepared_writes(users, batch, f"{uuid.uuid4().hex[:6]}-")
    pairs = [list(keys.state_and_segment(w.user_ids)) for w in prepared]
    began, cpu = time.perf_counter(), time.process_time()
    for write, user_keys in zip(prepared, pairs, strict=True):
        store.read_states(write.user_ids, state_keys=[k for k, _ in user_keys])
        write.user_keys = user_keys
        store.write(write)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    client.close()
    return seconds, cpu


def _worker(args: tuple[str, bool, str, int, int]) -> tuple[float, float]:
    return one_client(*args)


def server_cpu_seconds(url: str, cluster: bool) -> float:
    """CPU seconds (user + sys) the server(s) used so far, summed over every master."""
    client = connect(url, cluster)
    if isinstance(client, RedisCluster):
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()]
    else:
        nodes = [client]
    infos = [node.info("cpu") for node in nodes]
    client.close()
    return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in infos)


def measure(url: str, cluster: bool, users: int, batch: int, clients: int) -> dict[str, float]:
    """Users/s of ``clients`` processes, each reading and writing ``users`` users, and the
    CPU microseconds per user of the clients and of the server(s)."""
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    jobs = [(url, cluster, namespace, users, batch)] * clients
    server_before = server_cpu_seconds(url, cluster)
    if clients == 1:
        timings = [one_client(*jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(clients) as pool:
            timings = pool.map(_worker, jobs)
    server = server_cpu_seconds(url, cluster) - server_before
    flush(url, cluster)
    total = users * clients
    return {
        "users_per_s": total / max(seconds for seconds, _ in timings),
        "client_cpu_us": 1e6 * sum(cpu for _, cpu in timings) / total,
        "server_cpu_us": 1e6 * server / total,
    }


def used_memory(client: RedisClient, cluster: bool) -> int:
    if isinstance(client, RedisCluster):
        nodes = client.get_primaries()
        return sum(int(client.get_redis_connection(n).info("memory")["used_memory"]) for n in nodes)
    return int(client.info("memory")["used_memory"])


def flush(url: str, cluster: bool) -> None:
    client = connect(url, cluster)
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushall()
    client.close()


def memory_per_user(url: str, cluster: bool, users: int, batch: int) -> float:
    """Bytes of server memory per user (state + record), over all nodes."""
    flush(url, cluster)
    client = connect(url, cluster)
    before = used_memory(client, cluster)
    store = StateStore(client, KeyLayout("mem"))  # no training buffer: users only
    for write in prepared_writes(users, batch, "m"):
        write.training_rows = None
        store.write(write)
    grown = used_memory(client, cluster) - before
    client.close()
    flush(url, cluster)
    return grown / users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50_000, help="users per client and run")
    parser.add_argument("--batch", type=int, default=5_000, help="users per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1, help="client processes at once")
    parser.add_argument("--masters", type=int, default=3, help="cluster masters (>= 3)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with RedisServer() as single, RedisClusterServer(masters=args.masters) as cluster:
        targets = {
            "single Redis": (single.url, False),
            f"{args.masters}-master cluster": (cluster.url, True),
        }
        for label, (url, is_cluster) in targets.items():
            runs = [
                measure(url, is_cluster, args.users, args.batch, args.clients)
                for _ in range(args.repeats)
            ]
            rates = [r["users_per_s"] for r in runs]
            results[label] = {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "client_cpu_us": statistics.median(r["client_cpu_us"] for r in runs),
                "server_cpu_us": statistics.median(r["server_cpu_us"] for r in runs),
                "bytes_per_user": memory_per_user(url, is_cluster, 20_000, args.batch),
            }
    print(
        f"state store read_states + write, {args.users} users x {args.clients} client(s), "
        f"batches of {args.batch}, median of {args.repeats}:"
    )
    for label, r in results.items():
        print(
            f"  {label:<18} {r['median']:>10,.0f} users/s  "
            f"(min {r['min']:,.0f}, max {r['max']:,.0f})  "
            f"CPU/user: client {r['client_cpu_us']:.1f} us, server(s) {r['server_cpu_us']:.1f} us  "
            f"memory {r['bytes_per_user']:,.0f} B/user"
        )
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average at the end: {' '.join(loadavg)} ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
