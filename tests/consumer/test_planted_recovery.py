"""Issue #4: does the streaming segmenter recover the generator's planted user types?

A modest planted population (`consumer.synthetic`) goes through the pipeline's feature maths
(decode, decayed state, features at each user's latest event, preprocessing) and the streaming
segmenter (a bootstrap sample, then mini-batches), without Kafka or Redis. The generator lives
in `consumer/`, hence this test is here and not under `tests/model/`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.cluster import KMeans

from consumer.synthetic import EventGenerator, GeneratorConfig
from model.events import DEFAULT_ALIASES, DecodeLimits, decode_events, resolve_type_map
from model.features import (
    COL,
    FEATURE_NAMES,
    LOG_FEATURES,
    EventColumns,
    FeatureConfig,
    apply_events,
    category_codes,
    derive_features,
    empty_state,
)
from model.preprocessing import Preprocessor
from model.quality import adjusted_rand, inertia, offline_inertia, separability_ari
from model.segmenter import StreamingSegmenter, limit_threads

USERS, DAYS, K = 1500, 30.0, 6
#: Users with at least this many events have a history long enough to show their type.
RICH_HISTORY_EVENTS = 50


class Population:
    def __init__(self) -> None:
        gen = EventGenerator(GeneratorConfig(users=USERS, days=DAYS, seed=11, valid_only=True))
        records = list(gen.records())
        batch, rejected = decode_events(
            [v for _, v in records],
            [k for k, _ in records],
            type_map=resolve_type_map(DEFAULT_ALIASES),
            limits=DecodeLimits(),
        )
        assert not rejected
        rows: dict[str, int] = {}
        user = np.fromiter((rows.setdefault(u, len(rows)) for u in batch.user_id), np.int64)
        state = empty_state(len(rows))
        config = FeatureConfig()
        apply_events(
            state,
            EventColumns(
                user=user,
                ts_ms=batch.ts_ms,
                type_code=batch.type_code,
                amount=batch.amount,
                category_code=category_codes(batch.category, {}),
                partition=np.zeros(len(batch), np.int64),
                offset=batch.index.astype(np.int64),
            ),
            config,
        )
        # As the live path does: each user's features at their latest event.
        X = derive_features(state, state[:, COL["last_ts_ms"]], config)
        self.Z = Preprocessor(FEATURE_NAMES, log_columns=LOG_FEATURES).fit_transform(X)
        planted = gen.planted_types()
        self.truth = np.array([planted[u] for u in rows])
        events = Counter(batch.user_id)
        self.rich = np.array([events[u] for u in rows]) >= RICH_HISTORY_EVENTS

        order = np.random.default_rng(0).permutation(len(self.Z))
        self.Z, self.truth, self.rich = self.Z[order], self.truth[order], self.rich[order]
        seg = StreamingSegmenter(n_clusters=K, random_state=0).fit(self.Z[:500])
        for start in range(500, len(self.Z), 400):
            seg.partial_fit(self.Z[start : start + 400])
        self.streaming = seg
        self.positions = seg.predict(self.Z)
        with limit_threads(1):
            self.offline = KMeans(n_clusters=K, n_init=10, random_state=0).fit(self.Z)


@pytest.fixture(scope="module")
def population() -> Population:
    return Population()


def test_streaming_segments_are_as_good_as_offline_k_means(population: Population) -> None:
    p = population
    ratio = inertia(p.Z, p.streaming.cluster_centers_) / offline_inertia(p.Z, K, n_init=10)
    assert ratio <= 1.05
    # The streaming algorithm loses nothing against offline k-means on the planted types.
    streaming = adjusted_rand(p.truth, p.positions)
    offline = adjusted_rand(p.truth, p.offline.labels_)
    assert streaming >= offline - 0.05


def test_planted_types_with_a_rich_history_are_visible_in_the_features(
    population: Population,
) -> None:
    # A classifier told the types recovers them from the same scaled features, so the
    # generator plants behaviours the features can see (for users with enough events).
    p = population
    assert p.rich.mean() > 0.4
    assert separability_ari(p.Z[p.rich], p.truth[p.rich]) >= 0.85


@pytest.mark.xfail(
    strict=True,
    reason="issue #4 open: the planted types are not k-means clusters of these features "
    "(see the benchmark's planted_ceiling_ari and planted_partition_inertia_ratio)",
)
def test_streaming_segments_recover_the_planted_types(population: Population) -> None:
    assert adjusted_rand(population.truth, population.positions) >= 0.9
