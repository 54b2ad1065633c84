"""How a command reports what stopped it: one line on stderr and exit status 2, never a
traceback. Shared by ``streamseg`` itself and by each process of ``run --processes N``, so
that a child says what the command alone would have said."""

from __future__ import annotations

import argparse
import logging
import sys

import redis
from confluent_kafka import KafkaError, KafkaException

from consumer.exceptions import StreamsegError
from consumer.settings import PERCENT_ENCODINGS, REDIS_ERRORS, RedisCredentialsError

# Exceptions that `describe_failure` turns into one line; anything else is a bug and keeps
# its traceback.
REPORTED_ERRORS: tuple[type[BaseException], ...] = (
    StreamsegError,
    *REDIS_ERRORS,
    KafkaException,
    OSError,
)


def describe_failure(exc: BaseException) -> str:
    """The one-line message for one of `REPORTED_ERRORS`, naming the setting at fault."""
    if isinstance(exc, StreamsegError):
        return str(exc)
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return _credentials_refused(exc)
    if isinstance(exc, redis.exceptions.NoPermissionError):
        # An ACL user without a command or key it needs: not an outage.
        return f"Redis (redis.url) refused: {exc}"
    if isinstance(exc, redis.exceptions.ResponseError):
        # Redis answered with an error: the URL's database index beyond its databases, a
        # command an ACL or a proxy refuses. Not an outage.
        return f"Redis (redis.url) refused: {exc}"
    if isinstance(exc, REDIS_ERRORS):
        # A command that needs Redis and cannot get it (once started, run and train wait
        # instead); redis-py's messages name host and port, never the URL's password.
        return f"Redis (redis.url) did not answer: {exc}"
    if isinstance(exc, KafkaException):
        # One the command did not expect (replay's planning against a broker that does not
        # answer, or refuses its credentials): one line naming the setting, as for Redis.
        error = exc.args[0] if exc.args else exc
        text = error.str() if isinstance(error, KafkaError) else str(error)
        if isinstance(error, KafkaError) and error.code() == KafkaError._INVALID_ARG:
            # librdkafka refused the client configuration itself, before any connection.
            return f"Kafka client settings (kafka.*, kafka.extra) refused: {text}"
        return f"Kafka (kafka.bootstrap_servers) failed: {text}"
    if isinstance(exc, OSError):
        # A file that cannot be read or written (`model export /proc/x`): the path and the
        # system's reason.
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror or exc}"
    raise TypeError(f"not a reported error: {type(exc).__name__}")


#: What Redis answers a client that sent no password where one is needed: NOAUTH to a
#: command (RESP2), or to the HELLO that opens a RESP3 connection.
_NO_PASSWORD_SENT = ("NOAUTH", "Authentication required", "HELLO must be called with the client")


def _credentials_refused(exc: redis.exceptions.AuthenticationError) -> str:
    """A password Redis wanted and did not get, or refused (WRONGPASS); the server's
    address when `RedisSettings.connect` made the connection (a `RedisCredentialsError`).
    Redis' own reply never holds the password, nor does this message."""
    address = exc.address if isinstance(exc, RedisCredentialsError) else None
    text = str(exc)
    code: str | None = getattr(exc, "status_code", None)  # the reply's prefix: NOAUTH, WRONGPASS
    if code == "NOAUTH" or text.startswith(_NO_PASSWORD_SENT):
        where = f"Redis at {address}" if address else "Redis"
        return (
            f"{where} requires a password: put it in redis.url (redis://:PASSWORD@host:port/0, "
            "or user:password for an ACL user; percent-encode reserved characters)"
        )
    said = ", ".join(filter(None, [code, f"Redis at {address}" if address else ""]))
    return (
        f"Redis (redis.url) refused: {text.rstrip('.')}{f' ({said})' if said else ''}: check "
        f"the user name and password; percent-encode reserved characters in them "
        f"({PERCENT_ENCODINGS}), which redis-py decodes"
    )


def report_failure(args: argparse.Namespace, message: str) -> int:
    """Report what stopped the command on stderr; exit status 2. With ``--log-format json``
    it is one more JSON log line (level ERROR, logger ``streamseg``), not plain text in a
    stream that log shippers read as JSON."""
    if getattr(args, "log_format", "text") == "json":
        logging.getLogger("streamseg").error("error: %s", message)
    else:
        print(f"streamseg: error: {message}", file=sys.stderr)
    return 2
