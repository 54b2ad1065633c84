"""``streamseg compare NAME [--with live|NAMESPACE]``: two namespaces' segmentations side by side.

On the users present in both (typically a replay's shadow and the live namespace): the share
whose segment differs once centres are matched (Hungarian assignment on centre distance, the
other model's centres re-expressed in the shadow's scaling), the adjusted Rand index, each
model's inertia, and per matched pair of segments their sizes and the profile means that moved
by more than 20%.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from consumer.exceptions import ConfigError
from consumer.model_store import ModelStore
from consumer.namespaces import live_namespace
from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient, Settings
from consumer.snapshot import ALL_USERS, read_snapshot
from consumer.unknown_namespace import refuse_if_nothing_written
from model.features import FEATURE_NAMES, FeatureConfig
from model.model_format import SegmentModel
from model.preprocessing import remap_centers
from model.quality import adjusted_rand, inertia, model_inertia, segment_change_share
from model.segmenter import match_centers

_PROFILE_CHANGE = 0.2  # a profile field "moved" when it changed by more than this share
_NOISE = 1e-9  # profile values closer to zero than this are rounding noise


@dataclass(frozen=True)
class SegmentPair:
    """A segment of the shadow and its matched segment of the other namespace."""

    shadow_id: int | None
    shadow_name: str | None
    shadow_size: int
    other_id: int | None
    other_name: str | None
    other_size: int
    moved: dict[str, tuple[float, float]]
    """Profile fields that changed by more than 20%: field -> (other, shadow)."""


@dataclass(frozen=True)
class Comparison:
    """Two namespaces on their common users (``shadow`` = NAME, ``other`` = e.g. live)."""

    shadow: str
    other: str
    common_users: int
    compared_users: int
    """Common users with a segment in both namespaces."""
    pairs: list[SegmentPair]
    change_share: float
    """Share of compared users whose segment differs after matching centres, 0..1 (NaN when
    no user was compared)."""
    adjusted_rand: float
    inertia_own_scaling: dict[str, float]
    """Each model's inertia on the shadow's features, in its own scaled space."""
    inertia_shadow_scaling: dict[str, float]
    """Both in the shadow's scaled space (the other's centres re-expressed): comparable."""


def compare_namespaces(
    client: RedisClient, shadow: str, other: str, config: FeatureConfig | None = None
) -> Comparison:
    """Compare the segmentations of ``shadow`` and ``other`` on the users present in both."""
    models = {}
    for ns in (shadow, other):
        model = ModelStore(client, KeyLayout(ns)).load_current()
        if model is None:
            refuse_if_nothing_written(client, ns)  # a misspelt name: say which exist
            raise ConfigError(f"namespace {ns!r} has no published model")
        models[ns] = model
    ms, mo = models[shadow], models[other]
    snap_s = read_snapshot(client, KeyLayout(shadow), ALL_USERS, config)
    snap_o = read_snapshot(client, KeyLayout(other), ALL_USERS, config)
    index_o = {u: i for i, u in enumerate(snap_o.user_ids)}
    pairs_idx = [(i, index_o[u]) for i, u in enumerate(snap_s.user_ids) if u in index_o]
    rows_s = np.array([i for i, _ in pairs_idx], dtype=np.intp)
    rows_o = np.array([j for _, j in pairs_idx], dtype=np.intp)

    def positions(model: SegmentModel, ids: np.ndarray) -> np.ndarray:
        lookup = {seg_id: pos for pos, seg_id in enumerate(model.ids)}
        return np.array([lookup.get(int(i), -1) for i in ids], dtype=np.intp)

    pos_s = positions(ms, snap_s.segment_ids[rows_s])
    pos_o = positions(mo, snap_o.segment_ids[rows_o])
    valid = (pos_s >= 0) & (pos_o >= 0)
    pos_s, pos_o = pos_s[valid], pos_o[valid]

    centers_s = np.asarray(ms.centers, dtype=np.float64)
    centers_o = remap_centers(mo.centers, mo.to_preprocessor(), ms.to_preprocessor())
    match = match_centers(centers_o, centers_s, float("inf"))  # shadow position -> other's

    X = snap_s.features[rows_s]
    X = X[np.isfinite(X).all(axis=1)]
    Z = ms.transform(X) if len(X) else np.empty((0, len(FEATURE_NAMES)))
    has_rows = len(X) > 0
    pairs = []
    for p, q in enumerate(match.tolist()):
        pairs.append(
            SegmentPair(
                shadow_id=ms.ids[p],
                shadow_name=ms.names[p],
                shadow_size=int((pos_s == p).sum()),
                other_id=mo.ids[q] if q >= 0 else None,
                other_name=mo.names[q] if q >= 0 else None,
                other_size=int((pos_o == q).sum()) if q >= 0 else 0,
                moved=_moved_fields(mo, q, ms, p) if q >= 0 else {},
            )
        )
    for q in sorted(set(range(len(mo.ids))) - set(match.tolist())):
        pairs.append(
            SegmentPair(None, None, 0, mo.ids[q], mo.names[q], int((pos_o == q).sum()), {})
        )
    return Comparison(
        shadow=shadow,
        other=other,
        common_users=len(pairs_idx),
        compared_users=int(valid.sum()),
        pairs=pairs,
        change_share=(
            segment_change_share(pos_o, pos_s, centers_before=centers_o, centers_after=centers_s)
            if len(pos_s)
            else float("nan")  # nothing compared is no evidence of no change
        ),
        adjusted_rand=adjusted_rand(pos_o, pos_s) if len(pos_s) else float("nan"),
        inertia_own_scaling={
            shadow: model_inertia(ms, X) if has_rows else 0.0,
            other: model_inertia(mo, X) if has_rows else 0.0,
        },
        inertia_shadow_scaling={
            shadow: inertia(Z, centers_s) if has_rows else 0.0,
            other: inertia(Z, centers_o) if has_rows else 0.0,
        },
    )


def _moved_fields(
    before: SegmentModel, q: int, after: SegmentModel, p: int
) -> dict[str, tuple[float, float]]:
    old = before.profiles[q].model_dump(exclude={"size", "share"})
    new = after.profiles[p].model_dump(exclude={"size", "share"})
    moved = {}
    for name, was in old.items():
        now = new[name]
        # Rounding noise (1e-16 where a centre is 0) is 0, not a base for a relative change.
        was, now = (0.0 if abs(v) < _NOISE else v for v in (was, now))
        scale = abs(was)
        if (scale == 0 and now != 0) or (scale > 0 and abs(now - was) / scale > _PROFILE_CHANGE):
            moved[name] = (float(was), float(now))
    return moved


def print_comparison(c: Comparison, console: Console | None = None) -> None:
    """The comparison as tables on stdout."""
    # Piped, rich would cut the tables at 80 columns: give them room instead, unless COLUMNS
    # says how wide (rich reads it). Segment names are data (an imported model may name one
    # "a [b]"), not rich markup.
    columns = os.environ.get("COLUMNS", "")
    width = None if sys.stdout.isatty() else int(columns) if columns.isdigit() else 200
    console = console or Console(width=width, markup=False, highlight=False)
    summary = Table(title=f"{c.shadow} vs {c.other}")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_row("users in both", f"{c.common_users:,}")
    summary.add_row("users with a segment in both", f"{c.compared_users:,}")
    summary.add_row("segment differs (after id matching)", _figure(c.change_share, ".1%"))
    summary.add_row("adjusted Rand index", _figure(c.adjusted_rand, ".3f"))
    # The shadow's own scaling is the shadow's scaling: one row for it, two for the other.
    summary.add_row(
        f"inertia of {c.shadow} (own scaling)", f"{c.inertia_own_scaling[c.shadow]:,.1f}"
    )
    summary.add_row(f"inertia of {c.other} (own scaling)", f"{c.inertia_own_scaling[c.other]:,.1f}")
    summary.add_row(
        f"inertia of {c.other} ({c.shadow}'s scaling)", f"{c.inertia_shadow_scaling[c.other]:,.1f}"
    )
    console.print(summary)
    # Left to right as a promote would go: from the other (the live) segment to the shadow's,
    # the columns and the arrows alike.
    sizes = Table(
        title="segments, matched by centre",
        caption=f"moved >20%: profile means of matched segments, {c.other} -> {c.shadow}",
    )
    for heading in (f"{c.other} segment", "users", f"{c.shadow} segment", "users", "moved >20%"):
        sizes.add_column(heading, justify="right" if heading == "users" else "left")
    for pair in c.pairs:
        sizes.add_row(
            f"{pair.other_id} {pair.other_name}" if pair.other_id is not None else "-",
            f"{pair.other_size:,}",
            f"{pair.shadow_id} {pair.shadow_name}" if pair.shadow_id is not None else "-",
            f"{pair.shadow_size:,}",
            ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in pair.moved.items()) or "",
        )
    console.print(sizes)


def _figure(value: float, spec: str) -> str:
    """``value`` formatted, or ``-`` for NaN (no user to compare)."""
    return "-" if np.isnan(value) else format(value, spec)


def compare_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg compare NAME [--with live|NAMESPACE] [--json]``."""
    client = settings.redis.connect()
    other = args.with_
    if other == "live":
        other = live_namespace(client, settings.redis.namespace)
    if other == args.name:
        raise ConfigError(
            f"{args.name} is the namespace to compare with (the live one?): name another "
            "with --with NAMESPACE"
        )
    comparison = compare_namespaces(client, args.name, other, settings.features)
    if args.json:
        # NaN (an ARI without users) is written as null; a moved field as [other, shadow].
        print(orjson.dumps(asdict(comparison)).decode())
    else:
        print_comparison(comparison)
    return 0
