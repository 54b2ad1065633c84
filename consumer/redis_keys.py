"""The Redis key layout, in one place.

Every key starts with the namespace (``streamseg`` by default; a replay writes into another).
A user's keys carry the user's id as a Redis Cluster *hash tag*, so they share one slot::

    <ns>:{<user>}:state    binary float64 state vector (see model.features.STATE_FIELDS)
    <ns>:{<user>}:seg      JSON segment record, readable with `redis-cli GET`

``<user>`` is the user id with ``%``, ``{`` and ``}`` percent-encoded (``%25``, ``%7B``,
``%7D``), so any string is safe and no two ids share a key. For ``u-42`` the record is
``streamseg:{u-42}:seg``. Model keys share the tag ``{<ns>:model}`` so a publish can be one
MULTI transaction on a cluster too.
"""

from __future__ import annotations

from dataclasses import dataclass


def escape_user_id(user_id: str) -> str:
    """Percent-encode the three characters that could break or fake the hash tag."""
    return user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass(frozen=True)
class KeyLayout:
    """Key names of one namespace."""

    namespace: str

    def state(self, user_id: str) -> str:
        return f"{self.namespace}:{{{escape_user_id(user_id)}}}:state"

    def segment(self, user_id: str) -> str:
        return f"{self.namespace}:{{{escape_user_id(user_id)}}}:seg"

    @property
    def state_pattern(self) -> str:
        """SCAN pattern matching every user's state key of this namespace."""
        return f"{self.namespace}:{{*}}:state"

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
    def watermark(self) -> str:
        """Largest event time seen (epoch ms), kept by the consumers."""
        return f"{self.namespace}:watermark"
