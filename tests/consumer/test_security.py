"""Credentials and encryption: Kafka SASL/SCRAM-SHA-256, Kafka SSL and SASL_SSL, a
least-privilege Redis ACL user, Redis over TLS (server-verified and mutual).

The pipeline authenticates with the settings alone (``kafka.security_protocol``,
``kafka.sasl_*``, ``kafka.ssl_ca_location``, a ``redis.url`` with user and password,
``redis.tls_*``), a wrong password stops start-up with a clear, bounded error, a client
without TLS or without the CA cannot talk to a TLS-only Redis, and no secret ever reaches a
log line.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.exceptions import ConfigError
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from consumer.settings import RedisSettings, load_settings
from devstack.kafka import KafkaBroker
from devstack.redis_server import RedisServer
from devstack.stack import service_env
from devstack.tls import TlsCertificates, make_certificates
from model.features import FeatureConfig
from tests.consumer.pipeline_support import (
    as_records,
    assert_state_matches,
    canonical,
    drain,
    make_events,
    produce,
    read_state,
    settings_for,
)
from tests.reference_features import recompute

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRAM_USER = "streamseg"
SCRAM_PASSWORD = "kafka-Pw-" + uuid.uuid4().hex  # unique: a hit in a log cannot be chance


def redis_acl_rule(user: str, password: str, namespace: str) -> str:
    """The least-privilege ACL rule of the service (``redis.conf`` ``user`` line, without
    ``user``): its namespace's keys and model keys, the live pointer read-only, the
    namespace registry (a pipeline names its namespace there), and only the commands it
    sends."""
    return (
        f"{user} on >{password} resetkeys ~{namespace}:* ~{{{namespace}:model}}:* "
        "%R~streamseg:live-namespace ~streamseg:namespaces "
        "resetchannels -@all "
        "+ping +get +mget +set +mset +multi +exec +hget +hmget +hgetall +hset +hdel +sadd "
        "+hincrby +lpush +ltrim +lrange +zadd +zrem +zscore +zmscore +zrevrange +exists +scan "
        "+evalsha +script|load +pexpire +del +watch +unwatch"
    )


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m consumer.cli --log-level INFO ARGS`` with ``env``; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", "--log-level", "INFO", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(bootstrap: str, redis_url: str, topic: str, namespace: str) -> dict[str, str]:
    return service_env(
        bootstrap,
        redis_url,
        topic,
        namespace,
        {"pipeline.batch_size": 500, "observability.metrics_port": 0},
    )


# -- Kafka SASL/SCRAM -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TlsCertificates:
    """One throwaway CA with a loopback server certificate and a client certificate, shared by
    the module's Kafka broker and its TLS Redis servers (as one CA would be in a deployment)."""
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def scram_broker(certificates: TlsCertificates) -> Iterator[KafkaBroker]:
    """A private broker with SCRAM-SHA-256 over SASL_PLAINTEXT and over SASL_SSL, and an SSL
    listener (server certificate from ``certificates``): one JVM for every test here."""
    with KafkaBroker(
        scram_users={SCRAM_USER: SCRAM_PASSWORD}, ssl=True, certificates=certificates
    ) as broker:
        yield broker


def scram_env(
    broker: KafkaBroker, redis_url: str, topic: str, namespace: str, password: str
) -> dict[str, str]:
    return {
        **cli_env(broker.sasl_bootstrap_servers, redis_url, topic, namespace),
        "STREAMSEG_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMSEG_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "STREAMSEG_KAFKA__SASL_USERNAME": SCRAM_USER,
        "STREAMSEG_KAFKA__SASL_PASSWORD": password,
    }


def test_pipeline_authenticates_to_kafka_with_scram(
    scram_broker: KafkaBroker, redis_url: str, redis_client: redis.Redis, namespace: str
) -> None:
    topic = f"scram-{namespace}"
    admin = AdminClient({"bootstrap.servers": scram_broker.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    events = make_events(5_000, users=300, seed=3)
    produce(scram_broker.bootstrap_servers, topic, as_records(events))
    env = scram_env(scram_broker, redis_url, topic, namespace, SCRAM_PASSWORD)
    done = run_cli(env, "run", "--max-events", str(len(events)), "--idle-exit-seconds", "10")
    assert done.returncode == 0, done.stderr
    expected = recompute(canonical(events), FeatureConfig())
    assert_state_matches(read_state(redis_client, namespace), expected)
    assert "started: topic=" in done.stderr  # INFO lines were logged ...
    assert SCRAM_PASSWORD not in done.stderr + done.stdout  # ... and none holds the secret


def test_a_wrong_kafka_password_fails_start_up_with_a_clear_bounded_error(
    scram_broker: KafkaBroker, redis_url: str, namespace: str
) -> None:
    topic = f"scram-bad-{namespace}"
    wrong = "wrong-" + uuid.uuid4().hex
    env = scram_env(scram_broker, redis_url, topic, namespace, wrong)
    began = time.monotonic()
    done = run_cli(env, "run", timeout=75)
    seconds = time.monotonic() - began
    assert done.returncode == 2, done.stderr
    assert "streamseg: error: cannot reach Kafka" in done.stderr
    assert "check kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password" in done.stderr
    assert "SASL authentication error" in done.stderr  # librdkafka names the cause
    assert "invalid credentials" in done.stderr
    assert wrong not in done.stderr + done.stdout
    assert seconds < 70


# -- Redis password and least-privilege ACL user ----------------------------------------------


def test_pipeline_and_trainer_work_with_a_least_privilege_redis_acl_user(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str, tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    admin_password = "admin-" + uuid.uuid4().hex
    user_password = "svc-" + uuid.uuid4().hex
    rule = redis_acl_rule("streamseg", user_password, namespace)
    events = make_events(8_000, users=600, seed=17)
    first, second = events[:6_000], events[6_000:]
    with RedisServer(password=admin_password, acl_users=[rule]) as server:
        admin = redis.Redis.from_url(server.url)
        env = {
            **cli_env(
                kafka_bootstrap, server.user_url("streamseg", user_password), topic, namespace
            ),
            "STREAMSEG_TRAINER__BOOTSTRAP_ROWS": "500",
            "STREAMSEG_TRAINER__N_CLUSTERS": "4",
            # updates (with the refit check and its user count) while the second batch flows
            "STREAMSEG_TRAINER__UPDATE_ROWS": "100",
            "STREAMSEG_TRAINER__UPDATE_INTERVAL_SECONDS": "1",
            # a short lease: the trainer renews it (a Lua script) several times while it runs
            "STREAMSEG_TRAINER__LEASE_SECONDS": "2",
        }
        logs = ""
        produce(kafka_bootstrap, topic, as_records(first))
        done = run_cli(env, "run", "--max-events", str(len(first)), "--idle-exit-seconds", "10")
        logs += done.stderr + done.stdout
        assert done.returncode == 0, done.stderr
        done = run_cli(env, "train", "--max-seconds", "6")
        logs += done.stderr + done.stdout
        assert done.returncode == 0, done.stderr
        assert "published model v1" in done.stderr
        # A trainer that resumes v1 and updates it from the rows the second batch gives.
        trainer_log = tmp_path / "train.log"
        train = [sys.executable, "-m", "consumer.cli", "--log-level", "INFO", "train"]
        with trainer_log.open("w") as sink:
            trainer = subprocess.Popen(
                [*train, "--max-seconds", "25"],
                env=env,
                cwd=REPO_ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while "continuing from model version 1" not in trainer_log.read_text():
                assert time.monotonic() < deadline, trainer_log.read_text()
                time.sleep(0.2)
            produce(kafka_bootstrap, topic, as_records(second))
            done = run_cli(
                env, "run", "--max-events", str(len(second)), "--idle-exit-seconds", "10"
            )
            logs += done.stderr + done.stdout
            assert done.returncode == 0, done.stderr
        finally:
            assert trainer.wait(timeout=60) == 0
        logs += trainer_log.read_text()
        assert "published model v2" in trainer_log.read_text(), trainer_log.read_text()
        done = run_cli(env, "status", "--json")
        logs += done.stderr + done.stdout
        assert done.returncode == 0, done.stderr

        # A trainer that runs long publishes past trainer.model_history_versions and prunes
        # the oldest versions (ZREM, DEL in the publish's MULTI): its publish, as this user,
        # with a history of two.
        models = ModelStore(
            redis.Redis.from_url(server.user_url("streamseg", user_password)),
            KeyLayout(namespace),
            history_versions=2,
        )
        latest = models.load_current()
        assert latest is not None
        for _ in range(2):
            latest = models.publish_next(latest, base_version=latest.model_version)
        assert len(models.versions()) == 2

        # Nothing the services sent was refused by the ACL ...
        assert admin.acl_log() == [], admin.acl_log()
        expected = recompute(canonical(events), FeatureConfig())
        assert_state_matches(read_state(admin, namespace), expected)
        user = second[-1]["user_id"]
        record = orjson.loads(admin.get(KeyLayout(namespace).segment(user)) or b"{}")
        # Whichever version was current when it was written (a v2 or later may land while
        # the second batch flows), and one the trainer published.
        published = ModelStore(admin, KeyLayout(namespace)).current_version() or 0
        assert published >= 2 and 1 <= record.get("model_version", 0) <= published
        # ... and the user can do nothing beyond them.
        svc = redis.Redis.from_url(server.user_url("streamseg", user_password))
        with pytest.raises(redis.exceptions.NoPermissionError):
            svc.get("other-namespace:{u1}:state")
        for forbidden in (svc.flushall, svc.config_get, lambda: svc.keys("*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(server.user_url("streamseg", "nope")).ping()
    for secret in (user_password, admin_password):
        assert secret not in logs


# -- Kafka over TLS: SSL and SCRAM over SASL_SSL, Redis with mutual TLS, one CA -----------------


def tls_env(
    broker: KafkaBroker,
    server: RedisServer,
    certs: TlsCertificates,
    protocol: str,
    topic: str,
    namespace: str,
) -> dict[str, str]:
    """Settings variables for Kafka over ``protocol`` (SSL or SASL_SSL) and mutual TLS to
    Redis, every certificate from ``certs``."""
    bootstrap = (
        broker.ssl_bootstrap_servers if protocol == "SSL" else broker.sasl_ssl_bootstrap_servers
    )
    env = {
        **cli_env(bootstrap, server.url, topic, namespace),
        "STREAMSEG_KAFKA__SECURITY_PROTOCOL": protocol,
        "STREAMSEG_KAFKA__SSL_CA_LOCATION": str(certs.ca_cert),
        "STREAMSEG_REDIS__TLS_CA_FILE": str(certs.ca_cert),
        "STREAMSEG_REDIS__TLS_CERT_FILE": str(certs.client_cert),
        "STREAMSEG_REDIS__TLS_KEY_FILE": str(certs.client_key),
    }
    if protocol == "SASL_SSL":
        env |= {
            "STREAMSEG_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
            "STREAMSEG_KAFKA__SASL_USERNAME": SCRAM_USER,
            "STREAMSEG_KAFKA__SASL_PASSWORD": SCRAM_PASSWORD,
        }
    return env


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_pipeline_runs_over_kafka_tls_and_mutual_tls_to_redis_with_one_ca(
    protocol: str, scram_broker: KafkaBroker, certificates: TlsCertificates, namespace: str
) -> None:
    topic = f"tls-{protocol.lower()}-{namespace}"
    admin = AdminClient({"bootstrap.servers": scram_broker.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    events = make_events(4_000, users=300, seed=29)
    produce(scram_broker.bootstrap_servers, topic, as_records(events))
    redis_password = "redis-" + uuid.uuid4().hex
    with RedisServer(
        tls=True, certificates=certificates, tls_auth_clients="yes", password=redis_password
    ) as server:
        env = tls_env(scram_broker, server, certificates, protocol, topic, namespace)
        done = run_cli(env, "run", "--max-events", str(len(events)), "--idle-exit-seconds", "10")
        assert done.returncode == 0, done.stderr
        client = server.client()
        expected = recompute(canonical(events), FeatureConfig())
        assert_state_matches(read_state(client, namespace), expected)
        assert int(client.hget(f"{namespace}:counters", "applied") or 0) == len(events)
        # The service's clients really used TLS: Redis sees only TLS connections (no plaintext
        # port at all), and the broker's SSL listener is the only one the service was given.
        assert client.config_get("port") == {"port": "0"}
    logs = done.stderr + done.stdout
    assert "started: topic=" in logs
    for secret in (redis_password, SCRAM_PASSWORD):
        assert secret not in logs


def test_a_kafka_client_without_the_ca_is_refused_with_a_clear_bounded_error(
    scram_broker: KafkaBroker, redis_url: str, namespace: str
) -> None:
    topic = f"tls-no-ca-{namespace}"
    env = {
        **cli_env(scram_broker.ssl_bootstrap_servers, redis_url, topic, namespace),
        "STREAMSEG_KAFKA__SECURITY_PROTOCOL": "SSL",  # no ssl_ca_location: system CAs only
    }
    began = time.monotonic()
    done = run_cli(env, "run", timeout=75)
    seconds = time.monotonic() - began
    assert done.returncode == 2, done.stderr
    assert "streamseg: error: cannot reach Kafka" in done.stderr
    assert "certificate verify failed" in done.stderr  # librdkafka names the cause
    assert seconds < 70


def test_pipeline_writes_its_state_to_a_tls_only_redis(
    kafka_bootstrap: str, new_topic: Callable[..., str], namespace: str
) -> None:
    topic = new_topic(partitions=2)
    events = make_events(5_000, users=400, seed=23)
    produce(kafka_bootstrap, topic, as_records(events))
    with RedisServer(tls=True) as server:  # its own throwaway CA; any client may connect
        assert server.url.startswith("rediss://") and server.certificates is not None
        settings = settings_for(
            kafka_bootstrap,
            server.url,
            topic,
            namespace,
            **{"redis.tls_ca_file": str(server.certificates.ca_cert)},
        )
        pipeline = drain(settings, len(events))
        assert pipeline.totals.records == len(events)
        expected = recompute(canonical(events), FeatureConfig())
        assert_state_matches(read_state(server.client(), namespace), expected)


def test_a_plaintext_or_unverified_client_cannot_talk_to_a_tls_only_redis(
    certificates: TlsCertificates, tmp_path: Path
) -> None:
    other_ca = make_certificates(tmp_path / "other")  # a CA that did not sign the server
    with RedisServer(tls=True, certificates=certificates, tls_auth_clients="yes") as server:
        plain_url = server.url.replace("rediss://", "redis://", 1)

        def ping(url: str, **tls: str) -> None:
            RedisSettings(url=url, socket_timeout_seconds=2, **tls).connect().ping()  # type: ignore[arg-type]

        # No TLS at all: the TLS port drops a plaintext client; there is no plaintext port.
        with pytest.raises(redis.ConnectionError):
            ping(plain_url)
        # TLS without the server's CA (system trust store, or another CA): verification fails.
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            ping(server.url)
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            ping(server.url, tls_ca_file=str(other_ca.ca_cert))
        # The right CA but no client certificate, where the server requires one (mutual TLS).
        with pytest.raises(redis.ConnectionError):
            ping(server.url, tls_ca_file=str(certificates.ca_cert))
        # A client certificate from another CA.
        with pytest.raises(redis.ConnectionError):
            ping(
                server.url,
                tls_ca_file=str(certificates.ca_cert),
                tls_cert_file=str(other_ca.client_cert),
                tls_key_file=str(other_ca.client_key),
            )
        ping(
            server.url,
            tls_ca_file=str(certificates.ca_cert),
            tls_cert_file=str(certificates.client_cert),
            tls_key_file=str(certificates.client_key),
        )
    # TLS files with a plaintext URL, or half a client pair, stop start-up naming the setting.
    with pytest.raises(ConfigError, match=r"redis: .*tls_ca_file .*not rediss://"):
        load_settings(None, **{"redis.tls_ca_file": str(certificates.ca_cert)})
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        load_settings(
            None,
            **{"redis.url": "rediss://localhost:6380/0", "redis.tls_cert_file": __file__},
        )
    with pytest.raises(ConfigError, match=r"redis\.tls_ca_file: .*no such file"):
        load_settings(
            None,
            **{"redis.url": "rediss://localhost:6380/0", "redis.tls_ca_file": "/nonexistent.pem"},
        )
