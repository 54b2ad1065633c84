"""``streamseg explain USER_ID``: a user's features and why the model puts them in their segment.

Reads the user's state, the stored segment record, the current model and the namespace's
event clock; computes the features at that clock (as the re-score pass does: the watermark
less ``pipeline.allowed_lateness_seconds``, never before the user's last event) and prints
them beside the nearest and the next-nearest segment's centre, feature by feature, with the
share each feature has in the margin between the two (`model.explain`).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from consumer.exceptions import ConfigError
from consumer.feature_settings import FeatureSettings, recorded_feature_settings
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from consumer.segment_record import iso_ms
from consumer.settings import Settings
from consumer.state_store import StateStore, read_values
from consumer.unknown_namespace import refuse_if_nothing_written
from consumer.user_ids import is_utf8_text
from model.explain import Explanation, explain_assignment
from model.features import COL, FEATURE_NAMES, derive_features


def explain_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print the explanation of one user; status 1 for a user without state."""
    user = args.user_id
    if not is_utf8_text(user):
        raise ConfigError(f"user id {user!r} is not valid UTF-8: no event can carry it")
    client = settings.redis.connect()
    keys = KeyLayout(settings.redis.namespace)
    store = StateStore(client, keys)
    state = store.read_states([user])
    [record] = read_values(client, [keys.segment(user)])
    last_ms = float(state[0, COL["last_ts_ms"]])
    if np.isnan(last_ms):
        refuse_if_nothing_written(client, keys.namespace)  # a misspelt namespace?
        if args.json:
            print(
                orjson.dumps({"user_id": user, "namespace": keys.namespace, "state": None}).decode()
            )
        else:
            where = f"namespace {keys.namespace!r}"
            print(f"user {user!r} has no state in {where} (never seen, or forgotten)")
        return 1
    own = FeatureSettings.of(settings)
    recorded = recorded_feature_settings(client, keys)
    used = recorded or own
    clock = store.read_watermark()
    lateness_ms = used.allowed_lateness_seconds * 1000.0
    at_ms = max(last_ms, clock - lateness_ms) if clock is not None else last_ms
    features = derive_features(state, at_ms, used.features)[0]
    model = ModelStore(client, keys).load_current()
    if recorded is None:
        said = (
            f"with this command's feature settings: {keys.feature_settings} records none (its "
            "consumers predate the record): give it the consumers' --config"
        )
    elif changed := own.differences(recorded):
        said = f"with the consumers' feature settings, not this command's ({', '.join(changed)})"
    else:
        said = "with the consumers' feature settings"
    if args.json:
        explanation = explain_assignment(model, features) if model is not None else None
        answer = {
            "user_id": user,
            "namespace": keys.namespace,
            "record": _stored(record),
            "features_at": iso_ms(at_ms),
            "feature_settings": "namespace" if recorded is not None else "command",
            "last_event_time": iso_ms(last_ms),
            "features": dict(zip(FEATURE_NAMES, features.tolist(), strict=True)),
            "model_version": model.model_version if model is not None else None,
            **(_as_json(explanation) if explanation is not None else {}),
        }
        print(orjson.dumps(answer).decode())
        return 0
    # Ids, records and segment names are data, not rich markup ("u[/x]" raised MarkupError).
    console = Console(
        file=sys.stdout,
        width=max(130, Console().width),
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    console.print(f"user {user!r} in namespace {keys.namespace!r}")
    console.print(f"stored record: {record.decode(errors='replace') if record else 'none'}")
    console.print(
        f"features at {iso_ms(at_ms)} (the namespace's event clock less "
        f"pipeline.allowed_lateness_seconds, never before the user's last event "
        f"{iso_ms(last_ms)}), {said}"
    )
    if model is None:
        console.print("no model published yet (cold start): the features alone")
        console.print(_features_table(features))
        return 0
    explanation = explain_assignment(model, features)
    console.print(_ranking(explanation, model.model_version))
    console.print(_margin_table(explanation))
    return 0


def _stored(record: bytes | None) -> object:
    """The stored record as JSON; its text when it is not JSON (not written by this service)."""
    if record is None:
        return None
    try:
        return orjson.loads(record)
    except orjson.JSONDecodeError:
        return record.decode(errors="replace")


def _as_json(explanation: Explanation) -> dict[str, object]:
    """The ranking and the margin's terms at full precision, for scripts."""
    names = explanation.feature_names
    ranked = zip(
        explanation.ranked_ids,
        explanation.ranked_names,
        explanation.distances.tolist(),
        strict=True,
    )
    runner_up = explanation.runner_up_centre
    return {
        "nearest": [{"segment_id": i, "segment": n, "distance": d} for i, n, d in ranked],
        "nearest_centre": dict(zip(names, explanation.assigned_centre.tolist(), strict=True)),
        "next_centre": None
        if runner_up is None
        else dict(zip(names, runner_up.tolist(), strict=True)),
        "margin": float(explanation.margins.sum()),
        "margin_terms": dict(zip(names, explanation.margins.tolist(), strict=True)),
    }


def _ranking(explanation: Explanation, version: int) -> str:
    nearest = ", ".join(
        f"{segment_id} {name!r} {distance:.2f}"
        for segment_id, name, distance in zip(
            explanation.ranked_ids[:3],
            explanation.ranked_names[:3],
            explanation.distances[:3],
            strict=False,
        )
    )
    return f"model v{version}, nearest segments (id, name, distance in scaled units): {nearest}"


def _features_table(features: np.ndarray) -> Table:
    table = Table("feature", "user")
    for name, value in zip(FEATURE_NAMES, features, strict=True):
        table.add_row(name, _number(value))
    return table


def _margin_table(explanation: Explanation) -> Table:
    """Features by how much they decide between the nearest and the next segment."""
    first = explanation.ranked_names[0]
    if explanation.runner_up_centre is None:
        table = Table("feature", "user", f"{first} (centre)")
        for name, value, centre in zip(
            explanation.feature_names,
            explanation.values,
            explanation.assigned_centre,
            strict=True,
        ):
            table.add_row(name, _number(value), _number(centre))
        return table
    second = explanation.ranked_names[1]
    total = float(explanation.margins.sum())
    table = Table(
        "feature",
        "user",
        f"{first} (centre)",
        f"{second} (centre)",
        "pulls towards (share)",
        title=f"why {first!r} and not {second!r}: margin {total:.2f} in squared scaled units",
    )
    order = np.argsort(-np.abs(explanation.margins), kind="stable")
    for j in order.tolist():
        margin = float(explanation.margins[j])
        towards = first if margin > 0 else second if margin < 0 else "neither"
        share = f" ({margin / total:+.0%})" if total > 0 else ""
        table.add_row(
            explanation.feature_names[j],
            _number(explanation.values[j]),
            _number(explanation.assigned_centre[j]),
            _number(explanation.runner_up_centre[j]),
            f"{towards} {margin:+.2f}{share}",
        )
    return table


def _number(value: float) -> str:
    text = f"{value:,.2f}" if abs(value) < 1e6 else f"{value:.3g}"
    return "0.00" if text == "-0.00" else text
