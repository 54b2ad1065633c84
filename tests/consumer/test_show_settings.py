"""`streamseg settings`: what a command line would run with, and no secret of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.cli import main


def test_settings_show_the_merged_values_and_hide_every_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = ["r3dis-Pw", "k4fka-Pw", "k3y-Pw", "al1ce", "c0nsumer-Pw", "s5l-Pw"]
    config = tmp_path / "streamseg.toml"
    config.write_text(
        '[trainer]\nn_clusters = 5\n[kafka.extra]\n"ssl.key.password" = "k3y-Pw"\n'
        '"fetch.max.bytes" = 1048576\n'
    )
    monkeypatch.setenv("STREAMSEG_TRAINER__N_CLUSTERS", "7")
    monkeypatch.setenv(
        "STREAMSEG_REDIS__URL",
        "rediss://al1ce:r3dis-Pw@cache.internal:6380/2?socket_timeout=3&ssl_password=s5l-Pw",
    )
    monkeypatch.setenv("STREAMSEG_KAFKA__CONSUMER_EXTRA", '{"ssl.key.password": "c0nsumer-Pw"}')
    monkeypatch.setenv("STREAMSEG_KAFKA__SASL_PASSWORD", "k4fka-Pw")
    assert main(["--config", str(config), "settings", "--namespace", "shop"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["trainer"]["n_clusters"] == 7  # the environment over the file
    assert shown["redis"]["namespace"] == "shop"  # the option over both
    assert shown["redis"]["url"] == (
        "rediss://***@cache.internal:6380/2?socket_timeout=3&ssl_password=***"
    )
    assert shown["kafka"]["consumer_extra"] == {"ssl.key.password": "***"}
    assert shown["kafka"]["sasl_password"] == "***"
    assert shown["kafka"]["extra"] == {"ssl.key.password": "***", "fetch.max.bytes": "1048576"}
    assert not any(secret in out for secret in secrets)
