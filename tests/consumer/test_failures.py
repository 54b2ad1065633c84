"""The one line a command prints for what stopped it, whichever process it ran in."""

from __future__ import annotations

import argparse
import errno

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException

from consumer.exceptions import StreamsegError
from consumer.failures import REPORTED_ERRORS, describe_failure, report_failure


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (StreamsegError("kafka.group_id: must not be empty"), "kafka.group_id: must not be empty"),
        (
            redis.exceptions.ConnectionError("Error 111"),
            "Redis (redis.url) did not answer: Error 111",
        ),
        (redis.exceptions.AuthenticationError("WRONGPASS"), "Redis (redis.url) refused: WRONGPASS"),
        (
            redis.exceptions.NoPermissionError("NOPERM zcard"),
            "Redis (redis.url) refused: NOPERM zcard",
        ),
        (
            KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down")),
            "Kafka (kafka.bootstrap_servers) failed: broker down",
        ),
        (
            KafkaException(
                KafkaError(KafkaError._INVALID_ARG, 'No such configuration property: "x"')
            ),
            "Kafka client settings (kafka.*, kafka.extra) refused: "
            'No such configuration property: "x"',
        ),
        (
            OSError(errno.EACCES, "Permission denied", "/root/model.json"),
            "/root/model.json: Permission denied",
        ),
    ],
)
def test_each_reported_error_becomes_one_line_naming_what_is_at_fault(
    exc: BaseException, expected: str
) -> None:
    assert isinstance(exc, REPORTED_ERRORS)
    assert describe_failure(exc) == expected


def test_an_unexpected_error_is_not_dressed_up_as_a_reported_one() -> None:
    with pytest.raises(TypeError, match="ValueError"):
        describe_failure(ValueError("a bug"))


def test_the_report_goes_to_stderr_with_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_failure(argparse.Namespace(log_format="text"), "Redis (redis.url) refused") == 2
    assert capsys.readouterr().err == "streamseg: error: Redis (redis.url) refused\n"
