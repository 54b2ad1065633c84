"""The one root exception of streamseg, and the errors of pure computation."""


class StreamsegError(Exception):
    """Root of every exception that streamseg raises on purpose."""


class ModelFormatError(StreamsegError):
    """A serialised model is malformed: wrong shapes, NaNs, unknown version, missing fields."""


class NotFittedError(StreamsegError):
    """An estimator was asked to predict or update before it was fitted."""


class InvalidInputError(StreamsegError, ValueError):
    """An input array has the wrong shape or holds NaN / infinite values."""


class InsufficientDataError(StreamsegError, ValueError):
    """Too few rows to fit a model that means something (e.g. bootstrap of K centres)."""
