"""The synthetic stream: deterministic, contract-conforming, dirty as configured, and its planted
user types behave as documented (funnels, activity windows, drift)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from consumer.exceptions import ConfigError
from consumer.malformed_records import MALFORMED_KINDS
from consumer.synthetic import (
    PLANTED_TYPES,
    EventGenerator,
    GeneratorConfig,
    GeneratorStats,
)
from model.events import (
    DEFAULT_ALIASES,
    EventBatch,
    EventType,
    Rejection,
    decode_events,
    resolve_type_map,
)

TYPE_MAP = resolve_type_map(DEFAULT_ALIASES)
DAY_MS = 86_400_000

Record = tuple[bytes | None, bytes]


def decode(records: list[Record]) -> tuple[EventBatch, list[Rejection]]:
    return decode_events([v for _, v in records], [k for k, _ in records], type_map=TYPE_MAP)


@pytest.fixture(scope="module")
def dense() -> tuple[EventGenerator, list[Record], GeneratorStats]:
    """A busy week: enough events per minute that every delayed event lands out of order."""
    gen = EventGenerator(
        GeneratorConfig(
            users=3000, days=7, seed=11, malformed_share=0.03, out_of_order_share=0.05,
            late_share=0.01, hostile_id_share=0.05,
        )
    )  # fmt: skip
    records = list(gen.records())
    return gen, records, gen.stats


@pytest.fixture(scope="module")
def season() -> tuple[EventGenerator, list[dict]]:
    """A full 90-day season of valid events with a drift of loyal high spenders at 60%."""
    gen = EventGenerator(
        GeneratorConfig(users=1000, days=90, seed=5, drift_type="loyal_high_spender", drift_at=0.6)
    )
    return gen, list(gen.events())


def test_same_seed_gives_identical_bytes_and_another_seed_differs() -> None:
    def stream(seed: int) -> list[Record]:
        config = GeneratorConfig(users=200, days=10, seed=seed, malformed_share=0.05)
        return list(EventGenerator(config).records())

    first, again, other = stream(42), stream(42), stream(43)
    assert first == again
    assert len(first) > 1000
    assert first != other
    # A generator can be iterated again and gives the same stream.
    gen = EventGenerator(GeneratorConfig(users=200, days=10, seed=42, malformed_share=0.05))
    assert list(gen.records()) == list(gen.records()) == first


def test_every_user_has_a_planted_type_in_the_documented_proportions(tmp_path: Path) -> None:
    gen = EventGenerator(GeneratorConfig(users=1000, days=14, seed=3, hostile_id_share=0.1))
    planted = gen.planted_types()
    assert len(planted) == 1000
    counts = Counter(planted.values())
    for name, profile in PLANTED_TYPES.items():
        assert abs(counts[name] - 1000 * profile.share) <= 1, name
    path = tmp_path / "planted.json"
    gen.write_planted_types(path)
    assert orjson.loads(path.read_bytes()) == planted
    users_in_stream = {e["user_id"] for e in gen.events()}
    assert users_in_stream <= set(planted)


def test_valid_records_pass_the_contract_and_malformed_ones_are_all_rejected(
    dense: tuple[EventGenerator, list[Record], GeneratorStats],
) -> None:
    _, records, stats = dense
    batch, rejections = decode(records)
    assert len(batch.ignored) == 0
    assert len(batch) == stats.valid
    assert len(rejections) == sum(stats.malformed.values())
    assert len(batch) + len(rejections) == len(records) == stats.records
    # Every kind of malformed record shows up, and every rejection reason is exercised.
    assert set(stats.malformed) == set(MALFORMED_KINDS)
    assert {r.reason for r in rejections} == {
        "oversize", "empty", "not_json", "not_object", "invalid_field", "ts_out_of_range",
        "key_mismatch",
    }  # fmt: skip
    # Valid records are keyed by their user id and carry unique event ids.
    valid = [orjson.loads(records[i][1]) for i in batch.index]
    keys = [records[i][0] for i in batch.index]
    assert keys == [e["user_id"].encode() for e in valid]
    assert len({e["event_id"] for e in valid}) == len(valid)


def test_events_are_the_valid_records(
    dense: tuple[EventGenerator, list[Record], GeneratorStats],
) -> None:
    gen, records, _ = dense
    batch, _ = decode(records)
    assert list(gen.events()) == [orjson.loads(records[i][1]) for i in batch.index]


def test_valid_only_stream_has_nothing_to_reject() -> None:
    config = GeneratorConfig(users=300, days=7, seed=9, malformed_share=0.2, valid_only=True)
    gen = EventGenerator(config)
    records = list(gen.records())
    batch, rejections = decode(records)
    assert rejections == [] and len(batch) == len(records) > 0


def test_shares_of_dirt_are_roughly_as_configured(
    dense: tuple[EventGenerator, list[Record], GeneratorStats],
) -> None:
    gen, records, stats = dense
    cfg = gen.config
    malformed = sum(stats.malformed.values()) / len(records)
    assert malformed == pytest.approx(cfg.malformed_share, rel=0.15)

    events = list(gen.events())
    ts = np.array([_epoch_ms(e["ts"]) for e in events])
    seen_max = np.maximum.accumulate(np.r_[-np.inf, ts[:-1]])
    out_of_order = np.mean(ts < seen_max)
    expected = cfg.out_of_order_share + cfg.late_share
    assert expected * 0.75 < out_of_order < expected * 1.1
    late = np.mean(ts < seen_max - 3_600_000)
    assert late == pytest.approx(cfg.late_share, rel=0.3)

    n = len(events)
    aliased = sum(e["type"] in DEFAULT_ALIASES for e in events) / n
    iso = sum(isinstance(e["ts"], str) for e in events) / n
    # Shares applied to events that have an alias (all but share).
    shares_type = sum(e["type"] == "share" for e in events) / n
    assert aliased == pytest.approx(cfg.alias_share * (1 - shares_type), rel=0.1)
    assert iso == pytest.approx(cfg.iso_ts_share, rel=0.1)
    hostile = [u for u in gen.planted_types() if not u.startswith("u")]
    assert len(hostile) == pytest.approx(cfg.users * cfg.hostile_id_share, rel=0.3)
    assert any(set(u) & {"{", "}", ":", " "} for u in hostile)
    assert any(not u.isascii() for u in hostile)


def test_the_funnel_makes_sense_for_every_planted_type(
    season: tuple[EventGenerator, list[dict]],
) -> None:
    gen, events = season
    planted = gen.planted_types()
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    revenue: dict[str, list[float]] = defaultdict(list)
    for e in _before_drift(gen, events):
        kind = TYPE_MAP[e["type"]].name.lower()
        counts[planted[e["user_id"]]][kind] += 1
        if kind == "purchase":
            revenue[planted[e["user_id"]]].append(e["amount"])
    for name, c in counts.items():
        assert c["purchase"] <= c["cart"] <= c["view"], name
        assert c["refund"] <= c["purchase"], name
    users = Counter(planted.values())

    def per_user(name: str, kind: str) -> float:
        return counts[name][kind] / users[name]

    assert per_user("loyal_high_spender", "purchase") > 3 * per_user("window_shopper", "purchase")
    assert per_user("loyal_high_spender", "purchase") > 3 * per_user("occasional", "purchase")
    assert np.median(revenue["loyal_high_spender"]) > 3 * np.median(revenue["bargain_hunter"])
    assert per_user("window_shopper", "view") > per_user("occasional", "view") * 3
    refund_rate = {n: counts[n]["refund"] / counts[n]["purchase"] for n in counts}
    assert refund_rate["bargain_hunter"] > 2 * refund_rate["loyal_high_spender"]


def test_new_users_arrive_late_and_churning_users_fall_silent(
    season: tuple[EventGenerator, list[dict]],
) -> None:
    gen, events = season
    planted = gen.planted_types()
    cfg = gen.config
    span = cfg.end_ms - cfg.start_ms
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for e in events:
        t = _epoch_ms(e["ts"])
        first[e["user_id"]] = min(first.get(e["user_id"], t), t)
        last[e["user_id"]] = max(last.get(e["user_id"], t), t)
    new = [u for u, t in planted.items() if t == "new_user" and u in first]
    churning = [u for u, t in planted.items() if t == "churning" and u in last]
    assert len(new) > 80 and len(churning) > 100
    assert min(first[u] for u in new) >= cfg.start_ms + 0.7 * span
    assert max(last[u] for u in churning) < cfg.start_ms + 2 / 3 * span
    steady = [u for u, t in planted.items() if t == "loyal_high_spender"]
    assert np.median([first[u] for u in steady]) < cfg.start_ms + 0.1 * span
    assert all(cfg.start_ms <= _epoch_ms(e["ts"]) < cfg.end_ms for e in events)


def test_drift_changes_the_drifted_type_after_drift_at(
    season: tuple[EventGenerator, list[dict]],
) -> None:
    gen, events = season
    drift_ms = gen.config.drift_ms
    assert drift_ms is not None
    planted = gen.planted_types()

    def purchases_per_day(name: str, after: bool) -> float:
        n = sum(
            1
            for e in events
            if planted[e["user_id"]] == name
            and TYPE_MAP[e["type"]] == EventType.PURCHASE
            and (_epoch_ms(e["ts"]) >= drift_ms + DAY_MS) == after
            and (after or _epoch_ms(e["ts"]) < drift_ms)
        )
        days = gen.config.end_ms - drift_ms - DAY_MS if after else drift_ms - gen.config.start_ms
        return n / days

    loyal_before = purchases_per_day("loyal_high_spender", after=False)
    loyal_after = purchases_per_day("loyal_high_spender", after=True)
    assert loyal_after < 0.25 * loyal_before
    # Other types keep their behaviour.
    bargain_before = purchases_per_day("bargain_hunter", after=False)
    bargain_after = purchases_per_day("bargain_hunter", after=True)
    assert bargain_after == pytest.approx(bargain_before, rel=0.25)


def test_expected_record_count_is_a_good_estimate() -> None:
    gen = EventGenerator(GeneratorConfig(users=2000, days=30, seed=2))
    actual = sum(1 for _ in gen.records())
    assert gen.expected_records() == pytest.approx(actual, rel=0.05)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"users": 0}, "users"),
        ({"malformed_share": 1.0}, "malformed_share"),
        ({"drift_type": "vip"}, "drift_type"),
        ({"start_ms": 0}, "start_ms"),
        ({"activity": float("nan")}, "activity"),
        ({"activity": 1e9}, "activity"),
        ({"users": 10**12}, "users"),
    ],
)
def test_a_bad_configuration_names_the_setting(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        GeneratorConfig(**overrides)


def _epoch_ms(ts: int | str) -> float:
    if isinstance(ts, int):
        return float(ts)
    return datetime.fromisoformat(ts).timestamp() * 1000.0


def _before_drift(gen: EventGenerator, events: Iterable[dict]) -> Iterable[dict]:
    drift_ms = gen.config.drift_ms
    return (e for e in events if drift_ms is None or _epoch_ms(e["ts"]) < drift_ms)


def test_the_stats_count_the_users_who_acted() -> None:
    """A short stream leaves some planted users without an event: the summary says how many
    acted, not how many were planted."""
    gen = EventGenerator(GeneratorConfig(users=400, days=2.0, seed=5, valid_only=True))
    acted = {orjson.loads(value)["user_id"] for _, value in gen.records()}
    assert gen.stats.users == len(acted) < 400
