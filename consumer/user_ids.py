"""User ids as the commands that take many read them: from stdin, one per line, in chunks."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

from consumer.event_mapping import LineTooLongError, bounded_lines

#: Longest line read as an id, in characters: an id is at most 256 (the event contract), so a
#: longer line is no id, and an endless one must not fill the memory.
MAX_ID_LINE = 4096


def is_utf8_text(user_id: str) -> bool:
    """Whether ``user_id`` is text an event can carry: ids read from the command line or
    stdin hold undecodable bytes as lone surrogates, which no UTF-8 key can."""
    try:
        user_id.encode()
    except UnicodeEncodeError:
        return False
    return True


def stdin_user_ids(size: int) -> Iterator[list[str]]:
    """Lines of stdin without their line ending (blank lines skipped), ``size`` at a time:
    one round trip per chunk, and a first answer before the input ends."""
    chunk: list[str] = []
    # A byte the locale's encoding cannot decode becomes a lone surrogate (named by the
    # caller, `is_utf8_text`), not a UnicodeDecodeError halfway through the input.
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="surrogateescape")
    try:
        for line in bounded_lines(sys.stdin, MAX_ID_LINE):
            user = line.rstrip("\r\n")
            if user:
                chunk.append(user)
            if len(chunk) == size:
                yield chunk
                chunk = []
    except LineTooLongError:
        if chunk:
            yield chunk  # the ids before it are answered first
        raise
    if chunk:
        yield chunk
