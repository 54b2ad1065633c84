"""Category names and the 52-bit codes that states hold, for one pipeline.

A state keeps a few category slots as codes (`model.features.category_code`); segment records
name them. The names live in ``<ns>:categories`` (code -> name), written with a batch only for
codes a user's slots still hold, and read back for codes this process has not seen. Every
cache here is bounded: a producer that invents a category per event costs memory up to
`CACHE_LIMIT` entries per cache, then the cache starts again (hashing or registering a name
twice is harmless).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from consumer.settings import RedisClient
from model.features import CATEGORY_CODES, category_codes

#: Entries kept in each cache before it is emptied.
CACHE_LIMIT = 100_000


class CategoryNames:
    """Name -> code, code -> name, and the codes already registered in this namespace."""

    def __init__(self) -> None:
        self._code_of: dict[str, float] = {}
        self._name_of: dict[float, str] = {}
        self._registered: set[float] = set()

    def codes(self, names: Sequence[str | None]) -> np.ndarray:
        """Codes of a column of category names (NaN for None)."""
        if len(self._code_of) > CACHE_LIMIT:
            self._code_of.clear()
        return category_codes(names, self._code_of)

    def to_register(self, names: Sequence[str | None], states: np.ndarray) -> dict[float, str]:
        """Code -> name of the categories among ``names`` (a batch's, coded by `codes` just
        before) that ``states`` hold and this namespace may not know yet.

        Only names a user's category slots still hold: a producer inventing a category per
        event adds at most the slot count of names per user and batch, not one per event.
        """
        in_batch = {self._code_of[n]: n for n in set(names) if n is not None}
        if len(self._name_of) > CACHE_LIMIT:
            self._name_of.clear()
        self._name_of.update(in_batch)
        held = states[:, CATEGORY_CODES]
        held_codes = set(np.unique(held[~np.isnan(held)]).tolist())
        if len(self._registered) > CACHE_LIMIT:
            self._registered.clear()
        return {c: n for c, n in in_batch.items() if c in held_codes and c not in self._registered}

    def mark_registered(self, codes: Iterable[float]) -> None:
        """``codes`` are in the namespace's categories hash now (their write went through)."""
        self._registered.update(codes)

    def forget_registered(self) -> None:
        """Another namespace: its categories hash knows none of ours yet."""
        self._registered = set()

    def names(self, states: np.ndarray, client: RedisClient, key: str) -> dict[float, str]:
        """Code -> name for every category code in ``states``; codes this process has not
        seen are read from the categories hash ``key``."""
        names = self._name_of
        codes = np.unique(states[:, CATEGORY_CODES])
        unknown = [c for c in codes.tolist() if c == c and c not in names]
        if unknown:
            found = client.hmget(key, [repr(int(c)) for c in unknown])
            names.update({c: v.decode() for c, v in zip(unknown, found, strict=True) if v})
        return names
