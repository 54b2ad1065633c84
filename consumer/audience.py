"""``streamseg audience``: the segment records of every user, or of the users of some
segments or tiers, as JSON lines: the bulk export a CDP, a campaign tool or a warehouse loads.

A SCAN of the namespace's record keys (every master on a Redis Cluster), read 1,000 keys per
round trip, each record written as stored. It is no point-in-time snapshot: a user the
pipeline moves meanwhile is written as found, and SCAN may return a key twice when Redis
resizes its table during the scan (dedupe on ``user_id`` where that matters).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from consumer.exceptions import ConfigError
from consumer.model_store import ModelStore
from consumer.namespaces import live_namespace
from consumer.redis_keys import KeyLayout
from consumer.settings import RedisClient, Settings
from consumer.state_store import StateStore, read_values
from consumer.unknown_namespace import refuse_if_nothing_written

log = logging.getLogger(__name__)

#: Record keys per read.
_CHUNK = 1000


def record_keys(client: RedisClient, keys: KeyLayout) -> Iterator[list[str]]:
    """The namespace's record keys, in chunks of at most `_CHUNK`."""
    chunk: list[str] = []
    for key in client.scan_iter(match=keys.segment_pattern, count=_CHUNK):
        chunk.append(key.decode() if isinstance(key, bytes) else key)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def wanted(record: bytes, segments: set[int], tiers: set[int]) -> bool:
    """Whether a stored record belongs to the audience (every record without a filter)."""
    if not segments and not tiers:
        return True
    try:
        fields = orjson.loads(record)
    except orjson.JSONDecodeError:
        return False  # not a record of this service
    if not isinstance(fields, dict):
        return False
    segment, tier = fields.get("segment_id"), fields.get("tier")
    return (not segments or (isinstance(segment, int) and segment in segments)) and (
        not tiers or (isinstance(tier, int) and tier in tiers)
    )


def audience_command(args: argparse.Namespace, settings: Settings) -> int:
    """Write the records as JSON lines on stdout; a summary on stderr."""
    client = settings.redis.connect()
    configured = settings.redis.namespace
    namespace = live_namespace(client, configured) if args.live else configured
    keys = KeyLayout(namespace)
    sizes = StateStore(client, keys).read_segment_sizes()
    segments = segment_ids(args.segment or [], ModelStore(client, keys), sizes)
    tiers = set(args.tier or [])
    expected = sum(sizes.values())
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    scanned = written = 0
    out = sys.stdout.buffer
    with _bar(show) as bar:
        task = bar.add_task("audience", total=expected or None) if bar is not None else None
        for chunk in record_keys(client, keys):
            records = [r for r in read_values(client, chunk) if r is not None]
            lines = [r for r in records if wanted(r, segments, tiers)]
            if lines:
                out.write(b"\n".join(lines) + b"\n")
                out.flush()
            scanned += len(chunk)
            written += len(lines)
            if bar is not None and task is not None:
                bar.update(task, completed=scanned)
    if not scanned:
        refuse_if_nothing_written(client, namespace)  # a misspelt namespace?
    chosen = _filters(segments, tiers)
    print(
        f"namespace {namespace}: {written:,} records written of {scanned:,} users{chosen}",
        file=sys.stderr,
    )
    return 0


def segment_ids(asked: Sequence[str], models: ModelStore, sizes: Mapping[int, int]) -> set[int]:
    """The segment ids ``--segment`` names: an id as it is, a name as the current model
    gives it (`streamseg model show`; names chosen with ``model rename`` included). An id
    in no model and held by no user (``sizes``) is said, not refused."""
    names = [a for a in asked if not (a.isascii() and a.isdigit())]
    ids = {int(a) for a in asked if a not in names}
    if not asked:
        return ids
    model = models.load_current()
    by_name = dict(zip(model.names, model.ids, strict=True)) if model is not None else {}
    for i in sorted(ids - set(by_name.values()) - {s for s, n in sizes.items() if n > 0}):
        # Not an error: a record may still name a segment the sizes no longer count.
        log.warning("--segment %d: no such segment in the current model, and no user holds it", i)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(f"{i} {n!r}" for n, i in by_name.items()) or "none: no model yet"
        raise ConfigError(
            f"--segment {unknown[0]!r}: no segment of the current model has that name "
            f"(segments: {known})"
        )
    return ids | {by_name[n] for n in names}


def _filters(segments: set[int], tiers: set[int]) -> str:
    said = [f"segment {', '.join(map(str, sorted(segments)))}"] if segments else []
    said += [f"tier {', '.join(map(str, sorted(tiers)))}"] if tiers else []
    return f" ({' and '.join(said)})" if said else ""


def _bar(enabled: bool) -> Progress | contextlib.nullcontext[None]:
    """Users read of those the segment sizes count (cold-start users aside), and the time
    left at the recent pace."""
    if not enabled:
        return contextlib.nullcontext()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        refresh_per_second=4,
    )
