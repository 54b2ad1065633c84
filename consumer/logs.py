"""Logging set-up: one line per notable event, never per record, never a secret."""

import logging


def configure_logging(level: str = "INFO") -> None:
    """Send log lines to stderr with time, level and logger name."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
