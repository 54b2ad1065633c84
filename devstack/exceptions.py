"""Errors of the local dev stack, under one root so callers can catch them all at once."""


class DevStackError(Exception):
    """Root of every error that the dev stack raises on purpose."""


class MissingToolError(DevStackError):
    """A program the stack needs (java, mvn, redis-server) is not on PATH."""


class FetchError(DevStackError):
    """Downloading the Kafka broker jars with Maven failed."""


class ServerStartError(DevStackError):
    """A server did not become ready in time; the message carries the tail of its log."""
