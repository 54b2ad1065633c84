"""`streamseg audience` on what the real pipeline and trainer wrote: every record once, as
stored, or the users of the segments and tiers asked for."""

from __future__ import annotations

import orjson
import pytest
import redis

from consumer.cli import main
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from tests.consumer.pipeline_support import point_cli_at_servers

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def stored_records(client: redis.Redis, keys: KeyLayout) -> dict[bytes, bytes]:
    """Every record key of the namespace -> its value, read key by key."""
    found = {k: client.get(k) for k in client.scan_iter(match=keys.segment_pattern, count=1000)}
    return {k: v for k, v in found.items() if v is not None}


def test_audience_writes_every_record_or_those_of_the_segments_asked(
    two_model_versions: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    keys = KeyLayout(two_model_versions)
    monkeypatch.setattr("consumer.audience._CHUNK", 7)  # several reads
    records = sorted(stored_records(redis_client, keys).values())
    assert len(records) > 20
    point_cli_at_servers(monkeypatch, kafka_bootstrap, redis_url)
    base = ["--namespace", two_model_versions, "audience", "--no-progress"]

    assert main(base) == 0
    out, err = capsysbinary.readouterr()
    assert sorted(out.splitlines()) == records  # each once, byte for byte
    n = f"{len(records):,}"
    assert f"namespace {two_model_versions}: {n} records written of {n} users".encode() in err

    parsed = [orjson.loads(r) for r in records]
    segment = parsed[0]["segment_id"]
    tier = parsed[0]["tier"]
    assert main([*base, "--segment", str(segment)]) == 0
    chosen = sorted(capsysbinary.readouterr().out.splitlines())
    assert chosen == sorted(
        r for r, p in zip(records, parsed, strict=True) if p["segment_id"] == segment
    )
    assert 0 < len(chosen) < len(records)
    # A name of the current model selects the users whose record names its id.
    model = ModelStore(redis_client, keys).load_current()
    assert model is not None and segment in model.ids
    name = model.names[model.ids.index(segment)]
    assert main([*base, "--segment", name]) == 0
    assert sorted(capsysbinary.readouterr().out.splitlines()) == chosen
    assert main([*base, "--segment", "999"]) == 0  # said, not refused: records may hold it
    out, err = capsysbinary.readouterr()
    assert out == b"" and b"--segment 999: no such segment in the current model" in err
    assert main([*base, "--segment", "no such name"]) == 2
    assert b"--segment 'no such name': no segment of the current model has that name" in (
        capsysbinary.readouterr().err
    )
    assert main([*base, "--segment", str(segment), "--tier", str(tier + 1)]) == 0
    assert capsysbinary.readouterr().out == b""  # both must hold: a segment has one tier
    assert main([*base, "--tier", str(tier)]) == 0
    by_tier = sorted(capsysbinary.readouterr().out.splitlines())
    assert by_tier == sorted(r for r, p in zip(records, parsed, strict=True) if p["tier"] == tier)

    assert main(["--namespace", f"{two_model_versions}-typo", "audience", "--no-progress"]) == 2
    assert b"holds no data" in capsysbinary.readouterr().err
