"""Logging set-up: one line per notable event, never per record, never a secret.

``text`` is for people (time, level, logger, message); ``json`` is one object per line for log
pipelines: ``{"ts": "2026-11-27T10:15:02.113Z", "level": "INFO", "logger": "consumer.pipeline",
"message": "assigned [0, 1]", "pid": 7}`` plus ``"exception"`` when there is a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Literal

import orjson

from consumer.segment_record import iso_ms


class RepeatFilter(logging.Filter):
    """Drops a line that repeats one passed in the last ``seconds`` (numbers aside).

    librdkafka logs every failed reconnect to a broker that is down (dozens a second, each
    with its own "after N ms" and counters); the first says it all.
    """

    _NUMBERS = re.compile(r"\d+")

    def __init__(self, seconds: float = 30.0, remembered: int = 256) -> None:
        super().__init__()
        self.seconds = seconds
        self.remembered = remembered
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = self._NUMBERS.sub("#", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        if len(self._last) >= self.remembered:
            self._last.clear()  # a bounded memory; at worst a repeat gets through
        self._last[key] = now
        return True


class RetriedNotice(logging.Filter):
    """Logs at INFO what librdkafka warns about but retries by itself: a fresh broker's
    coordinator still loading made every first ``streamseg produce`` print a warning."""

    _RETRIED = ("Coordinator load in progress",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO and any(t in record.getMessage() for t in self._RETRIED):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


#: Where every Kafka client sends librdkafka's own log lines (``logger=`` of each client):
#: through logging, so they follow the chosen format, with repeats dropped.
librdkafka_log = logging.getLogger("consumer.librdkafka")
librdkafka_log.addFilter(RepeatFilter())
librdkafka_log.addFilter(RetriedNotice())


class JsonFormatter(logging.Formatter):
    """One JSON object per log record (UTC time in ISO-8601 with milliseconds)."""

    with_process_name = False  # set in a child of run --processes N

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": iso_ms(record.created * 1000.0),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        if self.with_process_name:
            entry["process"] = record.processName
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] | str = "text") -> None:
    """Send log lines to stderr, as text (time, level, logger name, message) or JSON lines."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def name_this_process_in_logs() -> None:
    """In a child of ``run --processes N``: text lines name the process after the level
    (``INFO [streamseg-run-1] consumer.pipeline: ...``), JSON lines carry ``"process"``;
    the pid alone said nothing about which of the N a line came from."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, JsonFormatter):
            formatter.with_process_name = True
        else:
            handler.setFormatter(
                logging.Formatter(_TEXT_FORMAT.replace("%(name)s", "[%(processName)s] %(name)s"))
            )
