"""``streamseg compare``'s tables, as a user reads them (a comparison by hand), and what it
says of a namespace that does not exist (real Redis). Comparisons of replayed namespaces:
test_replay."""

from __future__ import annotations

import io
import re

import orjson
import pytest
import redis
from rich.console import Console

from consumer.cli import main
from consumer.compare import Comparison, SegmentPair, print_comparison
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from tests.consumer.test_faults import small_model


def test_moved_fields_read_in_the_order_of_the_columns() -> None:
    """The columns read shadow | live while the arrows read live -> shadow: a user took
    "revenue 100->150" for the shadow's 100. Columns and arrows now run the same way, and a
    legend says what the arrow means."""
    comparison = Comparison(
        shadow="retrain1",
        other="shop",
        common_users=30,
        compared_users=30,
        pairs=[
            SegmentPair(
                shadow_id=7,
                shadow_name="champions",
                shadow_size=10,
                other_id=2,
                other_name="loyal",
                other_size=12,
                moved={"mean_net_revenue": (100.0, 150.0)},  # (other, shadow)
            ),
            SegmentPair(8, "window shoppers", 20, 3, "window shoppers", 18, {}),
        ],
        change_share=0.1,
        adjusted_rand=0.8,
        inertia_own_scaling={"retrain1": 10.0, "shop": 12.0},
        inertia_shadow_scaling={"retrain1": 10.0, "shop": 12.5},
    )
    out = io.StringIO()
    print_comparison(comparison, Console(file=out, width=200))
    text = out.getvalue()
    header = next(line for line in text.splitlines() if "shop segment" in line)
    assert header.index("shop segment") < header.index("retrain1 segment")
    row = next(line for line in text.splitlines() if "champions" in line)
    assert row.index("2 loyal") < row.index("7 champions")
    assert "mean_net_revenue 100->150" in row  # the left (shop) column's value first
    # The shadow's two inertias are one figure: shown once; the other's in both scalings.
    assert [line.split("│")[1].strip() for line in text.splitlines() if "inertia of" in line] == [
        "inertia of retrain1 (own scaling)",
        "inertia of shop (own scaling)",
        "inertia of shop (retrain1's scaling)",
    ]
    legend = text.rstrip().splitlines()[-1]
    assert "moved >20%" in legend and "shop -> retrain1" in legend


@pytest.mark.redis
def test_compare_with_a_misspelt_namespace_names_those_that_exist(
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It said "has no published model", as for a namespace that holds users but no model."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    assert main(["--namespace", namespace, "compare", f"{namespace}-typo"]) == 2
    error = capsys.readouterr().err
    assert f"namespace '{namespace}-typo' holds no data (known namespaces:" in error


@pytest.mark.redis
def test_a_comparison_without_common_users_gives_no_figure_a_script_could_trust(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no user in both, the share of users that changed was 0.0: a script's
    `change_share < 0.05` promoted a shadow nothing had been compared with."""
    monkeypatch.delenv("COLUMNS", raising=False)  # a shell's or CI's own
    shadow, live = f"{namespace}-shadow", f"{namespace}-live"
    for ns in (shadow, live):
        ModelStore(redis_client, KeyLayout(ns)).publish(small_model())
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    assert main(["compare", shadow, "--with", live, "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert answer["compared_users"] == 0
    assert answer["change_share"] is None and answer["adjusted_rand"] is None
    assert main(["compare", shadow, "--with", live]) == 0
    table = capsys.readouterr().out
    assert re.search(r"segment differs \(after id matching\)\s*│\s*-\s*│", table), table
    # Piped, the tables take 200 columns, or what COLUMNS says.
    monkeypatch.setenv("COLUMNS", "70")
    assert main(["compare", shadow, "--with", live]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 70
