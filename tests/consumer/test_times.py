"""Times given as options: epoch milliseconds or ISO-8601, within what Kafka can mean."""

from __future__ import annotations

import pytest

from consumer.exceptions import ConfigError
from consumer.times import MAX_EPOCH_MS, parse_epoch_ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1704067200000", 1_704_067_200_000),
        ("2024-01-01", 1_704_067_200_000),
        ("2024-01-01T01:00:00+01:00", 1_704_067_200_000),
        ("0", 0),
        ("9999-12-31T23:59:59.999Z", MAX_EPOCH_MS),
    ],
)
def test_epoch_ms_and_iso_8601_name_the_same_instant(text: str, ms: int) -> None:
    assert parse_epoch_ms(text, option="--from") == ms


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("99999999999999999999", "outside 1970-01-01 .. 9999-12-31"),  # was an OverflowError
        ("-2", "outside"),  # Kafka would read it as "earliest"
        ("1969-12-31", "outside"),
        ("yesterday", "not epoch milliseconds, ISO-8601 or earliest"),
        ("latest", "not epoch milliseconds, ISO-8601 or earliest"),
    ],
)
def test_a_time_kafka_cannot_mean_is_named_with_its_option(text: str, said: str) -> None:
    with pytest.raises(ConfigError, match=f"--from '{text}': {said}"):
        parse_epoch_ms(text, option="--from", words=("earliest",))


@pytest.mark.parametrize(
    ("words", "said"),
    [
        ((), "not epoch milliseconds or ISO-8601$"),
        (("latest",), "not epoch milliseconds, ISO-8601 or latest$"),
        (("now", "latest"), "not epoch milliseconds, ISO-8601, now or latest$"),
    ],
)
def test_the_error_lists_only_the_words_the_option_takes(words: tuple[str, ...], said: str) -> None:
    """``replay --to earliest`` was refused with 'not epoch milliseconds or ISO-8601, earliest
    or latest', offering the very word it refused."""
    with pytest.raises(ConfigError, match=f"--to 'earliest': {said}"):
        parse_epoch_ms("earliest", option="--to", words=words)
