"""The one line a command prints for what stopped it, whichever process it ran in."""

from __future__ import annotations

import argparse
import errno
import uuid
from urllib.parse import quote

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from pydantic import SecretStr

from consumer.exceptions import StreamsegError
from consumer.failures import REPORTED_ERRORS, describe_failure, report_failure
from consumer.settings import RedisSettings
from devstack.redis_server import RedisServer


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (StreamsegError("kafka.group_id: must not be empty"), "kafka.group_id: must not be empty"),
        (
            redis.exceptions.ConnectionError("Error 111"),
            "Redis (redis.url) did not answer: Error 111",
        ),
        (
            redis.exceptions.AuthenticationError("Authentication required."),
            "Redis requires a password: put it in redis.url (redis://:PASSWORD@host:port/0, or "
            "user:password for an ACL user; percent-encode reserved characters)",
        ),
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


PASSWORD = "Kq7v@Zx9w/Pm4t#" + uuid.uuid4().hex  # unique: a hit in a message cannot be chance


def failure_of(url: str) -> str:
    """The line a command prints when its first Redis command fails, with ``url``."""
    client = RedisSettings(url=SecretStr(url)).connect()
    try:
        with pytest.raises(redis.exceptions.AuthenticationError) as caught:
            client.ping()
    finally:
        client.close()
    said = describe_failure(caught.value)
    assert PASSWORD not in said and quote(PASSWORD, safe="") not in said
    return said


@pytest.mark.redis
def test_a_password_redis_wants_or_refuses_is_named_with_the_server() -> None:
    """No password against a server that needs one said `Redis (redis.url) refused: HELLO
    must be called with the client already authenticated, otherwise the HELLO AUTH ...`."""
    with RedisServer(password=PASSWORD) as server:
        address = f"127.0.0.1:{server.port}"
        assert failure_of(f"redis://{address}/0") == (
            f"Redis at {address} requires a password: put it in redis.url "
            "(redis://:PASSWORD@host:port/0, or user:password for an ACL user; percent-encode "
            "reserved characters)"
        )
        # RESP2 has no HELLO: the first command is refused with NOAUTH.
        assert failure_of(f"redis://{address}/0?protocol=2").startswith(
            "Redis requires a password: put it in redis.url"
        )
        wrong = failure_of(f"redis://:{quote(PASSWORD[::-1], safe='')}@{address}/0")
        assert wrong.startswith(
            "Redis (redis.url) refused: invalid username-password pair or user is disabled "
            f"(WRONGPASS, Redis at {address}): check the user name and password"
        )
        assert "percent-encode reserved characters" in wrong and "@ as %40" in wrong
        assert PASSWORD[::-1] not in wrong
