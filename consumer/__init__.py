"""streamseg service: Kafka in, Redis state, segments out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("streamseg")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+source"
