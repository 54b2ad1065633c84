"""Errors of the service layer, under the project's one root exception."""

from model.exceptions import StreamsegError


class ConfigError(StreamsegError):
    """A setting is wrong; the message names it. Raised at start-up, never mid-stream."""


class ServerUnavailableError(StreamsegError):
    """Kafka or Redis cannot be reached within the allowed time."""


__all__ = ["ConfigError", "ServerUnavailableError", "StreamsegError"]
