"""Category names across processes (consumer/category_names.py): a pipeline that never saw a
category's name still names it in a record, from the namespace's categories hash."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
import redis

from consumer.redis_keys import KeyLayout
from consumer.segment_record import iso_ms
from tests.consumer.pipeline_support import T0, as_records, drain, produce, settings_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_a_fresh_pipeline_names_categories_it_never_saw_from_redis(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic()
    users = [f"c{i}" for i in range(5)]
    bought = [
        {
            "event_id": f"p-{u}",
            "user_id": u,
            "type": "purchase",
            "ts": int(T0),
            "amount": 20.0,
            "category": f"garden-{u}",
        }
        for u in users
    ]
    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    produce(kafka_bootstrap, topic, as_records(bought))
    drain(settings, len(bought))
    keys = KeyLayout(namespace)
    assert redis_client.hlen(keys.categories) == len(users)

    # A new process (empty caches): events without a category for the same users. Their
    # records are written again and must still name the category bought before.
    viewed = [
        {"event_id": f"v-{u}", "user_id": u, "type": "view", "ts": int(T0) + 1000} for u in users
    ]
    produce(kafka_bootstrap, topic, as_records(viewed))
    drain(settings, len(viewed))
    for user in users:
        record = orjson.loads(redis_client.get(keys.segment(user)) or b"{}")
        assert record["event_time"] == iso_ms(T0 + 1000), record  # written by the new process
        assert record["top_category_spend"] == f"garden-{user}", record
