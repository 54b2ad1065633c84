"""Errors of the service layer, under the project's one root exception."""

from model.exceptions import StreamsegError


class ConfigError(StreamsegError):
    """A setting is wrong; the message names it. Raised at start-up, never mid-stream."""


class ServerUnavailableError(StreamsegError):
    """Kafka or Redis cannot be reached within the allowed time."""


class PartitionTakenError(StreamsegError):
    """Another consumer started writing a partition of the batch in flight: this one stalled
    past a rebalance. Nothing of the batch is written; the process stops."""


class LeaseLostError(StreamsegError):
    """A trainer tried to publish without holding the namespace's trainer lease."""


class ModelReplacedError(StreamsegError):
    """The current model changed (a rollback, an import or a rename) while a trainer was fitting."""


__all__ = [
    "ConfigError",
    "LeaseLostError",
    "ModelReplacedError",
    "PartitionTakenError",
    "ServerUnavailableError",
    "StreamsegError",
]
