"""Bytes written by a client this project did not write (kcat): empty and NULL values, NULL
keys, binary garbage, next to valid events. The pipeline must not crash, must account for
every record in its counters, and must dead-letter the original bytes with the reason."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import orjson
import pytest
import redis
from confluent_kafka import Producer

from consumer.redis_keys import KeyLayout
from model.events import TS_EXPECTED
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    T0,
    assert_state_matches,
    canonical,
    drain,
    header_values,
    read_state,
    read_topic,
    settings_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

VIEW_U1 = {"event_id": "k1", "user_id": "u1", "type": "view", "ts": int(T0), "category": "shoes"}
FAR_AHEAD = 3_786_912_000_000  # 2090-01-01T00:00:00Z
BUY_U3 = {"event_id": "k2", "user_id": "u:3 {x}", "type": "purchase", "ts": int(T0), "amount": 9.5}

# (kcat input line, key and value as read back, outcome). kcat splits the key at the first ':'.
# Without -Z an empty value is a zero-length value; with -Z it is a NULL value (and key).
PLAIN: list[tuple[bytes, bytes | None, bytes | None, str]] = [
    (b"u1:" + orjson.dumps(VIEW_U1), b"u1", orjson.dumps(VIEW_U1), "applied"),
    (b"u1:", b"u1", b"", "empty"),
    (b"u9:\x00\x01\xfe\xff{garbage", b"u9", b"\x00\x01\xfe\xff{garbage", "not_json"),
    (b"u9:{\"event_id\": \"k3\", \"user", b"u9", b'{"event_id": "k3", "user', "not_json"),
    (b"u2:" + orjson.dumps({**VIEW_U1, "event_id": "k4"}), b"u2",
     orjson.dumps({**VIEW_U1, "event_id": "k4"}), "key_mismatch"),
    (b"u1:[1,2]", b"u1", b"[1,2]", "not_object"),
    (b"u1:" + orjson.dumps({**VIEW_U1, "event_id": "k5", "type": "search"}), b"u1",
     orjson.dumps({**VIEW_U1, "event_id": "k5", "type": "search"}), "ignored"),
    (b"u1:" + orjson.dumps({**VIEW_U1, "event_id": "k6", "ts": True}), b"u1",
     orjson.dumps({**VIEW_U1, "event_id": "k6", "ts": True}), "invalid_field"),
    (b"u1:" + orjson.dumps({**VIEW_U1, "event_id": "k8", "user_id": ""}), b"u1",
     orjson.dumps({**VIEW_U1, "event_id": "k8", "user_id": ""}), "invalid_field"),
    # 2090: inside the fixed range, but decades after kcat stamped the record.
    (b"u1:" + orjson.dumps({**VIEW_U1, "event_id": "k7", "ts": FAR_AHEAD}), b"u1",
     orjson.dumps({**VIEW_U1, "event_id": "k7", "ts": FAR_AHEAD}), "ts_out_of_range"),
]  # fmt: skip
NULLS: list[tuple[bytes, bytes | None, bytes | None, str]] = [
    (b"u1:", b"u1", None, "empty"),
    (b":" + orjson.dumps(BUY_U3), None, orjson.dumps(BUY_U3), "applied"),
    (b":", None, None, "empty"),
]


def kcat_produce(bootstrap: str, topic: str, lines: list[bytes], *flags: str | bytes) -> None:
    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is not installed: run `make setup`"
    done = subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-K:", *flags],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def test_kcat_bytes_are_counted_dead_lettered_and_never_crash_the_pipeline(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    topic = new_topic()
    kcat_produce(kafka_bootstrap, topic, [line for line, *_ in PLAIN])
    kcat_produce(kafka_bootstrap, topic, [line for line, *_ in NULLS], "-Z")
    cases = PLAIN + NULLS
    # What kcat actually wrote: the ground truth the pipeline is judged against.
    written = read_topic(kafka_bootstrap, topic, len(cases))
    assert [(m.key(), m.value()) for m in written] == [(k, v) for _, k, v, _ in cases]

    settings = settings_for(
        kafka_bootstrap, redis_url, topic, namespace, **{"pipeline.batch_size": 4}
    )
    drain(settings, len(cases))

    outcomes = [outcome for *_, outcome in cases]
    bad = [(k, v, o) for _, k, v, o in cases if o not in ("applied", "ignored")]
    counters = {
        k.decode(): int(v) for k, v in redis_client.hgetall(KeyLayout(namespace).counters).items()
    }
    assert counters["records"] == len(cases)
    assert counters["applied"] == outcomes.count("applied")
    assert counters["ignored"] == outcomes.count("ignored")
    assert counters["dead_lettered"] == len(bad)
    assert counters["records"] == (
        counters["applied"]
        + counters["ignored"]
        + counters["dead_lettered"]
        + counters.get("duplicates", 0)
    )
    for reason in {o for *_, o in bad}:
        assert counters[f"dead_letter.{reason}"] == outcomes.count(reason), reason
    assert sum(n for k, n in counters.items() if k.startswith("dead_letter.")) == len(bad)

    dead = read_topic(kafka_bootstrap, settings.kafka.dead_letter_topic, len(bad))
    assert [(m.key(), m.value()) for m in dead] == [(k, v) for k, v, _ in bad]
    headers = [header_values(m) for m in dead]
    assert [h["streamseg.reason"].decode() for h in headers] == [o for *_, o in bad]
    bad_offsets = [i for i, (*_, o) in enumerate(cases) if o not in ("applied", "ignored")]
    assert [int(h["streamseg.source.offset"]) for h in headers] == bad_offsets
    assert {h["streamseg.source.topic"].decode() for h in headers} == {topic}
    invalid = [
        h["streamseg.detail"].decode() for h in headers if h["streamseg.reason"] == b"invalid_field"
    ]
    assert invalid == [
        f"ts: {TS_EXPECTED}: input should be a valid datetime",
        "user_id: String should have at least 1 character",  # not the int member's error
    ]

    applied = [VIEW_U1, BUY_U3]
    expected = recompute(canonical(applied), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)


def test_a_record_too_large_to_dead_letter_as_it_is_is_cut_not_fatal(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """A 1,000,000-byte key (compressed, the broker takes it) made the dead letter larger than
    the producer may send: the consumer died with MSG_SIZE_TOO_LARGE, on every restart, and
    the good records around it were never applied. The source's own headers are kept."""
    topic = new_topic()
    huge_key = b"k" * 1_000_000
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "compression.type": "lz4",
            "message.max.bytes": 2_000_000,
        }
    )
    before = {**VIEW_U1, "event_id": "b1", "user_id": "before"}
    after = {**VIEW_U1, "event_id": "a1", "user_id": "after"}
    producer.produce(topic, key=b"before", value=orjson.dumps(before))
    producer.produce(topic, key=huge_key, value=b"V" * 10, headers=[("traceparent", b"00-ab-01")])
    producer.produce(topic, key=b"after", value=orjson.dumps(after))
    assert producer.flush(30) == 0

    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    drain(settings, 3)

    expected = recompute(canonical([before, after]), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    [dead] = read_topic(kafka_bootstrap, settings.kafka.dead_letter_topic, 1)
    headers = header_values(dead)
    assert headers["streamseg.reason"] == b"not_json"
    assert headers["streamseg.key_truncated_from_bytes"] == b"1000000"
    assert headers["traceparent"] == b"00-ab-01"
    assert dead.key() == huge_key[:4096] and dead.value() == b"V" * 10


WARM_UP = 30


def test_a_header_name_that_is_not_utf8_is_dead_lettered_without_the_headers(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    redis_client: redis.Redis,
) -> None:
    """confluent-kafka cannot decode such a name: reading the headers of that record raised
    SystemError and stopped the consumer, on every restart (a second read of the same
    message crashes the interpreter). The dead letter goes without the source's headers,
    and says so; a valid event with such a header is applied (its headers are never read)."""
    topic = new_topic()
    before = {**VIEW_U1, "event_id": "b1", "user_id": "before"}
    valid_bad_name = {**VIEW_U1, "event_id": "h1", "user_id": "headed"}
    after = {**VIEW_U1, "event_id": "a1", "user_id": "after"}
    kcat_produce(kafka_bootstrap, topic, [b"before:" + orjson.dumps(before)])
    # Dead letters with readable headers first: the interpreter specialises the header read
    # after a few calls, and only then did the bad name crash it instead of raising.
    warm_up = [b"w%d:garbage" % i for i in range(WARM_UP)]
    kcat_produce(kafka_bootstrap, topic, warm_up, "-H", "traceparent=00-ab-01")
    kcat_produce(
        kafka_bootstrap,
        topic,
        [b"u9:garbage", b"headed:" + orjson.dumps(valid_bad_name)],
        "-H",
        b"\xff\xfe=v",
        "-H",
        "traceparent=00-ab-01",
    )
    kcat_produce(kafka_bootstrap, topic, [b"after:" + orjson.dumps(after)])

    settings = settings_for(kafka_bootstrap, redis_url, topic, namespace)
    drain(settings, WARM_UP + 4)

    expected = recompute(canonical([before, valid_bad_name, after]), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    *warmed, dead = read_topic(kafka_bootstrap, settings.kafka.dead_letter_topic, WARM_UP + 1)
    assert all(header_values(m)["traceparent"] == b"00-ab-01" for m in warmed)
    headers = header_values(dead)
    assert headers["streamseg.reason"] == b"not_json"
    assert headers["streamseg.headers_dropped"] == b"a header name is not UTF-8"
    assert "traceparent" not in headers
    assert (dead.key(), dead.value()) == (b"u9", b"garbage")
    counters = redis_client.hgetall(KeyLayout(namespace).counters)
    assert int(counters[b"dead_lettered"]) == WARM_UP + 1 and int(counters[b"applied"]) == 3
