"""Settings: a wrong or misspelt setting stops start-up with a message naming it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from consumer.exceptions import ConfigError
from consumer.settings import load_settings
from devstack.redis_server import RedisServer


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("STREAMSEG_"):
            monkeypatch.delenv(name)


def refused(message: str, config_file: Path | None = None) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file)
    assert message in str(caught.value)


def test_the_environment_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "streamseg.toml"
    config.write_text("[trainer]\nn_clusters = 5\nupdate_rows = 300\n")
    monkeypatch.setenv("STREAMSEG_TRAINER__N_CLUSTERS", "7")
    settings = load_settings(config)
    assert (settings.trainer.n_clusters, settings.trainer.update_rows) == (7, 300)


def test_kafka_extra_takes_numbers_and_booleans_as_a_toml_file_writes_them(
    tmp_path: Path,
) -> None:
    """librdkafka takes text; `fetch.max.bytes = 1048576` was refused as not a string."""
    config = tmp_path / "streamseg.toml"
    config.write_text(
        '[kafka.extra]\n"fetch.max.bytes" = 1048576\n"enable.idempotence" = true\n'
        '"socket.timeout.ms" = "60000"\n'
    )
    extra = load_settings(config).kafka.extra
    assert extra == {
        "fetch.max.bytes": "1048576",
        "enable.idempotence": "true",
        "socket.timeout.ms": "60000",
    }


def test_a_misspelt_field_is_refused_in_a_file_and_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "streamseg.toml"
    config.write_text("[features]\nview_half_life_days = 7\n")
    refused("features.view_half_life_days: Extra inputs are not permitted", config)
    monkeypatch.setenv("STREAMSEG_TRAINER__N_CLUSTER", "5")
    refused("trainer.n_cluster: Extra inputs are not permitted")


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            "STREAMSEG_TRAINR__N_CLUSTERS",
            "STREAMSEG_TRAINR__N_CLUSTERS: no settings section 'trainr'",
        ),
        ("STREAMSEG_TRAINER_N_CLUSTERS", "did you mean STREAMSEG_TRAINER__N_CLUSTERS"),
    ],
)
def test_a_variable_that_looks_like_a_setting_but_names_none_is_refused(
    variable: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "5")
    refused(message)


def test_other_variables_with_the_prefix_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STREAMSEG_CACHE_DIR", "/tmp")  # the development stack's
    monkeypatch.setenv("STREAMSEG_RELEASE", "2026.11")  # a deployment's own
    assert load_settings().trainer.n_clusters == 6
    assert not caplog.records


def test_a_field_name_without_its_section_is_named_with_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """STREAMSEG_NAMESPACE=foo was ignored without a word (the namespace stayed streamseg)."""
    monkeypatch.setenv("STREAMSEG_NAMESPACE", "foo")
    assert load_settings().redis.namespace == "streamseg"
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning == (
        "STREAMSEG_NAMESPACE is not a setting and is ignored: did you mean "
        "STREAMSEG_REDIS__NAMESPACE?"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STREAMSEG_KAFKA__EXTRA", "fetch.max.bytes=1", "STREAMSEG_KAFKA__EXTRA: not valid JSON"),
        ("STREAMSEG_TRAINER", "n_clusters=5", "STREAMSEG_TRAINER: not valid JSON"),
    ],
)
def test_a_value_that_should_be_json_names_its_variable(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    refused(message)


def test_infinity_is_not_a_number_of_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSEG_TRAINER__LEASE_SECONDS", "inf")
    refused("trainer.lease_seconds: Input should be a finite number")


@pytest.mark.parametrize(
    "url", ["http://svc:s3cretPW@redis:6379/0", "redis://svc:s3cretPW@redis:port/0"]
)
def test_a_bad_redis_url_is_named_without_its_password(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSEG_REDIS__URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "redis.url: " in str(caught.value) and "not a Redis URL" in str(caught.value)
    assert "s3cretPW" not in str(caught.value)


def test_an_unknown_option_in_the_redis_url_is_named_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`?foo=bar` passed validation and failed at the first command with a TypeError. The
    option is named only when the URL holds no password."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", "redis://svc:s3cretPW@redis:6379/0?foo=s3cretPW")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    said = str(caught.value)
    assert "redis.url: " in said and "does not know" in said
    assert "s3cretPW" not in said and "foo" not in said
    monkeypatch.setenv("STREAMSEG_REDIS__URL", "redis://redis:6379/0?foo=1")
    refused("the URL's query has an option redis-py does not know: foo")
    monkeypatch.setenv("STREAMSEG_REDIS__URL", "redis://redis:6379/0?socket_timeout=3")
    load_settings()


# Each piece between reserved characters is distinctive: none may appear in a message.
_PASSWORD = "Kq7v@Zx9w/Pm4t:Hy2b#Rj6n?Lc3s%Gd8f"
_PIECES = re.split(r"[@/:#?%]", _PASSWORD)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Kq7v@Zx9w/Pm4t:Hy2b@127.0.0.1:46379/0",  # the report: '@' and '/' unencoded
        "redis://:Kq7v#Zx9w@127.0.0.1:46379/0",
        "redis://:Kq7v?Zx9w@127.0.0.1:46379/0",
        "redis://:4679#Zx9w@127.0.0.1:46379/0",  # read as a port: localhost:4679, no password
        "redis://:4679?Zx9w@127.0.0.1:46379/0",
        "redis://Kq7v:Zx9w/Pm4t@127.0.0.1:46379/0",
        f"rediss://streamseg:{_PASSWORD}@127.0.0.1:46379/0",
        "redis://:Kq7v@127.0.0.1:46379/Zx9w",
        "redis://:Kq7v@127.0.0.1:46379/0?Zx9w=1",
        "redis://:Kq7v[Zx9w@127.0.0.1:46379/0",
    ],
)
def test_a_redis_url_with_a_password_is_refused_without_any_part_of_it(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unencoded '/', '?' or '#' in the password moved where the host and the database
    seemed to start: the message showed '/p:w@127.0.0.1:46379/0', half the password."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    said = str(caught.value)
    assert said.startswith("invalid settings: redis.url: ")
    assert not [piece for piece in [*_PIECES, "127.0.0.1", "46379"] if piece in said], said
    assert "percent-encode reserved characters" in said
    for encoded in ("@ as %40", "/ as %2F", "# as %23", "? as %3F", ": as %3A"):
        assert encoded in said


@pytest.mark.redis
def test_a_percent_encoded_password_logs_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the refusal tells the user to write works: redis-py decodes the user name and the
    password, for the default user and for an ACL user."""
    user, user_password = "app:1@x", "Zx9w#" + _PASSWORD[::-1]
    with RedisServer(password=_PASSWORD, acl_users=[f"{user} on >{user_password} ~* +@all"]) as (
        server
    ):
        for name, password in ((None, _PASSWORD), (user, user_password)):
            credentials = f"{quote(name, safe='') if name else ''}:{quote(password, safe='')}"
            url = f"redis://{credentials}@127.0.0.1:{server.port}/0"
            assert "%40" in url and "%2F" in url and "%23" in url and "%3F" in url
            monkeypatch.setenv("STREAMSEG_REDIS__URL", url)
            client = load_settings().redis.connect()
            try:
                assert client.ping()
                assert client.acl_whoami() in (name or "default", (name or "default").encode())
            finally:
                client.close()


@pytest.mark.parametrize("servers", ["", " , ", "broker:notaport", "broker:0", "broker:70000"])
def test_a_bootstrap_list_librdkafka_cannot_use_is_named_at_start_up(
    servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka took these and reported a broker transport failure at the first request."""
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", servers)
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_servers: "):
        load_settings()


@pytest.mark.parametrize(
    "servers",
    ["broker", "broker:9092", "SASL_SSL://b1:9093,b2:9093", "[::1]:9092", "10.0.0.1:9092,"],
)
def test_the_bootstrap_lists_librdkafka_takes_are_accepted(
    servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSEG_KAFKA__BOOTSTRAP_SERVERS", servers)
    assert load_settings().kafka.bootstrap_servers == servers


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KAFKA__EVENTS_TOPIC", "shop events"),
        ("KAFKA__SEGMENTS_TOPIC", ""),
        ("KAFKA__DEAD_LETTER_TOPIC", ".."),
        ("KAFKA__EVENTS_TOPIC", "t" * 250),
        ("KAFKA__GROUP_ID", ""),
        ("KAFKA__GROUP_INSTANCE_ID", " "),
    ],
)
def test_a_topic_or_group_kafka_would_refuse_is_named_at_start_up(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad topic name failed at topic creation, blamed on kafka.bootstrap_servers; an empty
    group id aborted the process inside librdkafka with an assertion."""
    monkeypatch.setenv(f"STREAMSEG_{variable}", value)
    setting = variable.lower().replace("__", ".")
    with pytest.raises(ConfigError, match=re.escape(f"{setting}: ")):
        load_settings()


def test_a_kafka_ca_file_that_does_not_exist_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSEG_KAFKA__SSL_CA_LOCATION", str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match=r"kafka\.ssl_ca_location: .*no such file"):
        load_settings()
    for fine in ("probe", str(tmp_path)):
        monkeypatch.setenv("STREAMSEG_KAFKA__SSL_CA_LOCATION", fine)
        assert load_settings().kafka.ssl_ca_location == fine


@pytest.mark.parametrize("path", ["/notadb", "/1x", "/0/extra"])
def test_a_redis_database_that_is_not_a_number_is_named(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py reads such a path as database 0: the service wrote to a database nobody
    asked for."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", f"redis://svc:s3cretPW@redis:6379{path}")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    said = str(caught.value)
    assert "redis.url: " in said and "must be a number" in said and "s3cretPW" not in said
    for fine in ("", "/", "/7"):
        monkeypatch.setenv("STREAMSEG_REDIS__URL", f"redis://redis:6379{fine}")
        load_settings()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("list.json", "[1, 2]", "the top level must be an object of sections"),
        ("streamseg.yaml", "trainer:\n  n_clusters: 5\n", "YAML is not read; write TOML or JSON"),
        ("broken.toml", "[trainer\n", "cannot read settings file"),
        ("huge.toml", "# " + "x" * 1_000_000, "longer than 1,000,000 characters"),
    ],
)
def test_a_settings_file_that_cannot_be_used_is_named(
    name: str, text: str, message: str, tmp_path: Path
) -> None:
    config = tmp_path / name
    config.write_text(text)
    refused(message, config)
    refused(str(config), config)
