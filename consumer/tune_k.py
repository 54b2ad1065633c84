"""``streamseg tune-k``: how many segments? Scores for a range of K on a snapshot of users.

For each K: inertia, mean silhouette on a sample and the Calinski-Harabasz index
(`model.quality.tune_k`), printed as a table with each rule's pick under it, and plotted
(inertia elbow and silhouette against K). ``--rule`` says which pick is recommended.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")  # files only, never a window: this runs on servers and in CI

import matplotlib.pyplot as plt
import orjson

from consumer.exceptions import ConfigError
from consumer.redis_keys import KeyLayout
from consumer.report import FIGURE_DPI, FIGURE_STYLE
from consumer.settings import Settings
from consumer.snapshot import Snapshot, read_snapshot
from model.exceptions import InsufficientDataError
from model.features import FEATURE_NAMES, LOG_FEATURES
from model.preprocessing import Preprocessor
from model.quality import KRule, TuneKResult, recommend_k, tune_k

#: What `recommend_k` calls each rule, and how the table's last line says it.
_RULES: dict[KRule, str] = {
    "silhouette": "highest silhouette",
    "calinski_harabasz": "highest Calinski-Harabasz",
    "elbow": "elbow of the inertia curve",
}


def tune_k_on_snapshot(
    snapshot: Snapshot,
    k_min: int,
    k_max: int,
    *,
    sample_size: int = 5000,
    seed: int = 0,
    rule: KRule = "silhouette",
) -> TuneKResult:
    """Score K = k_min..k_max on the snapshot's features, preprocessed by a fresh fit."""
    if k_min < 2 or k_max < k_min:
        raise ConfigError(f"need 2 <= --k-min <= --k-max, got {k_min}..{k_max}")
    Z = Preprocessor(FEATURE_NAMES, log_columns=LOG_FEATURES).fit_transform(snapshot.features)
    return tune_k(Z, range(k_min, k_max + 1), sample_size=sample_size, random_state=seed, rule=rule)


def _check_figure_format(path: Path) -> None:
    """Refuse a file name matplotlib cannot write (``k.txt``) before any work is done."""
    supported = plt.gcf().canvas.get_supported_filetypes()
    plt.close("all")
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in supported:
        raise ConfigError(
            f"--out {path}: cannot write a figure as {suffix or 'a file without an extension'!r}; "
            f"name it .png, .svg or .pdf (any of {', '.join(sorted(supported))})"
        )


def plot_tune_k(result: TuneKResult, path: Path) -> Path:
    """Inertia elbow (left axis) and mean silhouette (right axis) against K."""
    with plt.rc_context(FIGURE_STYLE):
        return _plot_tune_k(result, path)


def _plot_tune_k(result: TuneKResult, path: Path) -> Path:
    ks = [s.k for s in result.scores]
    fig, left = plt.subplots(figsize=(8.5, 5))
    left.plot(
        ks, [s.inertia for s in result.scores], "o-", color="tab:blue", label="inertia (left axis)"
    )
    left.set_xlabel("number of segments K")
    left.set_ylabel("inertia (scaled units squared)", color="tab:blue")
    left.tick_params(axis="y", labelcolor="tab:blue")
    right = left.twinx()
    right.plot(
        ks,
        [s.silhouette for s in result.scores],
        "s--",
        color="tab:orange",
        label="mean silhouette (right axis)",
    )
    right.set_ylabel("mean silhouette (-1..1, higher is better)", color="tab:orange")
    right.tick_params(axis="y", labelcolor="tab:orange")
    line = left.axvline(
        result.recommended_k,
        color="grey",
        linestyle=":",
        label=f"recommended K = {result.recommended_k} ({_RULES[result.rule]})",
    )
    left.set_xticks(ks)
    left.grid(alpha=0.3)
    handles = [*left.get_lines()[:1], *right.get_lines(), line]
    left.legend(handles=handles, labels=[str(h.get_label()) for h in handles], loc="upper center")
    left.set_title("Choosing K: inertia elbow and silhouette")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def format_tune_k(result: TuneKResult) -> str:
    """The scores as a plain-text table, with the recommendation."""
    lines = [f"{'K':>3}  {'inertia':>12}  {'silhouette':>10}  {'Calinski-Harabasz':>17}"]
    for s in result.scores:
        mark = "  <- recommended" if s.k == result.recommended_k else ""
        lines.append(
            f"{s.k:>3}  {s.inertia:>12.1f}  {s.silhouette:>10.3f}  "
            f"{s.calinski_harabasz:>17.1f}{mark}"
        )
    lines.append(f"recommended K = {result.recommended_k} ({_RULES[result.rule]})")
    picks = ", ".join(f"{words} K = {recommend_k(result.scores, r)}" for r, words in _RULES.items())
    lines.append(f"each rule's pick: {picks}")
    return "\n".join(lines)


def tune_k_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg tune-k``: score a range of K on a snapshot, print a table, save a plot."""
    out = Path(args.out)
    _check_figure_format(out)  # before the fits, not after them
    client = settings.redis.connect()
    keys = KeyLayout(settings.redis.namespace)
    snapshot = read_snapshot(client, keys, max_users=args.sample, config=settings.features)
    if not len(snapshot):
        raise ConfigError(
            f"namespace {keys.namespace!r} has no users yet: `streamseg run` writes them as "
            "events arrive (or pass --namespace)"
        )
    try:
        result = tune_k_on_snapshot(
            snapshot,
            args.k_min,
            args.k_max,
            seed=settings.trainer.seed,
            rule=cast(KRule, args.rule.replace("-", "_")),
        )
    except InsufficientDataError:
        sampled = (
            f"a sample of {len(snapshot):,} users (--sample) of its {snapshot.total_users:,}"
            if len(snapshot) < snapshot.total_users
            else f"{len(snapshot):,} users"
        )
        raise ConfigError(
            f"namespace {keys.namespace!r}: K up to {args.k_max} needs more than {args.k_max} "
            f"users, and tune-k has {sampled}"
        ) from None
    path = plot_tune_k(result, out)
    at_the_edge = result.recommended_k == args.k_max and args.k_max < len(snapshot) - 1
    if args.json:
        print(orjson.dumps(_as_json(result, snapshot, at_the_edge, path)).decode())
        return 0
    print(f"{len(snapshot):,} users sampled of {snapshot.total_users:,}")
    print(format_tune_k(result))
    if at_the_edge:
        print(
            f"the recommended K is the largest tried: a larger one may score better "
            f"(try --k-max {2 * args.k_max})"
        )
    print(f"plot (inertia and silhouette by K): {path.resolve()}")
    return 0


def _as_json(
    result: TuneKResult, snapshot: Snapshot, at_the_edge: bool, plot: Path
) -> dict[str, object]:
    """``tune-k --json``: what the table and the lines under it say."""
    return {
        "users_sampled": len(snapshot),
        "users": snapshot.total_users,
        "scores": [asdict(s) for s in result.scores],
        "recommended_k": result.recommended_k,
        "rule": result.rule.replace("_", "-"),
        "picks": {r.replace("_", "-"): recommend_k(result.scores, r) for r in _RULES},
        "recommended_is_largest_tried": at_the_edge,
        "plot": str(plot.resolve()),
    }
