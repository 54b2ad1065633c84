"""Segment names an operator chooses: ``streamseg model rename ID NAME``.

The trainer names segments by rules (`model.labels`): "champions", "window shoppers". A team
that runs a campaign on a segment wants its own name for it ("VIP", "winback-q4"), kept through
every refit. A chosen name is stored by segment id in the hash ``{<ns>:model}:names`` (id ->
name) and takes effect at once: `rename_segment` publishes the current model again, as the next
version, with the chosen names applied, in the same transaction as the hash and only while
the version it read is current (as the trainer's publishes are), so nothing published in
between is undone. The trainer applies the hash at every publish (`model.labels.with_chosen_names`).
Segment ids keep their meaning across updates and refits (Hungarian matching of centres), so
the name stays with the segment it was given to; a segment that is gone leaves its name unused
(ids are never reused). ``--rule`` gives a segment its rule's name back, naming the segments
as the trainer's next publish would (rules' names, then the chosen ones), or releases the
entry of a segment that is gone.

A segment record carries the name of its scoring: a user's record takes the new name at the
user's next event, or in the re-score pass that a rename (or a rollback to other names)
begins at once (`consumer.rescore`).
A ``model rollback`` makes that version's names current again until the trainer's next publish.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from dataclasses import dataclass

import numpy as np

from consumer.exceptions import ConfigError, ModelReplacedError
from consumer.model_store import RENAMED_AT_METRIC, ModelStore
from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient
from model.labels import MAX_NAME_CHARS, name_segments, with_chosen_names
from model.model_format import SegmentModel, TrainingMetrics

log = logging.getLogger(__name__)

#: A rename retries this often when another publish comes first.
_ATTEMPTS = 5
#: Unicode categories a name may not hold: controls, line and paragraph separators.
_BREAKING = ("Cc", "Zl", "Zp")


def checked_name(text: str) -> str:
    """``text`` if it can name a segment, else `ConfigError` saying why: 1 to
    `MAX_NAME_CHARS` characters of valid Unicode, no control character or line break, no
    space at either end (a record's name is shown and matched as it is)."""
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
    # Control characters and line or paragraph separators break a line of a terminal or a
    # log; format characters (the joiner of an emoji sequence, a soft hyphen) do not.
    control = next((c for c in text if unicodedata.category(c) in _BREAKING), None)
    if control is not None:
        raise ConfigError(
            f"segment name {text!r} holds a control character or a line break "
            f"(U+{ord(control):04X})"
        )
    return text


def checked_new_name(text: str) -> str:
    """`checked_name`, and not digits only: ``audience --segment 2024`` reads digits as an
    id. (Only for a name being chosen: one chosen before this rule is still read.)"""
    if text.isascii() and text.isdigit():
        raise ConfigError(
            f"segment name {text!r} is digits only: `audience --segment {text}` would read it "
            "as a segment id; add a word (e.g. 'cohort 2024')"
        )
    return checked_name(text)


def read_chosen_names(client: RedisClient, keys: KeyLayout) -> dict[int, str]:
    """The names operators chose in this namespace: segment id -> name. A field that is not
    a segment id as ``model rename`` writes it (``3``, not ``03``) or a value that is not a
    name (a hand edit) is logged and left out."""
    chosen: dict[int, str] = {}
    for field, value in client.hgetall(keys.model_names).items():
        field_text = field.decode(errors="replace")
        try:
            if not (field_text.isascii() and field_text.isdigit()) or len(field_text) > 16:
                raise ConfigError("not a segment id")
            if str(int(field_text)) != field_text:
                raise ConfigError(f"not written as a segment id (that is {int(field_text)})")
            chosen[int(field_text)] = checked_name(value.decode())
        except (ConfigError, UnicodeDecodeError) as exc:
            log.warning("%s field %r: left out: %s", keys.model_names, field_text[:40], exc)
    return chosen


def rule_names(model: SegmentModel) -> list[str]:
    """The names the rules give ``model``'s segments, as the trainer's next publish would
    (its current names as the previous ones, so a suffix stays where the rules allow)."""
    centers = model.to_preprocessor().inverse_transform(np.asarray(model.centers))
    return name_segments(centers, model.feature_names, previous_names=model.names)[0]


@dataclass(frozen=True)
class Rename:
    """What `rename_segment` did."""

    segment_id: int
    name: str | None
    """The name chosen now; None: the segment has its rule's name."""
    before: SegmentModel | None
    """The current model the rename read (None: the segment is gone, only its entry was
    released)."""
    after: SegmentModel | None = None
    """The version published; None when nothing was."""

    def summary(self) -> str:
        """For the terminal: the version published and every name it changed."""
        if self.before is None:
            return f"segment {self.segment_id} is in no current model: its chosen name is released"
        if self.after is None:
            name = self.before.names[self.before.ids.index(self.segment_id)]
            how = "its rule's name" if self.name is None else "a chosen name"
            return (
                f"segment {self.segment_id} is called {name!r} ({how}) in "
                f"v{self.before.model_version} already: no version published"
            )
        old = dict(zip(self.before.ids, self.before.names, strict=True))
        changed = [
            f"  segment {i}: {old[i]!r} -> {name!r}"
            for i, name in zip(self.after.ids, self.after.names, strict=True)
            if old[i] != name
        ]
        how = "its rule's name" if self.name is None else "chosen, kept through refits"
        kept = self.after.names[self.after.ids.index(self.segment_id)]
        records = (
            "a user's record takes the new name at the user's next event or in the re-score "
            "pass this version begins"
            if changed
            else "records keep their names"
        )
        return "\n".join(
            [
                f"published model v{self.after.model_version}: v{self.before.model_version} "
                + ("with new names" if changed else "with the same names"),
                *changed,
                f"segment {self.segment_id} is {kept!r} ({how})",
                f"consumers use it within pipeline.model_poll_seconds; {records}",
            ]
        )


def rename_segment(store: ModelStore, segment_id: int, name: str | None) -> Rename:
    """Name segment ``segment_id`` ``name`` (None: its rule's name again) and publish the
    current model with it as the next version, with the names hash in the same transaction,
    only while the version read is current (else read again). Nothing is published when
    neither the names nor the hash would change."""
    for _ in range(_ATTEMPTS):
        current = store.load_current()
        if current is None:
            raise ConfigError(
                f"no model published yet in namespace {store.keys.namespace!r}: segments get "
                "ids at the trainer's first publish; rename one after it"
            )
        chosen = read_chosen_names(store.client, store.keys)
        if segment_id not in current.ids:
            if name is None and segment_id in chosen:  # a gone segment's entry
                store.client.hdel(store.keys.model_names, str(segment_id))
                return Rename(segment_id, None, None)
            raise ConfigError(
                f"model v{current.model_version} has no segment {segment_id}: its segments are "
                f"{sorted(current.ids)} (streamseg model show)"
            )
        # Entries the rename writes: its own, and gone segments' entries of the same name.
        changes: dict[int, str | None] = {segment_id: name}
        if name is None:
            # The rules' names, as the trainer gives them: a " (2)" another segment took
            # while this one held the chosen name goes with it.
            others = {i: n for i, n in chosen.items() if i != segment_id}
            names = with_chosen_names(rule_names(current), current.ids, others)
        else:
            holders = [i for i, n in chosen.items() if n == name and i != segment_id]
            if in_use := [i for i in holders if i in current.ids]:
                raise ConfigError(
                    f"segment {in_use[0]} is already called {name!r} (a name chosen with "
                    "model rename): names are unique within a model"
                )
            changes |= dict.fromkeys(holders)
            names = with_chosen_names(current.names, current.ids, {**chosen, segment_id: name})
        if names == current.names and all(chosen.get(i) == n for i, n in changes.items()):
            return Rename(segment_id, name, current)
        renamed = current.model_copy(
            update={"names": names, "metrics": _renamed_metrics(current)}
        ).revalidated()
        try:
            published = store.publish_next(
                renamed, base_version=current.model_version, chosen_names=changes
            )
        except ModelReplacedError:
            continue  # the trainer (or an operator) published meanwhile: rename that one
        return Rename(segment_id, name, current, published)
    raise ConfigError(
        f"other publishes kept coming first ({_ATTEMPTS} attempts): try the rename again"
    )


def _renamed_metrics(model: SegmentModel) -> TrainingMetrics:
    """The model's metrics with the time of this rename. An import's time stays: the
    centres are still the import's, and the model's age counts from it (`status`)."""
    extra = {**model.metrics.extra, RENAMED_AT_METRIC: float(round(time.time() * 1000))}
    return model.metrics.model_copy(update={"extra": extra})
