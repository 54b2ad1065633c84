"""The dead-letter details of the event contract say what a sender can fix (pure: no servers)."""

from __future__ import annotations

import orjson
import pytest

from model.events import DEFAULT_ALIASES, decode_events, resolve_type_map

TYPE_MAP = resolve_type_map(DEFAULT_ALIASES)
NOW_MS = 1_767_225_600_000.0  # 2026-01-01T00:00:00Z


def ts_detail(ts: object) -> str:
    """The detail of the one rejection of a view at ``ts``, which must be ``ts_out_of_range``."""
    event = {"event_id": "e1", "user_id": "u1", "type": "view", "ts": ts}
    _, (rejection,) = decode_events([orjson.dumps(event)], type_map=TYPE_MAP, now_ms=NOW_MS)
    assert rejection.reason == "ts_out_of_range"
    return rejection.detail


@pytest.mark.parametrize("ts", [1_700_000_000, 1_700_000_000.5, 946_684_800])
def test_epoch_seconds_are_dead_lettered_with_a_hint_to_convert_them(ts: float) -> None:
    """Every row of an export in epoch seconds was dead-lettered with ``ts=1700000000 ms``
    and nothing that said why."""
    assert ts_detail(ts) == (
        f"ts={ts:.0f} ms, looks like epoch seconds; ts is epoch milliseconds "
        "(produce --ts-unit s converts)"
    )


@pytest.mark.parametrize(
    ("ts", "detail"),
    [
        (1, "ts=1 ms"),  # as seconds still before 2000: no guess
        (4_102_444_800, "ts=4102444800 ms"),  # as seconds 2100: out of range either way
        (
            NOW_MS + 2 * 86_400_000,
            "ts=1767398400000 ms, more than 86400000 ms after the record's timestamp "
            "(or the consumer's clock)",
        ),
    ],
)
def test_other_times_out_of_range_get_no_seconds_hint(ts: float, detail: str) -> None:
    assert ts_detail(ts) == detail
