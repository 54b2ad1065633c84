"""Times the commands take as options (``replay --from/--to``, ``generate --start``)."""

from __future__ import annotations

from datetime import UTC, datetime

from consumer.exceptions import ConfigError

#: The last millisecond of year 9999, the largest time ISO-8601 dates can name.
MAX_EPOCH_MS = 253_402_300_799_999


def parse_epoch_ms(text: str, *, option: str, also: str = "") -> int:
    """Epoch milliseconds, or an ISO-8601 date or date-time (UTC unless zoned), in
    0..`MAX_EPOCH_MS`. ``also`` names further words the option takes, for the error.

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
            raise ConfigError(
                f"{option} {text!r}: not epoch milliseconds or ISO-8601{also}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = round(moment.timestamp() * 1000)
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise ConfigError(
            f"{option} {text!r}: outside 1970-01-01 .. 9999-12-31 (epoch ms 0..{MAX_EPOCH_MS})"
        )
    return ms
