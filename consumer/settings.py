"""All configuration, in one place: pydantic-settings classes read from a file and the environment.

Environment variables are ``STREAMSEG_<SECTION>__<FIELD>``, for example
``STREAMSEG_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
``STREAMSEG_FEATURES__VIEWS_HALF_LIFE_DAYS=7``.
A settings file (TOML or JSON, ``--config``) gives the same fields nested by section; the
environment wins over the file. A wrong setting stops start-up with a message naming it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_origin
from urllib.parse import urlsplit

import redis
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection, parse_url
from redis.exceptions import RedisClusterException

from consumer.exceptions import ConfigError
from consumer.redis_keys import NAMESPACE_PATTERN
from model.events import DEFAULT_ALIASES, resolve_type_map
from model.features import DEDUPE_SLOTS, FeatureConfig

#: What `RedisSettings.connect` returns: one server, or a cluster client when
#: ``redis.cluster`` is set. Both speak the same single-key commands.
RedisClient: TypeAlias = redis.Redis | RedisCluster

#: Every section refuses names it does not know: a misspelt setting is an error, not ignored.
#: No NaN or infinity either: ``inf`` seconds would silently mean "never".
_SECTION = ConfigDict(extra="forbid", allow_inf_nan=False)
_PREFIX = "STREAMSEG_"
log = logging.getLogger(__name__)

#: Variables with the settings' prefix that are not settings (the development stack's cache).
_OTHER_VARIABLES = frozenset({"STREAMSEG_CACHE_DIR"})
#: What a Redis that does not answer raises: redis-py's errors, and the cluster client's own
#: (a `RedisClusterException` is not a `redis.RedisError`).
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)
#: How a password with reserved characters goes into ``redis.url``: redis-py decodes the
#: user name and password of the URL (``urllib.parse.unquote``).
PERCENT_ENCODINGS = "@ as %40, / as %2F, # as %23, ? as %3F, : as %3A, % as %25"
PASSWORD_ENCODING_HINT = (
    f"percent-encode reserved characters in the user name and password ({PERCENT_ENCODINGS}), "
    "which redis-py decodes"
)


class RedisCredentialsError(redis.exceptions.AuthenticationError):
    """Redis refused the credentials of a connection that `RedisSettings.connect` made, or
    wanted some and got none. redis-py's own error names no server; this one keeps its
    ``address`` (``host:port``, or the socket's path) for the message that
    `consumer.failures.describe_failure` builds. Never the password."""

    def __init__(self, cause: redis.exceptions.AuthenticationError, address: str) -> None:
        super().__init__(*cause.args)
        self.status_code: str | None = getattr(cause, "status_code", None)  # NOAUTH, WRONGPASS
        self.address = address


def _handshake_naming_the_server(connection: AbstractConnection) -> None:
    """redis-py's handshake of a new connection (HELLO or AUTH, SELECT, ...), a refusal
    raised as `RedisCredentialsError`."""
    try:
        connection.on_connect()
    except redis.exceptions.AuthenticationError as exc:
        path = getattr(connection, "path", None)
        host, port = getattr(connection, "host", "?"), getattr(connection, "port", "?")
        address = path or (f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}")
        raise RedisCredentialsError(exc, str(address)) from None


def _holds_credentials(url: str) -> bool:
    """True when a Redis URL may hold a password: userinfo (any '@') or a query option."""
    return "@" in url or re.search(r"(?i)[?&](user(name)?|password)=", url) is not None


def _userinfo_cut_short(url: str) -> bool:
    """True when an '@' follows the host of a ``redis://`` or ``rediss://`` URL.

    The userinfo ends at the last '@' before the first '/', '?' or '#'; an '@' after that
    is a password that one of these characters cut short. redis-py would connect without
    the rest of it, or to a host or database made of its pieces.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return False  # not a URL at all: refused as such
    after_host = f"{parts.path}{parts.query}{parts.fragment}"
    return parts.scheme in ("redis", "rediss") and "@" in after_host


# One entry of kafka.bootstrap_servers: [protocol://]host[:port], host a name, an IPv4
# address or a bracketed IPv6 address (librdkafka's default port is 9092).
_BROKER = re.compile(
    r"(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s:/,\[\]]+)(?::(?P<port>\d{1,5}))?"
)

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


class KafkaSettings(BaseModel):
    """Where events come from and where segment changes and dead letters go."""

    model_config = _SECTION

    bootstrap_servers: str = "localhost:9092"
    events_topic: str = "events"
    segments_topic: str = "segments"
    dead_letter_topic: str = "events.dlq"
    group_id: str = "streamseg"
    #: A member silent this long is dropped and its partitions reassigned (milliseconds).
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    #: Static membership: a restarted process with the same id gets its partitions back
    #: at once instead of after the session timeout. Unique per process.
    group_instance_id: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    #: Extra librdkafka properties passed through verbatim (e.g. {"fetch.max.bytes": "52428800"});
    #: numbers and booleans (as a TOML file writes them) are passed as librdkafka's text.
    extra: dict[str, str] = Field(default_factory=dict)
    #: Extra librdkafka properties for the consumers only (fetch.*, max.poll.interval.ms...):
    #: in ``extra`` the producers warned at every start that they ignore them.
    consumer_extra: dict[str, str] = Field(default_factory=dict)
    #: Extra librdkafka properties for the producers only (linger.ms, batch.size...).
    producer_extra: dict[str, str] = Field(default_factory=dict)

    @field_validator("extra", "consumer_extra", "producer_extra", mode="before")
    @classmethod
    def _extra_as_text(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        return {k: _librdkafka_text(v) for k, v in value.items()}

    @field_validator("consumer_extra")
    @classmethod
    def _consumer_keeps_its_guarantees(cls, value: dict[str, str]) -> dict[str, str]:
        return _without_guarantees(value, CONSUMER_GUARANTEES, "consumer_extra")

    @field_validator("producer_extra")
    @classmethod
    def _producer_keeps_its_guarantees(cls, value: dict[str, str]) -> dict[str, str]:
        return _without_guarantees(value, PRODUCER_GUARANTEES, "producer_extra")

    @field_validator("events_topic", "segments_topic", "dead_letter_topic")
    @classmethod
    def _valid_topic(cls, value: str) -> str:
        # Kafka's own rule (Topic.validate); refused by the broker only when the topic is
        # first created, with an error that named no setting.
        if not _TOPIC.fullmatch(value) or value in (".", ".."):
            raise ValueError(
                f"{value!r} is not a Kafka topic name: 1-249 characters of letters, digits, "
                "'.', '_' and '-'"
            )
        return value

    @field_validator("group_id", "group_instance_id")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        # An empty group id aborted the process inside librdkafka (an assertion, no message).
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("ssl_ca_location")
    @classmethod
    def _readable_ca(cls, value: str | None) -> str | None:
        # librdkafka's own message for a missing file is an OpenSSL "BIO lib" error. "probe"
        # asks librdkafka to look in the usual system places; a directory of certificates
        # is allowed too.
        if value and value != "probe" and not Path(value).exists():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _valid_servers(cls, value: str) -> str:
        # Checked here: librdkafka takes an empty or malformed list and only reports a
        # transport failure (and an unparsable port as port 0) at the first request.
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("no broker given: host:port[,host:port...]")
        for server in servers:
            match = _BROKER.fullmatch(server)
            if match is None or not 1 <= int(match.group("port") or 9092) <= 65535:
                raise ValueError(f"{server!r} is not host:port (port 1-65535)")
        return value

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties shared by every client (consumer, producer, admin)."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        config.update(self.extra)
        return config


def _librdkafka_text(value: object) -> object:
    """A property value as librdkafka reads it: ``true``/``false`` for booleans, the digits of
    numbers; anything else as it is (validated as text by the field)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


#: librdkafka properties the exactly-once rule rests on (offsets stored only after the Redis
#: write, committed by the group; the group and its protocol), not for kafka.consumer_extra.
CONSUMER_GUARANTEES = frozenset(
    {
        "group.id",
        "group.instance.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "partition.assignment.strategy",
    }
)
#: And the producers' (no duplicated or reordered message), not for kafka.producer_extra.
PRODUCER_GUARANTEES = frozenset({"enable.idempotence"})


def _without_guarantees(
    value: dict[str, str], guarantees: frozenset[str], setting: str
) -> dict[str, str]:
    taken = sorted(k for k in value if k in guarantees)
    if taken:
        raise ValueError(
            f"{', '.join(taken)} cannot be changed in kafka.{setting}: streamseg's delivery "
            "guarantees rest on them (kafka.group_id and kafka.group_instance_id are settings)"
        )
    return value


class RedisSettings(BaseModel):
    """Where per-user state, segment records and models live."""

    model_config = _SECTION

    #: ``redis://[user:password@]host:port/db``, or ``rediss://...`` for TLS.
    url: SecretStr = SecretStr("redis://localhost:6379/0")
    #: Key prefix of every key; a replay writes into another namespace (letters, digits, _.-).
    namespace: str = "streamseg"
    #: Expire a user's keys after this many seconds without events (0 = never).
    user_ttl_seconds: int = Field(default=0, ge=0)
    #: A command without an answer for this long fails (and is retried): a hung server
    #: pauses the pipeline instead of blocking it forever (seconds).
    socket_timeout_seconds: float = Field(default=5.0, gt=0)
    #: TLS (``rediss://`` URLs only): PEM file of the CA certificate(s) to verify the server
    #: with; None = the system's trust store. The server's certificate must name the URL's host.
    tls_ca_file: str | None = None
    #: Mutual TLS: PEM client certificate and its (unencrypted) key, for a server with
    #: ``tls-auth-clients yes``. Both or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: The URL names one node of a Redis Cluster (any node: the client discovers the others
    #: and follows slot moves). Per-user keys share a hash slot; see `consumer.state_store`.
    cluster: bool = False

    def connect(self, timeout_seconds: float | None = None) -> RedisClient:
        """A client for this Redis; the URL (with any password) never reaches a log.
        ``timeout_seconds`` replaces ``socket_timeout_seconds`` (a health probe's 1 s)."""
        timeout = self.socket_timeout_seconds if timeout_seconds is None else timeout_seconds
        tls: dict[str, Any] = {}  # Any: redis-py's stubs type each option differently
        if self.tls_ca_file:
            tls["ssl_ca_certs"] = self.tls_ca_file
        if self.tls_cert_file and self.tls_key_file:
            tls["ssl_certfile"] = self.tls_cert_file
            tls["ssl_keyfile"] = self.tls_key_file
        if self.cluster:
            # The cluster client runs its own handshake before any hook: its refusals name
            # no server.
            return RedisCluster.from_url(
                self.url.get_secret_value(),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                **tls,
            )
        return redis.Redis.from_url(
            self.url.get_secret_value(),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            redis_connect_func=_handshake_naming_the_server,
            **tls,
        )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        # Nothing of a URL that holds credentials is repeated: a '/', '?' or '#' left
        # unencoded in its password moves where the host, path or query seem to start, so any
        # part of it may be a piece of the password.
        secret = _holds_credentials(url)
        hidden = (
            f"(the value is not shown: it holds a password; {PASSWORD_ENCODING_HINT})"
            if secret
            else "(the value is not shown: it may hold a password)"
        )
        if _userinfo_cut_short(url):
            raise ValueError(
                "an '@' after the host: a '/', '?' or '#' in the user name or password (or an "
                f"'@' in a query value) is not percent-encoded; {PASSWORD_ENCODING_HINT} (the "
                "value is not shown: it holds a password)"
            )
        try:
            parts = urlsplit(url)
            parse_url(url)
        except ValueError:
            raise ValueError(
                "not a Redis URL: redis://[user:password@]host:port/db, rediss://... (TLS) "
                f"or unix:///path/to/socket {hidden}"
            ) from None
        if parts.scheme in ("redis", "rediss") and not re.fullmatch(r"/?(\d+)?", parts.path):
            # redis-py reads a path that is not a number as database 0, silently.
            raise ValueError(
                "the database after the host must be a number, as in redis://host:port/2 "
                + (hidden if secret else f"(got {parts.path!r})")
            )
        try:
            # Query options become connection arguments: an unknown one failed only at the
            # first command, with a TypeError. Making a connection object does not connect.
            redis.Redis.from_url(url).connection_pool.make_connection()
        except TypeError as exc:
            option = re.search(r"argument '(\w+)'", str(exc))
            name = "" if secret or option is None else f": {option.group(1)}"
            raise ValueError(
                f"the URL's query has an option redis-py does not know{name} {hidden}"
            ) from None
        return value

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        if not NAMESPACE_PATTERN.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        if value and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _tls_needs_rediss(self) -> RedisSettings:
        # Checked here, not at the first command: redis-py would pass TLS options to a plain
        # connection and fail with a TypeError far from the setting that caused it.
        names = ("tls_ca_file", "tls_cert_file", "tls_key_file")
        given = [name for name in names if getattr(self, name)]
        if given and not self.url.get_secret_value().startswith("rediss://"):
            raise ValueError(f"{' and '.join(given)} set, but url is not rediss:// (TLS)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together (mutual TLS)")
        return self


class PipelineSettings(BaseModel):
    """How the batch loop consumes and writes."""

    model_config = _SECTION

    #: Most records in one batch. A batch is what was fetched while the previous one ran, so
    #: batches stay small at low rates (low latency) and grow under load (high throughput).
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    #: Consumer processes ``streamseg run`` starts in the group (``--processes``). A process
    #: applies one batch at a time and waits on Redis and Kafka part of it; more processes
    #: fill those waits and the cores. More processes than partitions sit idle.
    processes: int = Field(default=1, ge=1, le=64)
    #: How long an idle consumer waits for a record before it does its periodic work.
    batch_timeout_ms: int = Field(default=50, ge=1, le=10_000)
    max_payload_bytes: int = Field(default=64 * 1024, ge=64)
    #: Events older than the watermark by more than this still apply; "now" lags by it.
    allowed_lateness_seconds: float = Field(default=3600.0, ge=0)
    #: Dead-letter an event stamped more than this ahead of its Kafka record's timestamp
    #: (``ts_out_of_range``): a clock years ahead would move the watermark for good (0 = off).
    max_event_ahead_seconds: float = Field(default=86_400.0, ge=0)
    #: Re-score idle users against the watermark this often (event-time seconds; 0 = off).
    rescore_interval_seconds: float = Field(default=86_400.0, ge=0)
    #: ... and at most once per this many wall-clock seconds (replays move event time fast).
    rescore_min_wall_seconds: float = Field(default=60.0, ge=0)
    #: Extra type names mapped onto the canonical types (view, cart, purchase, ...).
    type_aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ALIASES))
    #: Keep at most this many recent feature vectors (rows) for the trainer.
    training_buffer_rows: int = Field(default=200_000, ge=0)
    #: The trainer gets about one row per user per period of event time (periods start at
    #: multiples of this since the epoch; UTC days by default): at the user's first event of
    #: a period, or from the period's first re-score pass when the user has none in it yet.
    training_period_seconds: float = Field(default=86_400.0, gt=0)
    #: A user keeps their segment unless the new centre is closer by this relative margin.
    hysteresis_margin: float = Field(default=0.0, ge=0, lt=1)
    #: Check for a newly published model this often (seconds).
    model_poll_seconds: float = Field(default=0.5, gt=0)
    #: Skip an event whose event_id is among its user's last N applied events (0 = off; the
    #: state keeps at most `model.features.DEDUPE_SLOTS` ids per user).
    dedupe_window_events: int = Field(default=DEDUPE_SLOTS, ge=0, le=DEDUPE_SLOTS)
    #: Write into the namespace the live pointer names (``streamseg promote``), switching
    #: between batches when it changes; off = always write ``redis.namespace``.
    follow_live_namespace: bool = False

    @field_validator("type_aliases")
    @classmethod
    def _aliases_target_canonical_types(cls, value: dict[str, str]) -> dict[str, str]:
        resolve_type_map(value)
        return value


class TrainerSettings(BaseModel):
    """When and how the trainer updates the model."""

    model_config = _SECTION

    n_clusters: int = Field(default=6, ge=2, le=64)
    #: Bootstrap once the buffer holds this many rows (then fit each user's newest: of at
    #: least max(10 x n_clusters, 100) users).
    bootstrap_rows: int = Field(default=2000, ge=100)
    #: Update once this many rows arrived since the last (then fit each user's newest of them).
    update_rows: int = Field(default=5000, ge=100)
    update_interval_seconds: float = Field(default=10.0, gt=0)
    #: Old weight halves every this many updates (Spark's ``timeUnit="batches"``).
    half_life_batches: float = Field(default=20.0, gt=0)
    #: When set, forgetting counts training periods instead of updates (``half_life_batches``
    #: is then ignored): old weight halves every this many periods, whatever the shop's size
    #: or the update cadence (half-life in rows = users x periods).
    half_life_periods: float | None = Field(default=None, gt=0)
    #: Refit the scaling when the scaling fitted on an update's rows would move a centre this far
    #: (in current scale units) or change a scale by more than the factor 1 + x.
    rescale_tolerance: float = Field(default=0.25, gt=0)
    #: Refits use the newest rows of about this many training periods (users x periods rows,
    #: at least ``bootstrap_rows``): the users as they are now, not the buffer's whole past.
    refit_periods: float = Field(default=2.0, gt=0)
    #: Every this many updates (0 = never), fit the refit rows (at most 20,000 of them) as a
    #: refit would (k-means++ with 10 restarts, and Lloyd from the current centres); when that
    #: beats the current centres' inertia there by more than ``refit_min_gain`` (a share), refit.
    refit_check_updates: int = Field(default=1, ge=0)
    refit_min_gain: float = Field(default=0.02, gt=0, lt=1)
    #: A centre further than this (scaled units) from every previous one gets a new id.
    new_id_distance: float = Field(default=1.5, gt=0)
    #: Keep the newest this many published model versions in Redis (``model list``,
    #: ``rollback``); each publish deletes the ones that fall out, in the same transaction.
    model_history_versions: int = Field(default=1000, ge=2)
    #: Random seed of k-means++ (scikit-learn takes 0..2^32-1).
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    lease_seconds: float = Field(default=10.0, gt=1)
    #: A step still running after this long is taken as hung: its lease is no longer renewed,
    #: so a standby trainer takes over (the step's publish is then refused).
    max_step_seconds: float = Field(default=600.0, gt=0)


#: Default port of /metrics, /healthz and /readyz per command (``--processes N``: PORT..PORT+N-1).
#: Train sits below run's range (``--processes N`` takes 9108..9108+N-1), so that both on one
#: host never claim the same port.
DEFAULT_METRICS_PORTS: dict[str, int] = {"run": 9108, "train": 9107}


class ObservabilitySettings(BaseModel):
    """Metrics, health endpoints and the consumer heartbeat."""

    model_config = _SECTION

    #: Port of /metrics, /healthz and /readyz; None = the command's default
    #: (`DEFAULT_METRICS_PORTS`: run 9108, train 9107); 0 = no server.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    #: librdkafka statistics (consumer lag) and the `<ns>:consumers` heartbeat this often
    #: (seconds).
    heartbeat_seconds: float = Field(default=5.0, gt=0)


class Settings(BaseSettings):
    """Every setting of streamseg, by section."""

    model_config = SettingsConfigDict(env_prefix=_PREFIX, env_nested_delimiter="__", extra="forbid")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first so that it wins over values read from a settings file.
        return env_settings, init_settings


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``config_file`` (TOML or JSON), the environment and ``overrides``.

    Raises `ConfigError` naming every bad setting, e.g. ``pipeline.batch_size: must be >= 1``.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        data = _read_settings_file(config_file)
    _check_environment(os.environ)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {_describe(exc)}") from None
    except SettingsError as exc:  # a variable pydantic-settings could not parse as JSON
        raise ConfigError(f"invalid settings: {_unparsable(os.environ) or exc}") from None
    # Command-line overrides win over the environment and the file.
    for dotted, value in overrides.items():
        section_name, _, name = dotted.partition(".")
        section = getattr(settings, section_name)
        try:
            updated = type(section).model_validate({**section.model_dump(), name: value})
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {_describe(exc, section_name)}") from None
        setattr(settings, section_name, updated)
    return settings


# A settings file is a few hundred bytes; anything near this is not one.
_MAX_SETTINGS_CHARS = 1_000_000


def _read_settings_file(path: Path) -> dict[str, Any]:
    """The sections of a TOML (or, by its ``.json`` suffix, JSON) settings file."""
    if path.suffix in (".yaml", ".yml"):
        raise ConfigError(f"settings file {path}: YAML is not read; write TOML or JSON")
    try:
        with path.open(encoding="utf-8") as file:
            text = file.read(_MAX_SETTINGS_CHARS + 1)  # `--config /dev/zero` must not hang
        if len(text) > _MAX_SETTINGS_CHARS:
            raise ValueError(f"longer than {_MAX_SETTINGS_CHARS:,} characters")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"settings file {path}: the top level must be an object of sections "
            f"(kafka, redis, ...), not a {type(data).__name__}"
        )
    return data


def _check_environment(environ: Mapping[str, str]) -> None:
    """Refuse variables that look like settings but name none.

    ``STREAMSEG_<SECTION>__<FIELD>`` with an unknown section, or a known section followed by a
    single underscore, would be ignored by the settings loader (an unknown field of a known
    section is refused by the section itself). Other ``STREAMSEG_`` variables are left alone.
    """
    sections = {name.upper() for name in Settings.model_fields}
    for variable in environ:
        name = variable.upper()
        if not name.startswith(_PREFIX) or name in _OTHER_VARIABLES:
            continue
        rest = name[len(_PREFIX) :]
        section, nested, _ = rest.partition("__")
        if nested:
            if section not in sections:
                raise ConfigError(
                    f"{variable}: no settings section {section.lower()!r} "
                    f"(sections: {', '.join(sorted(s.lower() for s in sections))})"
                )
            continue
        known = next((s for s in sections if rest.startswith(s + "_")), None)
        if known is not None:
            meant = f"{_PREFIX}{known}__{rest[len(known) + 1 :]}"
            raise ConfigError(
                f"{variable}: not a setting; did you mean {meant} "
                "(two underscores between section and field)?"
            )
        # A field's name without its section (STREAMSEG_NAMESPACE): maybe the user's own
        # variable, so a warning, not a refusal.
        owners = [
            section
            for section, info in Settings.model_fields.items()
            if rest.lower() in getattr(info.annotation, "model_fields", {})
        ]
        if owners:
            meant = " or ".join(f"{_PREFIX}{o.upper()}__{rest}" for o in owners)
            log.warning("%s is not a setting and is ignored: did you mean %s?", variable, meant)


def _unparsable(environ: Mapping[str, str]) -> str | None:
    """Name the variable whose value should be JSON but is not: a whole section
    (``STREAMSEG_KAFKA``) or a dict or list setting (``STREAMSEG_KAFKA__EXTRA``)."""
    for variable, value in environ.items():
        if not variable.upper().startswith(_PREFIX):
            continue
        section, _, field = variable[len(_PREFIX) :].lower().partition("__")
        section_info = Settings.model_fields.get(section)
        if section_info is None:
            continue
        target = f"the {section} section"
        if field:
            info = getattr(section_info.annotation, "model_fields", {}).get(field)
            if info is None or get_origin(info.annotation) not in (dict, list):
                continue
            target = f"{section}.{field}"
        try:
            json.loads(value)
        except ValueError:
            return f"{variable}: not valid JSON ({target} is given as JSON)"
    return None


def _describe(exc: ValidationError, prefix: str = "") -> str:
    return "; ".join(
        ".".join([prefix, *map(str, err["loc"])] if prefix else map(str, err["loc"]))
        + f": {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)
    )
