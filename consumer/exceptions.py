"""Errors of the service layer, under the project's one root exception."""

from model.exceptions import StreamsegError


class ConfigError(StreamsegError):
    """A setting is wrong; the message names it. Raised at start-up, never mid-stream."""


class ServerUnavailableError(StreamsegError):
    """Kafka or Redis cannot be reached within the allowed time."""


class LeaseLostError(StreamsegError):
    """A trainer tried to publish without holding the namespace's trainer lease."""


__all__ = ["ConfigError", "LeaseLostError", "ServerUnavailableError", "StreamsegError"]
