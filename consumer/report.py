"""``streamseg report``: what the segments look like, as HTML and PNGs.

The report reads the namespace's current state from Redis (a `consumer.snapshot.Snapshot`,
the published models and the counters) and writes ``index.html`` with one PNG per figure:

- ``sizes.png``     segment shares per model version (at training time) and now
- ``centres.png``   heatmap of the current model's centres (scaled units, business annotations)
- ``pca.png``       2-D PCA projection of sampled users coloured by segment, centres marked
- ``tiers.png``     mean net revenue per segment coloured by value tier
- ``counters.png``  data-quality counters of the consumers
- ``features.png``  distribution of every feature over the sampled users

Without a published model only the counters and feature distributions are drawn.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window: this runs on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.colors import Colormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.typing import RcKeyType
from sklearn.decomposition import PCA

from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient, Settings
from consumer.snapshot import Snapshot, read_snapshot
from consumer.state_store import StateStore
from consumer.unknown_namespace import refuse_if_nothing_written
from model.features import FEATURE_NAMES, FEATURES, LOG_FEATURES, top_categories
from model.model_format import SegmentModel

FloatArray = npt.NDArray[np.float64]

_UNITS = {f.name: f.unit for f in FEATURES}
#: Resolution and text style of every figure (the report's and `consumer.tune_k`'s plot).
FIGURE_DPI = 110
FIGURE_STYLE: dict[RcKeyType, Any] = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    # Segment names are text, not TeX: a model named "big $\frac$ ers" (an import) made
    # matplotlib's mathtext parser raise and the report fail.
    "text.parse_math": False,
}
#: Counters shown first, in this order; any other counter (dead_letter.<reason>) follows.
_MAIN_COUNTERS = ("records", "applied", "duplicates", "ignored", "dead_lettered")
#: Counters of records (with every ``dead_letter.<reason>``): their share of ``records`` means
#: something.
_RECORD_COUNTERS = frozenset({*_MAIN_COUNTERS, "duplicate_event_ids"})
_TIER_CMAP = "viridis"
#: Versions drawn in sizes.png at most; the history keeps up to 1000 (hours at a 10 s update
#: interval), and a bar per version would make a figure too wide for matplotlib to save.
SIZE_CHART_VERSIONS = 24


@dataclass(frozen=True)
class Figures:
    """A report's figures: (file name, caption) in display order."""

    items: list[tuple[str, str]]


def segment_colour(segment_id: int) -> tuple[float, float, float, float]:
    """One colour per stable segment id, the same in every figure and report: ids 0-9 take
    tab20's strong shades (tab10's colours), 10-19 its light ones, so any 20 consecutive ids
    differ (tab10 for 0-9 and tab20 by id beyond gave id 5 and id 10 the same brown)."""
    cmap: Colormap = plt.get_cmap("tab20")
    k = segment_id % 20
    return cmap(2 * k if k < 10 else 2 * (k - 10) + 1)


def _segment_label(model: SegmentModel, pos: int) -> str:
    return f"{model.ids[pos]}: {model.names[pos]} (tier {model.tiers[pos]})"


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    return name


def _fmt(value: float) -> str:
    """A business-unit value, short: 1234.5 -> "1.2k", 0.123 -> "0.12", -0.001 -> "0.00"."""
    magnitude = abs(value)
    if magnitude < 0.005:
        return "0.00"  # not "-0.00": a centre a hair below zero is zero in business units
    if magnitude >= 1e6:
        return f"{value / 1e6:.1f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.0f}k"
    if magnitude >= 1e3:
        return f"{value / 1e3:.1f}k"
    if magnitude >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}" if magnitude < 1 else f"{value:.1f}"


# -- figures ---------------------------------------------------------------------------------


def plot_centres(model: SegmentModel, out_dir: Path) -> str:
    """Heatmap of centres: colour in scaled units (spreads from the median), text in business
    units."""
    centres = np.asarray(model.centers, dtype=np.float64)
    business = model.to_preprocessor().inverse_transform(centres)
    k, d = centres.shape
    fig, ax = plt.subplots(figsize=(max(8.0, 1.15 * d + 3), max(3.0, 0.6 * k + 2)))
    limit = max(1.0, float(np.nanmax(np.abs(centres))))
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    image = ax.imshow(centres, cmap="RdBu_r", norm=norm, aspect="auto")
    for i in range(k):
        for j in range(d):
            dark = abs(centres[i, j]) > 0.6 * limit
            ax.text(
                j,
                i,
                _fmt(business[i, j]),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(d))
    ax.set_xticklabels(
        [f"{n}\n({_UNITS.get(n, '')})" for n in model.feature_names],
        rotation=35,
        ha="right",
        fontsize=9,
    )
    ax.set_yticks(range(k))
    ax.set_yticklabels([_segment_label(model, p) for p in range(k)])
    ax.set_xlabel("feature (unit of the annotated business value)")
    ax.set_ylabel("segment")
    ax.set_title(
        f"Segment centres of model v{model.model_version}: colour = scaled value, "
        "text = business value"
    )
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("scaled units (max(IQR, 1.349 std) from the median; log1p on counts and money)")
    return _save(fig, out_dir, "centres.png")


def chart_versions(versions: Sequence[int], most: int = SIZE_CHART_VERSIONS) -> list[int]:
    """The versions sizes.png draws: all of them up to ``most``, else ``most`` evenly spaced
    from the oldest to the newest kept (both included), so long histories still show the
    drift from the start."""
    ordered = sorted(versions)
    if len(ordered) <= most:
        return ordered
    picks = np.unique(np.linspace(0, len(ordered) - 1, most).round().astype(int))
    return [ordered[i] for i in picks]


def _versions_text(versions: Sequence[int]) -> str:
    """``v1, v2, v3`` for a few versions, ``1000 kept, v41 to v1040`` for many."""
    if len(versions) <= 8:
        return ", ".join(f"v{v}" for v in versions) or "-"
    return f"{len(versions):,} kept, v{min(versions)} to v{max(versions)}"


def plot_sizes(
    history: Sequence[SegmentModel], current_sizes: dict[int, int], out_dir: Path
) -> str:
    """Stacked bars of segment shares: one bar per model version (its training snapshot), one
    for now (stored records), each labelled with its number of users.

    Shares, not counts: a training snapshot holds at most the trainer's window (20,000 rows by
    default) while the stored records cover every user, so counts would flatten the versions."""
    names: dict[int, str] = {}
    for m in history:  # oldest first: the newest name of an id wins
        for pos, seg in enumerate(m.ids):
            names[seg] = m.names[pos]
    bars = [
        (
            f"v{m.model_version}",
            {seg: m.profiles[pos].size for pos, seg in enumerate(m.ids)},
        )
        for m in history
    ]
    if current_sizes:
        bars.append(("now", {s: n for s, n in current_sizes.items() if n > 0}))
    segment_ids = sorted({s for _, sizes in bars for s in sizes})
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(bars) + 4), 5.5))
    x = np.arange(len(bars))
    totals = np.array([float(sum(sizes.values())) for _, sizes in bars])
    bottom = np.zeros(len(bars))
    for seg in segment_ids:
        counts = np.array([float(sizes.get(seg, 0)) for _, sizes in bars])
        heights = 100.0 * counts / np.maximum(totals, 1.0)
        ax.bar(
            x,
            heights,
            bottom=bottom,
            width=0.6,
            color=segment_colour(seg),
            label=f"{seg}: {names.get(seg, '?')}",
            edgecolor="white",
            linewidth=0.5,
        )
        bottom += heights
    for xi, top, total in zip(x, bottom, totals, strict=True):
        ax.text(float(xi), top, f"{int(total):,}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([label for label, _ in bars], rotation=45 if len(bars) > 12 else 0)
    ax.set_xlabel("model version (rows of its training snapshot) / now (stored records)")
    ax.set_ylabel("share of users (%)")
    ax.set_ylim(0, 108)
    ax.set_title("Segment shares across model versions (above each bar: its number of users)")
    ax.legend(title="segment id: name", bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, out_dir, "sizes.png")


def plot_pca(model: SegmentModel, features: FloatArray, out_dir: Path, seed: int = 0) -> str:
    """Users in the first two principal components of the model's scaled space, by segment."""
    Z = model.transform(features)
    _, positions, _ = model.assign(features)
    centres = np.asarray(model.centers, dtype=np.float64)
    pca = PCA(n_components=2, random_state=seed).fit(Z)
    P = pca.transform(Z)
    C = pca.transform(centres)
    var = pca.explained_variance_ratio_ * 100
    fig, ax = plt.subplots(figsize=(9.5, 7))
    for pos in range(len(model.ids)):
        mask = positions == pos
        ax.scatter(
            P[mask, 0],
            P[mask, 1],
            s=10,
            alpha=0.45,
            color=segment_colour(model.ids[pos]),
            label=f"{_segment_label(model, pos)}  n={int(mask.sum()):,}",
            edgecolors="none",
        )
    for pos in range(len(model.ids)):
        ax.scatter(
            C[pos, 0],
            C[pos, 1],
            marker="X",
            s=220,
            color=segment_colour(model.ids[pos]),
            edgecolors="black",
            linewidths=1.2,
            zorder=5,
        )
    labels_at = _label_positions(C, [f"{model.ids[p]}: {model.names[p]}" for p in range(len(C))])
    for pos, (text, where) in enumerate(labels_at):
        ax.annotate(
            text,
            (C[pos, 0], C[pos, 1]),
            xytext=where,
            textcoords="data",
            fontsize=10,
            fontweight="bold",
            ha="left",
            va="center",
            zorder=6,
            bbox={
                "boxstyle": "round,pad=0.2",
                "fc": "white",
                "ec": segment_colour(model.ids[pos]),
                "alpha": 0.9,
            },
            arrowprops={"arrowstyle": "-", "color": "black", "lw": 0.8},
        )
    ax.set_xlabel(f"PC1 ({var[0]:.1f}% variance, scaled units)")
    ax.set_ylabel(f"PC2 ({var[1]:.1f}% variance, scaled units)")
    ax.set_title(
        f"{len(features):,} users in 2-D PCA of model v{model.model_version}'s scaled space"
    )
    handles, labels = ax.get_legend_handles_labels()
    handles.append(
        Line2D(
            [], [], marker="X", color="grey", markeredgecolor="black", linestyle="", markersize=11
        )
    )
    labels.append("segment centre")
    legend = ax.legend(
        handles,
        labels,
        title="segment (colour)",
        bbox_to_anchor=(1.01, 1),
        loc="upper left",
        markerscale=1.5,
    )
    for handle in legend.legend_handles[:-1]:
        if handle is not None:
            handle.set_alpha(1.0)
    ax.grid(alpha=0.3)
    return _save(fig, out_dir, "pca.png")


def _label_positions(
    points: FloatArray, texts: Sequence[str]
) -> list[tuple[str, tuple[float, float]]]:
    """Where to put each point's label (data coordinates) so that no two labels overlap.

    Greedy: try offsets around the point, in axis-normalised units with a label box sized by
    its text length, and keep the first that overlaps no label placed before.
    """
    lo = points.min(axis=0)
    span = np.maximum(points.max(axis=0) - lo, 1e-9)
    unit = (points - lo) / span
    placed: list[tuple[float, float, float, float]] = []
    out = []
    candidates = [(0.04, dy) for dy in (0.06, -0.06, 0.14, -0.14, 0.22, -0.22, 0.30, -0.30)]
    for (x, y), text in zip(unit, texts, strict=True):
        width, height = 0.018 * len(text), 0.07
        box = (0.0, 0.0, 0.0, 0.0)
        for dx, dy in candidates:
            left, mid = x + dx, y + dy
            if left + width > 1.0:  # would run off the right edge: put it on the left
                left = x - dx - width
            box = (left, mid - height / 2, left + width, mid + height / 2)
            if not any(_overlap(box, other) for other in placed):
                break
        placed.append(box)
        out.append(
            (
                text,
                (float(lo[0] + box[0] * span[0]), float(lo[1] + (box[1] + box[3]) / 2 * span[1])),
            )
        )
    return out


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plot_tiers(model: SegmentModel, mean_revenue: FloatArray, out_dir: Path) -> str:
    """Mean net revenue per segment (snapshot users), bars coloured by value tier."""
    order = np.argsort(-mean_revenue, kind="stable")
    tiers = np.asarray(model.tiers)
    cmap = plt.get_cmap(_TIER_CMAP)
    n_tiers = int(tiers.max())
    tier_colour = {t: cmap((t - 1) / max(1, n_tiers - 1) * 0.85) for t in range(1, n_tiers + 1)}
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(order) + 3), 5.5))
    x = np.arange(len(order))
    values = mean_revenue[order]
    ax.bar(
        x,
        values,
        color=[tier_colour[int(tiers[p])] for p in order],
        edgecolor="black",
        linewidth=0.5,
    )
    for xi, v in zip(x, values, strict=True):
        ax.text(
            float(xi),
            v,
            _fmt(float(v)),
            ha="center",
            va="bottom" if v >= 0 else "top",
            fontsize=9,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{model.ids[p]}: {model.names[p]}" for p in order], rotation=25, ha="right"
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("segment (id: name)")
    ax.set_ylabel("mean net revenue (currency units, decayed)")
    ax.set_title(f"Value tiers of model v{model.model_version}: mean net revenue per segment")
    ax.legend(
        handles=[Patch(color=tier_colour[t], label=f"tier {t}") for t in sorted(tier_colour)],
        title="value tier (1 = most valuable)",
        loc="upper right",
    )
    ax.set_ylim(min(0.0, float(values.min()) * 1.15), max(1.0, float(values.max()) * 1.15))
    return _save(fig, out_dir, "tiers.png")


def plot_counters(counters: dict[str, int], out_dir: Path) -> str:
    """Horizontal bars of the consumers' running counters (records, and other activity)."""
    names = ordered_counters(counters)
    values = np.array([counters[n] for n in names], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.45 * len(names) + 1.5)))
    colours = [_counter_colour(n) for n in names]
    y = np.arange(len(names))
    ax.barh(y, np.maximum(values, 0.8), color=colours)
    for yi, v in zip(y, values, strict=True):
        ax.text(max(v, 0.8), float(yi), f" {int(v):,}", va="center", fontsize=9)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    if values.max() > 0:
        ax.set_xscale("log")
        ax.set_xlim(0.7, values.max() * 4)
    ax.set_xlabel("count (log scale)")
    ax.set_ylabel("counter")
    ax.set_title("Data quality: consumer counters since the namespace was created")
    ax.legend(
        handles=[
            Patch(color="tab:blue", label="consumed / applied"),
            Patch(color="tab:orange", label="skipped (duplicate, ignored)"),
            Patch(color="tab:red", label="dead-lettered (total and by reason)"),
            Patch(color="tab:grey", label="other pipeline activity"),
        ],
        title="kind of counter",
        bbox_to_anchor=(1.01, 1),
        loc="upper left",
    )
    return _save(fig, out_dir, "counters.png")


def _counter_colour(name: str) -> str:
    if name.startswith("dead_letter"):
        return "tab:red"
    if name in ("duplicates", "ignored"):
        return "tab:orange"
    if name in ("records", "applied"):
        return "tab:blue"
    return "tab:grey"


def plot_feature_distributions(features: FloatArray, out_dir: Path) -> str:
    """One histogram per feature over the sampled users (log1p axis for heavy-tailed ones)."""
    d = features.shape[1]
    cols = 5
    rows = -(-d // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows + 0.6), squeeze=False)
    for j, name in enumerate(FEATURE_NAMES):
        ax = axes[j // cols][j % cols]
        values = features[:, j]
        logged = name in LOG_FEATURES
        shown = np.copysign(np.log1p(np.abs(values)), values) if logged else values
        ax.hist(shown, bins=30, color="tab:blue", alpha=0.85)
        ax.set_title(name, fontsize=11)
        unit = _UNITS.get(name, "")
        ax.set_xlabel(f"log1p({unit})" if logged else unit, fontsize=9)
        ax.set_ylabel("users", fontsize=9)
        ax.tick_params(labelsize=8)
    for j in range(d, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle(f"Feature distributions over {len(features):,} sampled users", fontsize=13)
    fig.tight_layout()
    return _save(fig, out_dir, "features.png")


# -- tables ----------------------------------------------------------------------------------


def ordered_counters(counters: dict[str, int]) -> list[str]:
    """Counter names: the main ones in a fixed order, then the others alphabetically."""
    main = [n for n in _MAIN_COUNTERS if n in counters]
    return main + sorted(n for n in counters if n not in main)


@dataclass(frozen=True)
class SegmentRow:
    """One row of the segment profile table (business units, over the snapshot's users)."""

    segment_id: int
    name: str
    tier: int
    users_now: int
    sampled: int
    means: dict[str, float]
    top_spend: str
    top_views: str


def profile_rows(
    model: SegmentModel,
    snapshot: Snapshot,
    positions: npt.NDArray[np.intp],
    current_sizes: dict[int, int],
    category_names: dict[float, str],
) -> list[SegmentRow]:
    """Profile of each segment: means of the sampled users the current model assigns to it.

    A segment with no sampled user shows its training profile instead.
    """
    spend, views = top_categories(snapshot.states)
    col = {n: j for j, n in enumerate(FEATURE_NAMES)}
    rows = []
    for pos, seg in enumerate(model.ids):
        mask = positions == pos
        if mask.any():
            means = {n: float(snapshot.features[mask, j].mean()) for n, j in col.items()}
        else:
            p = model.profiles[pos]
            means = {
                "net_revenue": p.mean_net_revenue,
                "purchases": p.mean_purchases,
                "avg_order_value": p.mean_avg_order_value,
                "recency_days": p.mean_recency_days,
                "tenure_days": p.mean_tenure_days,
                "views": p.mean_views,
                "engagement": p.mean_engagement,
                "view_to_purchase": p.view_to_purchase,
                "cart_to_purchase": p.cart_to_purchase,
            }
        rows.append(
            SegmentRow(
                segment_id=seg,
                name=model.names[pos],
                tier=model.tiers[pos],
                users_now=current_sizes.get(seg, 0),
                sampled=int(mask.sum()),
                means=means,
                top_spend=_top_names(spend[mask], category_names),
                top_views=_top_names(views[mask], category_names),
            )
        )
    return rows


def _top_names(codes: FloatArray, names: dict[float, str], n: int = 3) -> str:
    codes = codes[~np.isnan(codes)]
    if not codes.size:
        return "-"
    values, counts = np.unique(codes, return_counts=True)
    top = np.argsort(-counts, kind="stable")[:n]
    share = counts / codes.size
    return ", ".join(
        f"{names.get(float(values[i]), f'#{int(values[i])}')} {share[i]:.0%}" for i in top
    )


def _profile_table(rows: Sequence[SegmentRow]) -> str:
    head = (
        "<tr><th>id</th><th>name</th><th>tier</th><th>users now</th><th>in sample</th>"
        "<th>mean net revenue<br>(currency)</th><th>purchases<br>(orders)</th>"
        "<th>avg order value<br>(currency)</th><th>recency<br>(days)</th>"
        "<th>tenure<br>(days)</th><th>views<br>(events)</th><th>view&rarr;purchase</th>"
        "<th>cart&rarr;purchase</th><th>top categories by spend<br>(share of users)</th>"
        "<th>top categories by views</th></tr>"
    )
    body = []
    for r in sorted(rows, key=lambda r: (r.tier, r.segment_id)):
        m = r.means
        body.append(
            f"<tr><td>{r.segment_id}</td><td>{html.escape(r.name)}</td><td>{r.tier}</td>"
            f"<td>{r.users_now:,}</td><td>{r.sampled:,}</td>"
            f"<td>{m['net_revenue']:,.2f}</td><td>{m['purchases']:.2f}</td>"
            f"<td>{m['avg_order_value']:,.2f}</td><td>{m['recency_days']:.1f}</td>"
            f"<td>{m['tenure_days']:.1f}</td><td>{m['views']:.1f}</td>"
            f"<td>{m['view_to_purchase']:.1%}</td><td>{m['cart_to_purchase']:.1%}</td>"
            f"<td>{html.escape(r.top_spend)}</td><td>{html.escape(r.top_views)}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _counter_table(counters: dict[str, int]) -> str:
    if not counters:
        return "<p>No counters yet: no consumer has processed a batch in this namespace.</p>"
    records = counters.get("records", 0)
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{counters[n]:,}</td>"
        f"<td>{_share_of_records(n, counters[n], records)}</td></tr>"
        for n in ordered_counters(counters)
    )
    return (
        "<table><tr><th>counter</th><th>count</th><th>share of records consumed</th></tr>"
        f"{rows}</table>"
    )


def _share_of_records(name: str, count: int, records: int) -> str:
    """A counter of records as a share of those consumed; "-" for counters of something else
    (users, change events, training rows)."""
    counts_records = name in _RECORD_COUNTERS or name.startswith("dead_letter.")
    return f"{count / records:.2%}" if records and counts_records else "-"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td:nth-child(2) { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }
.note { color: #555; }
"""


# -- the report ------------------------------------------------------------------------------


def write_report(
    client: RedisClient, keys: KeyLayout, out_dir: Path, *, sample: int, settings: Settings
) -> Path:
    """Write ``out_dir/index.html`` and its PNGs from the namespace's state; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(FIGURE_STYLE):
        return _write_report(client, keys, out_dir, sample=sample, settings=settings)


def _write_report(
    client: RedisClient, keys: KeyLayout, out_dir: Path, *, sample: int, settings: Settings
) -> Path:
    snapshot = read_snapshot(client, keys, max_users=sample, config=settings.features)
    state = StateStore(client, keys)
    counters = state.read_counters()
    if counters:  # zero counters are never written: show the main ones anyway
        counters = {**dict.fromkeys(_MAIN_COUNTERS, 0), **counters}
    current_sizes = state.read_segment_sizes()
    category_names = state.read_category_names()
    store = ModelStore(client, keys)
    model = store.load_current()

    sections: list[str] = []
    esc = html.escape
    watermark = (
        "none"
        if snapshot.watermark_ms is None
        else np.datetime64(int(snapshot.watermark_ms), "ms").astype(str) + " UTC"
    )
    sections.append(
        f"<p class='note'>Namespace <b>{esc(keys.namespace)}</b>; {snapshot.total_users:,} users "
        f"with state, {len(snapshot):,} sampled (first in sorted id order); features derived at "
        f"the watermark {esc(watermark)}. Money is in currency units, decayed with the revenue "
        "half-life; counts are decayed counts.</p>"
    )

    if model is None:
        sections.append(
            "<h2>No model published yet</h2><p>The consumers run in cold start: every record "
            "has <code>status: cold_start</code>. Run <code>streamseg train</code> once enough "
            "users have events. Shown below: the data-quality counters and feature "
            "distributions.</p>"
        )
    elif len(snapshot) == 0:
        sections.append(
            f"<h2>Model v{model.model_version}</h2><p>No user state in this namespace: "
            "nothing to profile.</p>"
        )
    else:
        _, positions, _ = model.assign(snapshot.features)
        rows = profile_rows(model, snapshot, positions, current_sizes, category_names)
        mean_revenue = np.array([r.means["net_revenue"] for r in rows])
        versions = sorted(store.versions())
        history = store.load_kept(chart_versions(versions))
        sections.append(
            f"<h2>Segments of model v{model.model_version}</h2>"
            f"<p class='note'>Created {esc(model.created_at.isoformat())}, K={len(model.ids)}, "
            f"published versions: {_versions_text(versions)}. Means are over "
            "the sampled users the current model assigns to each segment; <i>users now</i> "
            "counts the stored segment records naming it.</p>" + _profile_table(rows)
        )
        for title, name, caption in (
            (
                "Segment centres",
                plot_centres(model, out_dir),
                "Each row is a segment's centre. Colour: scaled units (spread units, "
                "max(IQR, 1.349 std), above or below the median user, after log1p on counts and "
                "money). Text: the same centre in business units.",
            ),
            (
                "Value tiers",
                plot_tiers(model, mean_revenue, out_dir),
                "Mean net revenue of each segment's sampled users; colour is the model's value "
                "tier.",
            ),
            (
                "Users by segment (PCA)",
                plot_pca(model, snapshot.features, out_dir),
                "Sampled users projected on the first two principal components of the model's "
                "scaled space; X marks each centre. Overlap in 2-D does not mean overlap in the "
                f"{len(model.feature_names)}-D space the model uses.",
            ),
            (
                "Segment sizes across versions",
                plot_sizes(history, current_sizes, out_dir),
                "Share of the rows assigned to each segment in the training snapshot of every "
                "published version (its profiles), and of the users whose stored record names the "
                "segment now; above each bar, its number of rows or users. "
                f"Ids are stable across versions. Beyond {SIZE_CHART_VERSIONS} versions, "
                f"{SIZE_CHART_VERSIONS} evenly spaced from the oldest kept to the newest.",
            ),
        ):
            sections.append(
                f"<h2>{esc(title)}</h2><p class='note'>{esc(caption)}</p>"
                f"<img src='{name}' alt='{esc(title)}'>"
            )

    sections.append("<h2>Data quality</h2>" + _counter_table(counters))
    if counters:
        sections.append(f"<img src='{plot_counters(counters, out_dir)}' alt='counters'>")
    if len(snapshot):
        sections.append(
            "<h2>Feature distributions</h2><p class='note'>Heavy-tailed features are shown on a "
            "signed log1p axis, as the model sees them before scaling.</p>"
            f"<img src='{plot_feature_distributions(snapshot.features, out_dir)}' "
            "alt='feature distributions'>"
        )

    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>streamseg report: {esc(keys.namespace)}</title><style>{_CSS}</style></head>"
        f"<body><h1>streamseg segment report: {esc(keys.namespace)}</h1>"
        + "".join(sections)
        + "</body></html>"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def report_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg report``: write the HTML report and print its path."""
    client = settings.redis.connect()
    refuse_if_nothing_written(client, settings.redis.namespace)  # misspelt? not an empty report
    index = write_report(
        client,
        KeyLayout(settings.redis.namespace),
        Path(args.out),
        sample=args.sample,
        settings=settings,
    )
    print(index.resolve())
    return 0
