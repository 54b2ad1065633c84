"""``streamseg lookup``: segment records as a personalization service reads them."""

from __future__ import annotations

import io
from collections.abc import Callable

import orjson
import pytest

import consumer.lookup
from consumer.cli import main
from tests.consumer.pipeline_support import as_records, drain, make_events, produce, settings_for


def test_lookup_dash_reads_the_ids_from_stdin_in_chunks(
    kafka_bootstrap: str,
    redis_url: str,
    new_topic: Callable[..., str],
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic()
    events = make_events(400, users=30, seed=9)
    produce(kafka_bootstrap, topic, as_records(events))
    drain(settings_for(kafka_bootstrap, redis_url, topic, namespace), len(events))
    users = sorted({e["user_id"] for e in events if "\n" not in e["user_id"]})
    asked = [*users, "nobody"]
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setattr(consumer.lookup, "_STDIN_CHUNK", 7)  # several round trips
    round_trips: list[int] = []
    real_get_many_raw = consumer.lookup.SegmentLookup.get_many_raw

    def counted(self: consumer.lookup.SegmentLookup, ids: list[str]) -> list[bytes | None]:
        round_trips.append(len(ids))
        return real_get_many_raw(self, ids)

    monkeypatch.setattr(consumer.lookup.SegmentLookup, "get_many_raw", counted)
    # Windows line endings and a blank line, as a file from elsewhere has them.
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("\r\n".join(asked[:10]) + "\r\n\n" + "\n".join(asked[10:]) + "\n")
    )

    assert main(["--namespace", namespace, "lookup", "-"]) == 0
    printed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["user_id"] for p in printed] == asked
    assert all(p.get("status") != "unknown" for p in printed[:-1])
    assert round_trips == [7] * (len(asked) // 7) + ([len(asked) % 7] if len(asked) % 7 else [])
    assert printed[-1] == {"user_id": "nobody", "status": "unknown"}

    monkeypatch.setattr("sys.stdin", io.StringIO("nobody\nno-one\n"))
    assert main(["--namespace", namespace, "lookup", "-"]) == 1  # every user unknown
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["--namespace", namespace, "lookup", "-"]) == 2
    assert "streamseg: error: no user ids on stdin" in capsys.readouterr().err


def test_lookup_dash_answers_the_ids_before_a_line_that_is_no_id_then_names_it(
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An endless line (`streamseg lookup - < /dev/zero`) was read whole into memory."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setattr("sys.stdin", io.StringIO("a\nb\n" + "x" * 5000))
    assert main(["--namespace", namespace, "lookup", "-"]) == 2
    out, err = capsys.readouterr()
    assert [orjson.loads(line)["user_id"] for line in out.splitlines()] == ["a", "b"]
    assert "stdin, after 2 ids: line 3 is longer than 4,096 characters" in err


def test_an_id_that_is_not_utf8_is_unknown_and_named_not_a_traceback(
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Latin-1 file of ids piped in: Python reads the byte it cannot decode as a lone
    surrogate, which no Redis key can hold (UnicodeEncodeError from deep in the client)."""
    latin = "caf\udce9"  # b"caf\xe9" read as UTF-8 with surrogateescape
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"u1\n{latin}\nu2\n"))
    assert main(["--namespace", namespace, "lookup", "-"]) == 2  # nothing in the namespace
    said = capsys.readouterr()
    printed = [orjson.loads(line) for line in said.out.splitlines()]
    assert [p["status"] for p in printed] == ["unknown"] * 3
    assert [p["user_id"] for p in printed] == ["u1", "caf\ufffd", "u2"]
    assert "user id 'caf\\udce9' is not valid UTF-8" in said.err
    assert "Traceback" not in said.err
