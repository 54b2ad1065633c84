"""Times the commands take as options (``replay --from/--to``, ``generate --start``), and
how they print times for reading."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from consumer.exceptions import ConfigError

#: The last millisecond of year 9999, the largest time ISO-8601 dates can name.
MAX_EPOCH_MS = 253_402_300_799_999


def parse_epoch_ms(text: str, *, option: str, words: Sequence[str] = ()) -> int:
    """Epoch milliseconds, or an ISO-8601 date or date-time (UTC unless zoned), in
    0..`MAX_EPOCH_MS`. ``words`` are the further words this option takes (``("latest",)``
    for ``--to``), which the caller handles: the error lists them and no others.

    A negative time is refused rather than passed on: Kafka reads -1 and -2 as "latest" and
    "earliest".

    Raises
    ------
    ConfigError
        Naming ``option`` and the text.
    """
    if text.lstrip("-").isdigit():
        ms = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            accepted = ["epoch milliseconds", "ISO-8601", *words]
            raise ConfigError(
                f"{option} {text!r}: not {', '.join(accepted[:-1])} or {accepted[-1]}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = round(moment.timestamp() * 1000)
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise ConfigError(
            f"{option} {text!r}: outside 1970-01-01 .. 9999-12-31 (epoch ms 0..{MAX_EPOCH_MS})"
        )
    return ms


def readable_time(moment: datetime) -> str:
    """A time for reading, as `model list` and `status` print it: ISO-8601 UTC to the second,
    ``2026-12-07T16:41:02Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
