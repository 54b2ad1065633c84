"""The Redis key layout, in one place.

Every key starts with the namespace (``streamseg`` by default; a replay writes into another).
A user's keys carry the user's id as a Redis Cluster *hash tag*, so they share one slot::

    <ns>:{<user>}:state    binary float64 state vector (see model.features.STATE_FIELDS)
    <ns>:{<user>}:seg      JSON segment record, readable with `redis-cli GET`

``<user>`` is the user id with ``%``, ``{`` and ``}`` percent-encoded (``%25``, ``%7B``,
``%7D``), so any string is safe and no two ids share a key. For ``u-42`` the record is
``streamseg:{u-42}:seg``. Model keys share the tag ``{<ns>:model}`` so a publish can be one
MULTI transaction on a cluster too.

Keys outside every namespace (`PointerKeys`, root ``streamseg``) say which namespace is live::

    streamseg:live-namespace      string: the namespace lookups following the pointer read
    streamseg:previous-namespace  string: the one live before the last promote (for rollback)
    streamseg:namespaces          set: namespaces written by `streamseg replay` or `run`

``streamseg promote NAME`` changes the first two in one MULTI; ``SegmentLookup(client)``
(``namespace=None``) reads the pointer and the records in one Lua call. The pipeline
(``streamseg run``) writes its configured ``redis.namespace``, or with
``pipeline.follow_live_namespace`` the one the pointer names (see `consumer.pipeline`).

On a Redis Cluster (``redis.cluster = true``) the names are the same. What must be atomic
shares a slot: a user's ``state`` and ``seg`` (the user's tag), and the model keys with the
trainer lease (``{<ns>:model}``). The namespace-wide keys (``counters``, ``segment-sizes``,
``categories``, ``watermark``, ``training-samples``, ``consumers``) and the pointer keys are
each written with single-key commands, so they need no common slot (see
`consumer.state_store` and `consumer.namespaces` for the order of those writes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from consumer.exceptions import ConfigError

_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def escape_user_id(user_id: str) -> str:
    """Percent-encode the three characters that could break or fake the hash tag."""
    # Most ids have none of them: three substring scans are ~4x cheaper than translate.
    if "%" in user_id or "{" in user_id or "}" in user_id:
        return user_id.translate(_ESCAPES)
    return user_id


#: A namespace is 1-64 letters, digits, '_', '.', '-': no glob or hash-tag characters, so it
#: is safe inside SCAN patterns (``drop``) and never reaches into another namespace's keys.
NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class KeyLayout:
    """Key names of one namespace; raises `ConfigError` for an invalid namespace name."""

    namespace: str

    def __post_init__(self) -> None:
        if not NAMESPACE_PATTERN.match(self.namespace):
            raise ConfigError(
                f"invalid namespace {self.namespace!r}: "
                "must be 1-64 characters of letters, digits, '_', '.', '-'"
            )

    def state(self, user_id: str) -> str:
        return f"{self.namespace}:{{{escape_user_id(user_id)}}}:state"

    def segment(self, user_id: str) -> str:
        return f"{self.namespace}:{{{escape_user_id(user_id)}}}:seg"

    def state_and_segment(self, user_ids: Iterable[str]) -> list[tuple[str, str]]:
        """(`state`, `segment`) of each user, escaping each id once (the hot path)."""
        ns = self.namespace
        tags = [
            u if "%" not in u and "{" not in u and "}" not in u else u.translate(_ESCAPES)
            for u in user_ids
        ]
        return [(f"{ns}:{{{t}}}:state", f"{ns}:{{{t}}}:seg") for t in tags]

    @property
    def state_pattern(self) -> str:
        """SCAN pattern matching every user's state key of this namespace."""
        return f"{self.namespace}:{{*}}:state"

    @property
    def segment_pattern(self) -> str:
        """SCAN pattern matching every user's segment record key of this namespace."""
        return f"{self.namespace}:{{*}}:seg"

    def user_from_state_key(self, key: str) -> str:
        """The user id a state key belongs to (inverse of `state`)."""
        tag = key[len(self.namespace) + 2 : -len("}:state")]
        return tag.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")

    @property
    def _model(self) -> str:
        return f"{{{self.namespace}:model}}"

    @property
    def model_current(self) -> str:
        """JSON of the model in use."""
        return f"{self._model}:current"

    @property
    def model_version(self) -> str:
        """Integer version of the model in use: what consumers poll."""
        return f"{self._model}:version"

    def model_history(self, version: int) -> str:
        return f"{self._model}:v:{version}"

    @property
    def model_versions(self) -> str:
        """Sorted set of published versions, scored by version."""
        return f"{self._model}:versions"

    @property
    def model_names(self) -> str:
        """Hash of segment names an operator chose: segment id -> name (`model rename`)."""
        return f"{self._model}:names"

    @property
    def refit_request(self) -> str:
        """Present while a ``streamseg model refit`` waits: the active trainer refits at its
        next step (`consumer.refit_request`)."""
        return f"{self._model}:refit-request"

    @property
    def refit_requests(self) -> str:
        """Counter numbering the refit requests (`consumer.refit_request`)."""
        return f"{self._model}:refit-requests"

    @property
    def refit_result(self) -> str:
        """The trainer's answer to the last refit request it answered (JSON)."""
        return f"{self._model}:refit-result"

    @property
    def trainer_lease(self) -> str:
        return f"{self._model}:trainer-lease"

    @property
    def training_samples(self) -> str:
        """List of recent feature-vector blobs (float64 rows) pushed by the pipeline."""
        return f"{self.namespace}:training-samples"

    @property
    def categories(self) -> str:
        """Hash: category code (decimal) -> category name."""
        return f"{self.namespace}:categories"

    @property
    def counters(self) -> str:
        """Hash of running counters: records consumed, applied, ignored, dead-lettered, ..."""
        return f"{self.namespace}:counters"

    @property
    def segment_sizes(self) -> str:
        """Hash: segment id -> number of users whose record names it."""
        return f"{self.namespace}:segment-sizes"

    @property
    def consumers(self) -> str:
        """Hash: consumer member id -> JSON heartbeat (last batch time, partitions, host)."""
        return f"{self.namespace}:consumers"

    @property
    def feature_settings(self) -> str:
        """JSON of the feature settings the consumers compute with (`consumer.feature_settings`)."""
        return f"{self.namespace}:feature-settings"

    @property
    def watermark(self) -> str:
        """The latest event time applied (epoch ms; sorted set, member ``max``), kept by the
        consumers."""
        return f"{self.namespace}:watermark"

    @property
    def applied_offsets(self) -> str:
        """Hash: ``<topic>:<partition>`` -> next offset to apply; every event before it is
        in this namespace's state. Where a pipeline following the live pointer starts."""
        return f"{self.namespace}:applied-offsets"

    @property
    def partition_owners(self) -> str:
        """Hash: ``<topic>:<partition>`` -> fencing token of the partition's latest owner,
        raised by each consumer that starts writing the partition in this namespace."""
        return f"{self.namespace}:partition-owners"


@dataclass(frozen=True)
class PointerKeys:
    """Keys naming the live namespace, outside every namespace (root ``streamseg``)."""

    root: str = "streamseg"

    @property
    def live(self) -> str:
        """String: name of the live namespace (unset = the configured ``redis.namespace``)."""
        return f"{self.root}:live-namespace"

    @property
    def previous(self) -> str:
        """String: the namespace that was live before the last promote."""
        return f"{self.root}:previous-namespace"

    @property
    def registry(self) -> str:
        """Set of namespace names written by replays."""
        return f"{self.root}:namespaces"


def namespace_text(value: bytes | str | None) -> str | None:
    """A namespace name or key name as Redis returns it (pointer values, registry members,
    SCAN results), as text (None: unset)."""
    return value.decode() if isinstance(value, bytes) else value
