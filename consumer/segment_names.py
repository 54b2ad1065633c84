"""Segment names an operator chooses: ``streamseg model rename ID NAME``.

The trainer names segments by rules (`model.labels`): "champions", "window shoppers". A team
that runs a campaign on a segment wants its own name for it ("VIP", "winback-q4"), kept through
every refit. A chosen name is stored by segment id in the hash ``{<ns>:model}:names`` (id ->
name) and takes effect at once: `rename_segment` publishes the current model again, as the next
version, with that one name changed, in the same transaction as the hash and only while the
version it read is current (as the trainer's publishes are), so nothing published in between
is undone. The trainer applies the hash at every publish (`model.labels.with_chosen_names`).
Segment ids keep their meaning across updates and refits (Hungarian matching of centres), so
the name stays with the segment it was given to; a segment that is gone leaves its name unused
(ids are never reused). ``--rule`` gives a segment its rule's name back.

A segment record carries the name of its scoring: a user's record takes the new name at the
user's next event, or at the next re-score pass (which rewrites records naming an older model).
A ``model rollback`` makes that version's names current again until the trainer's next publish.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from typing import TYPE_CHECKING

import numpy as np

from consumer.exceptions import ConfigError, ModelReplacedError
from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient
from model.labels import name_segments, unique_names, with_chosen_names
from model.model_format import MAX_NAME_CHARS, SegmentModel

if TYPE_CHECKING:
    from consumer.model_store import ModelStore

log = logging.getLogger(__name__)

#: Key in a model's ``metrics.extra`` that a rename sets: when, epoch milliseconds.
RENAMED_AT_METRIC = "renamed_at_ms"

#: A rename retries this often when another publish comes first.
_ATTEMPTS = 5


def checked_name(text: str) -> str:
    """``text`` if it can name a segment, else `ConfigError` saying why: 1 to
    `MAX_NAME_CHARS` characters of valid Unicode, no control characters, no space at
    either end (a record's name is shown and matched as it is)."""
    if not text:
        raise ConfigError("a segment name cannot be empty")
    if len(text) > MAX_NAME_CHARS:
        raise ConfigError(
            f"a segment name has at most {MAX_NAME_CHARS} characters, got {len(text)}"
        )
    if text != text.strip():
        raise ConfigError(f"segment name {text!r} starts or ends with a space")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"segment name {text!r} is not valid Unicode") from None
    control = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf")), None)
    if control is not None:
        raise ConfigError(f"segment name {text!r} holds a control character (U+{ord(control):04X})")
    return text


def read_chosen_names(client: RedisClient, keys: KeyLayout) -> dict[int, str]:
    """The names operators chose in this namespace: segment id -> name. A field that is not
    a segment id or a value that is not a name (a hand edit) is logged and left out."""
    chosen: dict[int, str] = {}
    for field, value in client.hgetall(keys.model_names).items():
        field_text = field.decode(errors="replace")
        try:
            if not (field_text.isascii() and field_text.isdigit()) or len(field_text) > 16:
                raise ConfigError(f"field {field_text[:40]!r} is not a segment id")
            name = checked_name(value.decode())
            if name in chosen.values():
                raise ConfigError(f"segment {field_text}'s name {name!r} is another's already")
            chosen[int(field_text)] = name
        except (ConfigError, UnicodeDecodeError) as exc:
            log.warning("%s: left out: %s", keys.model_names, exc)
    return chosen


def rule_name(model: SegmentModel, segment_id: int) -> str:
    """The name the rules give segment ``segment_id`` of ``model``, made unique among the
    model's other names (which stay as they are)."""
    centers = model.to_preprocessor().inverse_transform(np.asarray(model.centers))
    rule_names = name_segments(centers, model.feature_names, previous_names=model.names)[0]
    position = model.ids.index(segment_id)
    names = list(model.names)
    names[position] = rule_names[position]
    others = [p for p in range(len(names)) if p != position]
    return unique_names(names, others)[position]


def rename_segment(
    store: ModelStore, segment_id: int, name: str | None
) -> tuple[SegmentModel, SegmentModel]:
    """Name segment ``segment_id`` ``name`` (None: its rule's name again) and publish the
    current model with that name as the next version. Returns the model before and the one
    published (the same, unchanged, when the segment had that name already)."""
    for _ in range(_ATTEMPTS):
        current = store.load_current()
        if current is None:
            raise ConfigError(
                f"no model published yet in namespace {store.keys.namespace!r}: segments get "
                "ids at the trainer's first publish; rename one after it"
            )
        if segment_id not in current.ids:
            raise ConfigError(
                f"model v{current.model_version} has no segment {segment_id}: its segments are "
                f"{sorted(current.ids)} (streamseg model show)"
            )
        chosen = read_chosen_names(store.client, store.keys)
        was_chosen = chosen.get(segment_id)
        if name is None:
            chosen.pop(segment_id, None)
            names = list(current.names)
            names[current.ids.index(segment_id)] = rule_name(current, segment_id)
        else:
            taken_by = [i for i, n in chosen.items() if n == name and i != segment_id]
            taken_by = [i for i in taken_by if i in current.ids]
            if taken_by:
                raise ConfigError(
                    f"segment {taken_by[0]} is already called {name!r} (a name chosen with "
                    "model rename): names are unique within a model"
                )
            chosen[segment_id] = name
            names = with_chosen_names(current.names, current.ids, chosen)
        if names == current.names:
            if was_chosen != name:  # the rule gives the chosen name, or the reverse
                _change_chosen_name(store, segment_id, name)
            return current, current
        extra = {**current.metrics.extra, RENAMED_AT_METRIC: float(round(time.time() * 1000))}
        renamed = current.model_copy(
            update={"names": names, "metrics": current.metrics.model_copy(update={"extra": extra})}
        ).revalidated()
        try:
            published = store.publish_next(
                renamed, base_version=current.model_version, chosen_names={segment_id: name}
            )
        except ModelReplacedError:
            continue  # the trainer (or an operator) published meanwhile: rename that one
        return current, published
    raise ConfigError(
        f"other publishes kept coming first ({_ATTEMPTS} attempts): try the rename again"
    )


def _change_chosen_name(store: ModelStore, segment_id: int, name: str | None) -> None:
    """Change the hash alone: the current model has the name already."""
    if name is None:
        store.client.hdel(store.keys.model_names, str(segment_id))
    else:
        store.client.hset(store.keys.model_names, str(segment_id), name)


def rename_summary(before: SegmentModel, after: SegmentModel, segment_id: int) -> str:
    """What a rename did, for the terminal: the version published and every name it changed
    (a rule's name equal to the chosen one took a suffix)."""
    if after is before:
        name = before.names[before.ids.index(segment_id)]
        return (
            f"segment {segment_id} is called {name!r} in v{before.model_version} already: "
            "no version published"
        )
    old = dict(zip(before.ids, before.names, strict=True))
    lines = [f"published model v{after.model_version}: v{before.model_version} with new names"]
    lines += [
        f"  segment {i}: {old[i]!r} -> {name!r}"
        for i, name in zip(after.ids, after.names, strict=True)
        if old[i] != name
    ]
    lines.append(
        "consumers use it within pipeline.model_poll_seconds; a user's record takes the new "
        "name at the user's next event or at the next re-score pass"
    )
    return "\n".join(lines)
