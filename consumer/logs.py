"""Logging set-up: one line per notable event, never per record, never a secret.

``text`` is for people (time, level, logger, message); ``json`` is one object per line for log
pipelines: ``{"ts": "2026-11-27T10:15:02.113Z", "level": "INFO", "logger": "consumer.pipeline",
"message": "assigned [0, 1]", "pid": 7}`` plus ``"exception"`` when there is a traceback.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import orjson

from consumer.segment_record import iso_ms


class JsonFormatter(logging.Formatter):
    """One JSON object per log record (UTC time in ISO-8601 with milliseconds)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": iso_ms(record.created * 1000.0),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] | str = "text") -> None:
    """Send log lines to stderr, as text (time, level, logger name, message) or JSON lines."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
