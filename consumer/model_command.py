"""``streamseg model list|show|rollback|export|import|rename|refit``: the model history from a
terminal (the storage is `consumer.model_store`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping

import orjson

from consumer import refit_request
from consumer.exceptions import ConfigError, ModelReplacedError
from consumer.model_store import (
    IMPORTED_AT_METRIC,
    RENAMED_AT_METRIC,
    ModelStore,
    compatible,
    imported_at,
    renamed_at,
)
from consumer.redis_keys import KeyLayout
from consumer.segment_names import checked_new_name, read_chosen_names, rename_segment
from consumer.settings import Settings
from consumer.times import readable_time
from consumer.trainer_lease import lease_holder
from consumer.unknown_namespace import refuse_if_nothing_written
from model.exceptions import ModelFormatError
from model.labels import with_chosen_names
from model.model_format import MAX_MODEL_BYTES, SegmentModel


def _readable(value: float | None) -> str:
    """A number for reading: 4 significant digits, thousands separated (``698.3``,
    ``1,648``, ``0.01235``); ``-`` when unknown."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _notes(m: SegmentModel) -> list[str]:
    """``imported <time>`` and ``renamed <time>``, for the versions they apply to."""
    notes = [("imported", imported_at(m)), ("renamed", renamed_at(m))]
    return [f"{what} {readable_time(when)}" for what, when in notes if when is not None]


def _listing_line(m: SegmentModel, current: int | None) -> str:
    """``model list``: one version, ``*`` = current."""
    mark = "*" if m.model_version == current else " "
    return (
        f"{mark} v{m.model_version:<5} created {readable_time(m.created_at)}  K={len(m.ids)}  "
        f"rows={m.metrics.n_rows:,}  inertia={_readable(m.metrics.inertia)}"
        + "".join(f"  {note}" for note in _notes(m))
    )


def _model_table(m: SegmentModel, chosen: Mapping[int, str]) -> str:
    """``model show``: one row per segment in tier order, profiles in business units
    (means over the rows the model was trained on; money in currency units); a name an
    operator chose (``chosen``, from `model rename`) is marked. Top categories per segment
    need the users' states: ``streamseg report``."""
    lines = [
        f"model v{m.model_version} created {readable_time(m.created_at)}"
        + "".join(f", {note}" for note in _notes(m))
        + f"; profiles over the "
        f"{m.metrics.n_rows:,} users of its last training batch (streamseg status: all users)",
        f"  {'id':>4} {'tier':>4}  {'name':<26} {'users':>8} {'share':>6} {'revenue':>10} "
        f"{'orders':>7} {'AOV':>8} {'recency d':>9} {'tenure d':>8} {'views':>7}",
    ]
    marked = False
    for pos in _tier_order(m):
        p = m.profiles[pos]
        name = m.names[pos]
        if chosen.get(m.ids[pos]) == name:
            name, marked = f"{name} *", True
        lines.append(
            f"  {m.ids[pos]:>4} {m.tiers[pos]:>4}  {name:<26} {p.size:>8,} "
            f"{p.share:>6.1%} {p.mean_net_revenue:>10,.2f} {p.mean_purchases:>7.2f} "
            f"{p.mean_avg_order_value:>8,.2f} {p.mean_recency_days:>9.1f} "
            f"{p.mean_tenure_days:>8.1f} {p.mean_views:>7.1f}"
        )
    if marked:
        lines.append("  * a name chosen with `streamseg model rename` (kept through refits)")
    return "\n".join(lines)


def _tier_order(m: SegmentModel) -> list[int]:
    """Positions of ``m``'s segments, best tier first (then by id)."""
    return sorted(range(len(m.ids)), key=lambda p: (m.tiers[p], m.ids[p]))


def _model_json(m: SegmentModel, chosen: Mapping[int, str]) -> dict[str, object]:
    """``model show --json``: what the table says, at full precision, segments in tier
    order (the whole document: ``model export``)."""
    notes = {"imported_at": imported_at(m), "renamed_at": renamed_at(m)}
    return {
        "model_version": m.model_version,
        "created_at": m.created_at.isoformat(),
        **{k: None if v is None else v.isoformat() for k, v in notes.items()},
        "rows": m.metrics.n_rows,
        "segments": [
            {
                "segment_id": m.ids[pos],
                "tier": m.tiers[pos],
                "segment": m.names[pos],
                "chosen": chosen.get(m.ids[pos]) == m.names[pos],
                **m.profiles[pos].model_dump(),
            }
            for pos in _tier_order(m)
        ],
    }


def _id_matching(model: SegmentModel, before: SegmentModel) -> str:
    """How an import's segments took ids: those matched to a centre of ``before`` keep that
    segment's id, the others are new."""
    old_ids, new_ids = set(before.ids), set(model.ids)
    kept = [i for i in model.ids if i in old_ids]
    new = [i for i in model.ids if i not in old_ids]
    gone = [i for i in before.ids if i not in new_ids]
    lines = [
        f"segment ids: {len(kept)} of {len(model.ids)} matched a segment of "
        f"v{before.model_version} (trainer.new_id_distance) and keep its id: {kept or 'none'}; "
        f"new: {new or 'none'}"
    ]
    if gone:
        lines.append(
            f"v{before.model_version}'s segments {gone} have no match: the consumers re-score "
            "their users at their next event or at the re-score pass such a model starts "
            "(within pipeline.rescore_min_wall_seconds)"
        )
    return "\n".join(lines)


def _request_refit(store: ModelStore, current: int | None, wait_seconds: float) -> int:
    """``model refit``: leave a request for the active trainer (`consumer.refit_request`),
    and with ``wait_seconds`` wait for its answer: the version the refit published (exit 0)
    or why it could not be done (exit 1)."""
    namespace = store.keys.namespace
    holder = lease_holder(store.client.get(store.keys.trainer_lease))
    if holder is None:
        refuse_if_nothing_written(store.client, namespace)  # misspelt?
        print(
            f"no trainer holds the lease of namespace {namespace!r}: start `streamseg train`, "
            "or refit with `streamseg train --once --refit`",
            file=sys.stderr,
        )
        return 1
    if current is None:
        print(
            f"no model published yet in namespace {namespace!r}: trainer {holder} bootstraps "
            "once it has enough rows (streamseg status)",
            file=sys.stderr,
        )
        return 1
    number = refit_request.make_request(store.client, store.keys)
    print(
        f"refit requested: trainer {holder} refits at its next step (every "
        "trainer.update_interval_seconds of its settings) and publishes the version after "
        f"v{current}"
    )
    if not wait_seconds:
        return 0
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        time.sleep(0.25)
        answer = refit_request.read_answer(store.client, store.keys, number)
        if answer is None:
            continue
        if answer.get("error") is not None:
            print(f"trainer {holder} did not refit: {answer['error']}", file=sys.stderr)
            return 1
        print(f"model v{answer['version']} is current: the refit")
        return 0
    pending = refit_request.is_pending(store.client, store.keys)
    print(
        f"no refitted version within {wait_seconds:g} s"
        + (
            f"; the request is still pending: trainer {holder} takes it at its next step, "
            f"or it lapses {refit_request.REQUEST_SECONDS // 60} min after the newest request"
            if pending
            else " (streamseg model list; the trainer's log says why)"
        ),
        file=sys.stderr,
    )
    return 1


def model_command(args: argparse.Namespace, settings: Settings) -> int:
    """``streamseg model list|show|rollback|export|import|rename|refit``."""
    imported: SegmentModel | None = None
    if args.action == "import":  # the file first: a bad one is named even if Redis is down
        try:
            with args.path.open("rb") as file:
                # One byte past the cap, so that /dev/zero or a huge file is refused by
                # from_json without being read whole.
                data = file.read(MAX_MODEL_BYTES + 1)
            imported = compatible(SegmentModel.from_json(data))
        except (OSError, ModelFormatError) as exc:
            raise ConfigError(f"cannot import {args.path}: {exc}") from None
    client = settings.redis.connect()
    store = ModelStore(
        client,
        KeyLayout(settings.redis.namespace),
        history_versions=settings.trainer.model_history_versions,
    )
    current = store.current_version()
    if args.action == "list":
        if current is None:
            refuse_if_nothing_written(client, settings.redis.namespace)  # misspelt?
            print("no model published yet (cold start)")
        listed = store.load_kept(store.versions(newest=args.last))
        for m in listed:
            print(_listing_line(m, current))
        older = store.version_count() - args.last
        if args.last > 0 and older > 0:
            print(f"  ... and {older:,} older (--last 0 lists all)")
        if current is not None and all(m.model_version != current for m in listed):
            print(f"* v{current} is current (a rollback to it; `model show` shows it)")
        return 0
    if args.action == "show":
        shown: int | None = args.version if args.version is not None else current
        if shown is None:
            refuse_if_nothing_written(client, settings.redis.namespace)  # misspelt?
            # On stderr with --json: a script reading stdout gets no text it cannot parse.
            print("no model published yet (cold start)", file=sys.stderr if args.json else None)
            return 1
        model, chosen = store.load(shown), read_chosen_names(client, store.keys)
        if args.json:
            print(orjson.dumps(_model_json(model, chosen)).decode())
        else:
            print(_model_table(model, chosen))
        return 0
    if args.action == "refit":
        return _request_refit(store, current, args.wait)
    if args.action == "rename":
        if current is None:
            refuse_if_nothing_written(client, settings.redis.namespace)  # misspelt?
        name = None if args.rule else checked_new_name(args.name)
        print(rename_segment(store, args.segment, name).summary())
        return 0
    if args.action == "rollback":
        if args.version == current:
            print(f"model v{current} is current already: nothing changed")
            return 0
        store.rollback(args.version)
        print(f"model v{args.version} is current")
        return 0
    if args.action == "export":
        exported: int | None = args.model_version if args.model_version is not None else current
        if exported is None:
            print("no model published yet", file=sys.stderr)
            return 1
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_bytes(store.load(exported).to_json())
        print(f"wrote model v{exported} to {args.path}")
        return 0
    if imported is not None:
        # Its ids mean other segments here: matched to the current model's centres, so that
        # a kept id keeps its meaning, and the rest new (never one used here before).
        before = store.load(current) if current is not None else None
        if before is not None:
            # After a rollback the current model's next_id is behind ids newer versions used.
            newest = store.load_kept(store.versions(newest=1))
            floor = max((m.next_id for m in newest), default=before.next_id)
            imported = imported.with_ids_of(before, settings.trainer.new_id_distance, floor)
            # A segment an operator named keeps the name, as in the trainer's publishes.
            names = with_chosen_names(
                imported.names, imported.ids, read_chosen_names(client, store.keys)
            )
            imported = imported.model_copy(update={"names": names}).revalidated()
        # The document keeps its created_at; when it arrived here is noted beside it (and a
        # rename's note from where it was exported is not this version's).
        noted = {k: v for k, v in imported.metrics.extra.items() if k != RENAMED_AT_METRIC}
        noted[IMPORTED_AT_METRIC] = float(round(time.time() * 1000))
        model = imported.model_copy(
            update={"metrics": imported.metrics.model_copy(update={"extra": noted})}
        )
        try:
            # Only while the model its ids and names were matched to is current.
            model = store.publish_next(model, base_version=current or 0)
        except ModelReplacedError as exc:
            raise ConfigError(f"not imported: {exc}; run the import again") from None
        print(f"imported {args.path} as model v{model.model_version}")
        if before is not None:
            print(_id_matching(model, before))
        return 0
    raise ConfigError(f"unknown model action {args.action!r}")
