"""Temporary stand-in for the demo: 1000 JSON events through a real topic into per-user counters
in Redis, proving the local stack end to end. Replaced by scripts/demo.py."""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

# devstack is dev tooling, not part of the installed distribution: import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from devstack.stack import LocalStack

EVENTS = 1000
USERS = 50
TIMEOUT = 60.0  # seconds to consume everything


def main() -> int:
    """Run the smoke demo; returns the process exit status."""
    rng = random.Random(7)
    run_id = uuid.uuid4().hex[:8]
    topic = f"demo-smoke-events-{run_id}"
    with LocalStack() as stack:
        print(f"stack: kafka {stack.bootstrap_servers}, redis {stack.redis_url}")
        print("start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in stack.startup_seconds.items()))
        admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
        created = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        created[topic].result(timeout=30)

        producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 5})
        sent: Counter[str] = Counter()
        for i in range(EVENTS):
            user = f"u{rng.randrange(USERS)}"
            event = {
                "event_id": f"{run_id}-{i}",
                "user_id": user,
                "type": rng.choice(["view", "cart", "purchase"]),
                "ts": int(time.time() * 1000),
            }
            producer.produce(topic, key=user.encode(), value=json.dumps(event).encode())
            sent[user] += 1
        assert producer.flush(30) == 0, "producer could not deliver every event"
        print(f"produced {EVENTS} events for {len(sent)} users to {topic}")

        consumer = Consumer(
            {
                "bootstrap.servers": stack.bootstrap_servers,
                "group.id": f"demo-smoke-{run_id}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([topic])
        client = redis.Redis.from_url(stack.redis_url)
        prefix = f"demo-smoke:{run_id}"
        consumed = 0
        deadline = time.monotonic() + TIMEOUT
        try:
            while consumed < EVENTS and time.monotonic() < deadline:
                batch = consumer.consume(num_messages=500, timeout=0.5)
                pipe = client.pipeline(transaction=False)
                for msg in batch:
                    if msg.error() is not None:
                        raise RuntimeError(f"consume error: {msg.error()}")
                    event = json.loads(msg.value() or b"{}")
                    pipe.hincrby(f"{prefix}:events", event["user_id"], 1)
                pipe.execute()
                consumed += len(batch)
        finally:
            consumer.close()
        print(f"consumed {consumed} events, counted per user in Redis hash {prefix}:events")

        stored = {k.decode(): int(v) for k, v in client.hgetall(f"{prefix}:events").items()}
        client.delete(f"{prefix}:events")
        client.close()
        admin.delete_topics([topic])[topic].result(timeout=30)
        # Destroy the clients before the broker goes, or they log reconnect failures at exit.
        del admin, producer
        if stored != dict(sent):
            print("MISMATCH between produced and counted events", file=sys.stderr)
            return 1
        top = sorted(stored.items(), key=lambda kv: -kv[1])[:3]
        print(f"read back {sum(stored.values())} events for {len(stored)} users; busiest: {top}")
    print("stack stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
