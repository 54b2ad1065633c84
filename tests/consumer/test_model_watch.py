"""The model a pipeline scores with (consumer/model_watch.py) while Redis comes and goes
(a bad model: test_faults; following the live pointer: test_replay)."""

from __future__ import annotations

import logging

import pytest

from consumer.model_store import ModelStore
from consumer.pipeline import SegmentPipeline
from consumer.redis_keys import KeyLayout
from devstack.redis_server import RedisServer
from tests.consumer.pipeline_support import settings_for
from tests.consumer.test_faults import small_model

pytestmark = [pytest.mark.redis]


def test_a_redis_error_keeps_the_model_in_use_and_is_said_once(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer() as server:
        settings = settings_for("127.0.0.1:1", server.url, "unused", namespace)
        settings.redis.socket_timeout_seconds = 1.0
        pipeline = SegmentPipeline(settings)  # not started: no Kafka needed for model checks
        store = ModelStore(server.client(), KeyLayout(namespace))
        store.publish(small_model())
        pipeline.refresh_model(force=True)
        assert pipeline.model is not None and pipeline.model.model_version == 1

        server.halt()
        caplog.clear()  # the INFO of the first load, when another test set the level lower
        with caplog.at_level(logging.WARNING, logger="consumer.model_watch"):
            for _ in range(3):
                pipeline.refresh_model(force=True)
        assert pipeline.model is not None and pipeline.model.model_version == 1
        said = [
            r.getMessage()
            for r in caplog.records
            if r.name == "consumer.model_watch" and r.levelno >= logging.WARNING
        ]
        assert len(said) == 1 and said[0].startswith("cannot check for a new model: "), said

        server.resume()
        store = ModelStore(server.client(), KeyLayout(namespace))
        store.publish(small_model(seed=1).model_copy(update={"model_version": 2}))
        pipeline.refresh_model(force=True)
        assert pipeline.model is not None and pipeline.model.model_version == 2
